#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (CI has no GPU; docs/developers.md, "On a GPU"):
#
#   scripts/gpu_check.sh            # on the GPU machine, from the checkout: 9 minutes at most
#   scripts/gpu_check.sh wheels     # beforehand, where pip reaches PyPI: wheels for a machine without kdrun's
#                                   # packages (into .whl/, which the first form installs)
#
# 1. tests/test_gpu.py: bf16 autocast, files a machine without a GPU reads, the CUDA random state on resume,
#    packed students in turns and batched, torchrun with NCCL, torch.compile, the local_gpus launcher;
# 2. scripts/bench.py: kdrun's KD step against a RepDistiller-style loop on the GPU;
# 3. scripts/bench_sweep.py: a sweep of 4 and of 16 jobs, one by one, packed in turns and packed batched.
# Each step's output is written to $OUT (default outputs/gpu_check) and each has its own time limit, so a step
# that hangs leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ "$1" != wheels ]; }; then
    echo "usage: scripts/gpu_check.sh [wheels]   (no argument: the GPU checks; wheels: fetch the packages first)" >&2
    exit 2
fi
if [ "${1:-}" = wheels ]; then  # Python 3.12 on x86-64 Linux; the versions installed here
    set -e
    version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "hydra-core==$(version hydra-core)" \
        "omegaconf==$(version omegaconf)" "greenlet==$(version greenlet)" "rich==$(version rich)"
    python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
    ls .whl
    exit 0
fi

OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import hydra, omegaconf, greenlet, rich" 2>/dev/null; then
    # into the interpreter's own environment: the tests start subprocesses with a PYTHONPATH of their own
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # kdrun and its Hydra plugin from this checkout

step() {  # step NAME SECONDS COMMAND...: the output to the terminal and to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name: exit status ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}

step gpu 30 nvidia-smi
step torch 60 python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count())"
step tests 200 python3 -m pytest tests/test_gpu.py -o addopts= -q -n 4 -p no:cacheprovider -rA
step bench 80 python3 scripts/bench.py --device cuda --images 12800
step sweep4 90 python3 scripts/bench_sweep.py --device cuda --precision auto --train-size 8192 \
    --out /tmp/bench_sweep
step sweep16 150 python3 scripts/bench_sweep.py --device cuda --precision auto --train-size 8192 \
    --out /tmp/bench_sweep --sweep method.T=1,2,4,8 method.alpha=0.1,0.5,0.9,0.95
