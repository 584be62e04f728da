#!/usr/bin/env bash
# One go on a machine with an accelerator: the CUDA tests, the vLLM-on-GPU checks and the benchmarks,
# each under its own time limit and all under GPU_CHECKS_BUDGET_S. Prints a summary and writes logs and
# results to $OUT (or gpu-checks/). Record the figures in benchmarks/README.md afterwards.
#
#   PYTHON=/path/to/python-with-cuda-torch VLLM_PYTHON=/path/to/python-with-vllm scripts/gpu_checks.sh
#
# PYTHON needs torch with CUDA and this project's server and dev dependencies; VLLM_PYTHON needs vllm
# (the CUDA build, e.g. `pip install vllm` plus `pip install -e ".[server]" pytest pytest-asyncio`).
# A step whose interpreter is missing is reported as skipped, never as passed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
VLLM_PYTHON=${VLLM_PYTHON:-.venv-vllm/bin/python}
BUDGET_S=${GPU_CHECKS_BUDGET_S:-780}
OUT_DIR=${OUT:-gpu-checks}
mkdir -p "$OUT_DIR"
START=$(date +%s)
SUMMARY=()
export PYTHONPATH="$PWD:$PWD/clients${PYTHONPATH:+:$PYTHONPATH}"

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

step() {  # step NAME LIMIT_S PYTHON ARGS...
  local name=$1 limit=$2 py=$3; shift 3
  local left; left=$(remaining)
  if [ "$left" -le 10 ]; then SUMMARY+=("$name: skipped (budget spent)"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  if ! "$py" -c "import torch" >/dev/null 2>&1; then SUMMARY+=("$name: skipped ($py has no torch)"); return; fi
  echo "=== $name (limit ${limit}s)"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$py" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.log"
  local status=passed
  [ $rc -ne 0 ] && status="FAILED rc=$rc"
  [ $rc -eq 124 ] && status="TIMED OUT"
  SUMMARY+=("$name: $status in $(( $(date +%s) - t0 ))s")
}

{ nvidia-smi || true; } >"$OUT_DIR/nvidia-smi.txt" 2>&1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1 | tee "$OUT_DIR/torch.txt"

# 1. The torch backend on CUDA (tests/gpu skip themselves without a device).
step cuda-tests 240 "$PYTHON" -m pytest -q -rA -p no:cacheprovider tests/gpu
# 2. vLLM on the GPU: the same vLLM tests as on CPU (adapter, reload, parity with the torch backend).
step vllm-tests 300 "$VLLM_PYTHON" -m pytest -q -rA -p no:cacheprovider tests/vllm_engine
# 3. The benchmarks, with their outputs kept beside the logs.
step bench-service-overhead 150 "$PYTHON" benchmarks/service_overhead.py --output "$OUT_DIR/service_overhead.json"
step bench-snapshot-load 120 "$PYTHON" benchmarks/snapshot_load.py --output "$OUT_DIR/snapshot_load.json"

echo
echo "=== summary ($(( $(date +%s) - START ))s of ${BUDGET_S}s)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT_DIR/summary.txt"
! grep -q -E "FAILED|TIMED OUT" "$OUT_DIR/summary.txt"
