# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Bring your own CUDA build by installing torch into the venv first; this only installs it when missing.
TORCH ?= torch torchvision

.PHONY: setup demo test services clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/smx submit experiments/quickstart.toml
	$(BIN)/smx report quickstart
	$(BIN)/smx plot quickstart

test: setup
	$(BIN)/python -m pytest

# Slurm (single node) and PostgreSQL on this host, for the cluster tests; as root, on Debian.
services:
	scripts/ci_services.sh

clean:
	rm -rf $(VENV) store/smx.db* store/checkpoints store/logs store/locks store/results store/plots
