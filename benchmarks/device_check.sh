#!/usr/bin/env bash
# The one script for the GPU machine (no network there). From the repository root:
#
#   OUT=/some/folder bash benchmarks/device_check.sh
#
# 1. installs this package into the machine's own torch environment, without
#    dependencies, building the CUDA module for sm_90 (and sm_80);
# 2. runs the GPU-marked tests;
# 3. measures device-to-device copy bandwidth and every kernel's effective GB/s,
#    its fraction of that copy bandwidth and its launches per call, and for every
#    public op entry (engine.ops.<op>(...), default flags) the same next to its raw
#    backend plus its host syncs per call (torch.cuda.set_sync_debug_mode; the GPU
#    tests assert zero with mode "error": tests/ops/test_entry_checks.py);
# 4. measures training-step TFLOP/s and interaction-round latency at S and L;
# 5. prints a short table last. Full logs and JSON land under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/dilseg-device-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export ENGINE_CUDA=1 ENGINE_CUDA_ARCHS=${ENGINE_CUDA_ARCHS:-90}
status=0

step() { echo; echo "=== $* ==="; }

# nothing to measure without a GPU: say so before building anything
if ! cuda_state=$($PY -c "import torch; print('yes' if torch.cuda.is_available() else 'no')" 2>&1); then
  echo "device_check.sh: $PY cannot import torch (${cuda_state##*$'\n'}); set PY to the machine's Python"
  exit 2
fi
if [ "$cuda_state" != "yes" ]; then
  echo "device_check.sh: no CUDA device (torch.cuda.is_available() is False under $PY): nothing measured"
  exit 2
fi

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

step "build (ENGINE_CUDA=1, archs $ENGINE_CUDA_ARCHS)"
if ! $PY -m pip install --no-deps --no-build-isolation --no-index -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
grep -E "dilseg" "$OUT/build.log" | tail -5
$PY -c "import engine; [print(v) for v in engine.backends().values()]" | tee "$OUT/backends.txt"

step "GPU tests"
timeout 200 $PY -m pytest -q -m gpu tests -p no:cacheprovider -x --timeout 120 >"$OUT/gpu_tests.log" 2>&1 || status=1
tail -5 "$OUT/gpu_tests.log"

step "kernels, training and rounds"
timeout 330 $PY benchmarks/gpu_table.py --json "$OUT/device_check.json" --markdown "$OUT/device_check.md" \
  >"$OUT/gpu_table.log" 2>&1 || status=1
tail -3 "$OUT/gpu_table.log"

step "summary"
cat "$OUT/device_check.md" 2>/dev/null || echo "(no table: see $OUT/gpu_table.log)"
exit $status
