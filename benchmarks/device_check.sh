#!/usr/bin/env bash
# The first minutes on a GPU machine, from a clean checkout, in under 5 minutes:
#   1. the device-marked tests (tests/device) on the GPU: every precision it offers (fp16, bf16) against fp32 on
#      the CPU, guidance through the UNet and VAE in half precision, branch replay;
#   2. benchmarks/device_check.py: our fp16/bf16 images against our fp32 image and against diffusers', s/step at
#      512 px fp16 against diffusers (SDPA) and in channels_last, peak VRAM unguided and with forward guidance;
#   3. one JSON report: $OUT_DIR/device_check.json (and the pytest log beside it).
#
#   benchmarks/device_check.sh [--dry-run] [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./device-check)
#
# --dry-run does all of it on the CPU in bf16 with small models: CI runs it so the script cannot rot.
# Install: a GPU machine's image brings its own CUDA torch (a CPU-pinned `pip install` would replace it), so the
# python that already imports torch is used as is, with the repository on PYTHONPATH; only where none does, a
# venv is made the README's way. diffusers is optional (the comparison is skipped, and said so, without it).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT_DIR="${1:-${OUT:-device-check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch, numpy, PIL, safetensors, pytest" 2>/dev/null; then
  python3 -m venv .venv-device && . .venv-device/bin/activate
  pip install -q torch==2.13.0 ".[test]"
  PY=python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
else
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'none')")
  if [ "$DEVICE" = none ]; then echo "device_check: this torch sees no CUDA or MPS device (use --dry-run on a CPU)" >&2; exit 2; fi
fi
echo "device_check: device $DEVICE, $("$PY" -c 'import torch; print("torch", torch.__version__)')"

set +e
STUDIO_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -m device tests/device 2>&1 | tee "$OUT_DIR/device_tests.log"
TESTS=${PIPESTATUS[0]}
set -e

ARGS=(--device "$DEVICE" --json "$OUT_DIR/device_check.json")
[ "$DRY_RUN" = 1 ] && ARGS+=(--dry-run --workdir "${TMPDIR:-/tmp}/device-check-dry")
"$PY" benchmarks/device_check.py "${ARGS[@]}"

echo "device_check: tests exit code $TESTS, report $OUT_DIR/device_check.json"
exit "$TESTS"
