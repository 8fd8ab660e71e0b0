#!/usr/bin/env bash
# Wheels of the packages smx needs that a GPU machine without network access lacks, for gpu.sh to install there.
#
#     bash benchmarks/gpu_wheels.sh [DIR]      # here, where pip can reach a package index; default DIR: .whl
#     WHEELS=DIR bash benchmarks/gpu_wheels.sh # there, it is gpu.sh that reads WHEELS: see gpu.sh
#
# The versions are those installed for $PYTHON here (default .venv/bin/python), the platform x86-64 Linux, the
# Python version $GPU_PYTHON (default 3.12). The packages are those of gpu.sh's steps that an image already holding
# PyTorch, SciPy, Matplotlib, rich, filelock and pytest typically lacks; typer (with its two small dependencies) and
# typing-extensions come along because smx needs newer ones than such images often have. About 8 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
python=${PYTHON:-.venv/bin/python}
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions sqlalchemy
          typer annotated-doc shellingham)
pins=()
for package in "${packages[@]}"; do
    version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")
    pins+=("$package==$version")
done
mkdir -p "$out"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$out" "${pins[@]}"
ls "$out"
