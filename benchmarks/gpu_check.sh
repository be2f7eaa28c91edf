#!/usr/bin/env bash
# The GPU figures of issue 2, as one script for a lent GPU machine (no network there).
# Python deps missing from that image travel as wheels in .gpuwheels/ (see benchmarks/README.md).
#   bash benchmarks/gpu_check.sh OUTDIR
set -euo pipefail
OUTDIR=${1:-${OUT:-/tmp/fvds-gpu}}
mkdir -p "$OUTDIR"
if [ -d .gpuwheels ]; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/gpudeps .gpuwheels/*.whl
    export PYTHONPATH=/tmp/gpudeps:src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# the setting at 224 px: 3 layers x 8 units, 32 steps, per-unit lucent baseline
python3 benchmarks/bench_render.py --device cuda --size 224 --json "$OUTDIR/render_224_u8.json"
# a full batch of 64 units per layer (the paper's units per layer), lucent on 4 units per layer
python3 benchmarks/bench_render.py --device cuda --size 224 --units 64 --lucent-units 4 \
    --json "$OUTDIR/render_224_u64.json"
# the paper preset: one real job (64 units of the deepest layer, 512 steps) and the plan's
# estimate for all 9,408 units
python3 benchmarks/bench_paper.py --json "$OUTDIR/paper.json"
