#!/usr/bin/env bash
# The whole GPU check as one script, for a CUDA machine that may lack the project's venv (the lent GPU
# machine has torch and triton but no network): GPU correctness tests, the per-dtype precision table, and
# the bf16 benchmark against flash-linear-attention. Each part has its own time limit so a slow part
# cannot starve the others; results land in benchmarks/results/ and, when $OUT is set, are copied there.
#   PYTHON=python3 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
$PY -c "import fla; print('fla', fla.__version__)" || echo "flash-linear-attention missing: peer columns stay empty"
timeout "${GPU_TESTS_S:-150}" $PY -m pytest -q -m gpu tests/kernels -p no:cacheprovider 2>&1 | tee "$LOGS/gpu_tests.log"
timeout "${GPU_PRECISION_S:-150}" $PY benchmarks/kernels_gpu_precision.py 2>&1 | tee "$LOGS/gpu_precision.log"
timeout "${GPU_BENCH_S:-200}" $PY benchmarks/kernels.py --gpu-only --backends "${GPU_BACKENDS:-triton,triton_recurrent}" 2>&1 | tee "$LOGS/gpu_bench.log"
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/kernels.gpu.json benchmarks/results/kernels_gpu_precision.json "$OUT"/ 2>/dev/null || true
fi
