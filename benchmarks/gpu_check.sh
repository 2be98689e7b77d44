#!/usr/bin/env bash
# One device call: install, then run the GPU test modules (pytest arguments), or with --run
# any command (a benchmark, a probe). Results go to $OUT.
# Usage (on the GPU machine, from the repo root):
#   bash benchmarks/gpu_check.sh [pytest args]
#   bash benchmarks/gpu_check.sh --run python3 benchmarks/whole_model.py --out "$OUT/whole_model.json"
# SINKATTN_COMMIT is set to the checkout's commit when git can tell it (the JSONs record it).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
export PYTHONUNBUFFERED=1
export SINKATTN_COMMIT=${SINKATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
# Compiled kernels survive between calls while the machine stays warm.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/build/triton_cache}  # build/ is git-ignored
if [ "${1:-}" = "--run" ]; then
  shift
  "$@" 2>&1 | tee "$OUT/run.log" | tail -60
  echo "exit: ${PIPESTATUS[0]}"
else
  python3 -m pytest -q -p no:warnings --junitxml="$OUT/junit.xml" "$@" 2>&1 | tee "$OUT/tests.log" | tail -40
  echo "pytest exit: ${PIPESTATUS[0]}"
fi
