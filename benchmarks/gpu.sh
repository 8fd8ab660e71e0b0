#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("On an H100") in one run of about 8 minutes (9.5 at most), for a lent
# GPU machine whose time is short: the CUDA-only tests, SmoothMix training against the reference (eager and with
# CUDA graphs), certification passes per model rewrite, certification against the reference, the 2-minute
# full-test-set target, CIFAR-10's ResNet-110, and the quickstart end to end. Each step has its own time limit,
# so one slow step cannot use up the rest; a step that fails or runs out of time is reported and the next one
# runs. The most needed figures come first.
#
#     bash benchmarks/gpu.sh [OUTPUT_DIR]      # default: ./gpu-benchmarks; one log per step, and summary.txt
#
# It needs smx's dependencies and pytest importable by $PYTHON (default python3) on that machine; smx itself is
# imported from this checkout. A machine that has PyTorch but cannot reach a package index takes the rest as
# wheels: `bash benchmarks/gpu_wheels.sh .whl` where pip works, copy .whl over, and run
# `WHEELS=.whl bash benchmarks/gpu.sh` there, which installs them into a folder of its own first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-benchmarks}"
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$site:$PYTHONPATH"
fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local code=$?
    printf '%-22s exit %3d  %4d s   %s\n' "$name" "$code" $((SECONDS - started)) "$*" | tee -a "$out/summary.txt"
    tail -n 4 "$out/$name.log"
}

: >"$out/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/summary.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/summary.txt"

step cuda-tests 55 "$python" -m pytest -q -p no:cacheprovider tests/test_step_graphs.py tests/test_rewrites.py \
    "tests/test_smoothing.py::test_a_seeded_certificate_depends_on_neither_the_rows_per_pass_nor_the_other_images"
step train 100 "$python" benchmarks/train.py --device cuda --epochs 3 --rounds 2 --skip-memory --cuda-graphs
step passes 45 "$python" benchmarks/passes.py --device cuda --rows 20000
step certify-20000 70 "$python" benchmarks/certify.py --device cuda --images 100 --n 10000 --batch 20000 \
    --skip-memory
step full-test-set 105 "$python" benchmarks/certify.py --device cuda --images 2000 --n 100000 --batch 65536 \
    --rounds 1 --skip-reference --skip-memory
step certify-1000 65 "$python" benchmarks/certify.py --device cuda --images 100 --n 10000 --batch 1000
# CIFAR-10's ResNet-110, the model behind the paper's Table 3: where certification takes GPU-weeks.
step certify-resnet110 60 "$python" benchmarks/certify.py --device cuda --arch cifar_resnet110 --images 4 \
    --n 10000 --batch 1000 --rounds 2 --skip-memory
step quickstart 70 env SMX_STORE="$out/store" SMX_CUDA_GRAPHS=1 \
    "$python" -m smx submit experiments/quickstart.toml --jobs-per-gpu 2
