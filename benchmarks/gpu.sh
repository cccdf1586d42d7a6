#!/usr/bin/env bash
# The GPU kit in one command, for a lent GPU machine that has no package index (benchmarks/gpu.py
# says what it measures; it stops starting work after --budget-s, 480 s by default):
#
#   bash benchmarks/build_wheelhouse.sh       # here, once: wheels + reference data -> .wheelhouse/
#   # on the device (the device tool): command "bash benchmarks/gpu.sh", carry [".wheelhouse"],
#   # timeout_s 600; the results come back as $OUT/gpu_results.json and $OUT/gpu_log.txt
#   python benchmarks/gpu_table.py gpu_results.json --markdown docs/benchmarks.md   # back here
#
# Arguments go to gpu.py; `bash benchmarks/gpu.sh --device cpu --tiny` is the dry run (a test).
# Environment: UNETRPP_WHEELHOUSE (default .wheelhouse), PYTHON (default python3), OUT (folder
# for the results, default .), UNETRPP_SHARED (reference data; default ../shared, else the copy
# in the wheelhouse).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELHOUSE=${UNETRPP_WHEELHOUSE:-.wheelhouse}
PY=${PYTHON:-python3}
OUTDIR=${OUT:-.}
mkdir -p "$OUTDIR"

if compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/unetrpp-site.XXXXXX")
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELHOUSE"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu.sh: no wheels in $WHEELHOUSE: using the packages already installed" >&2
fi
# The project from this checkout (no install step: nothing to build on the device).
export PYTHONPATH="$ROOT/UNETRPlusPlus:$ROOT/Training${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${UNETRPP_SHARED:-}" ]; then
  if [ -d "$ROOT/../shared/parity" ]; then
    export UNETRPP_SHARED="$ROOT/../shared"
  elif [ -d "$WHEELHOUSE/shared/parity" ]; then
    export UNETRPP_SHARED="$(cd "$WHEELHOUSE/shared" && pwd)"
  fi
fi
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUTDIR/gpu_log.txt" 2>&1 || true
  cat "$OUTDIR/gpu_log.txt"
fi
"$PY" "$ROOT/benchmarks/gpu.py" --out "$OUTDIR/gpu_results.json" "$@" 2>&1 | tee -a "$OUTDIR/gpu_log.txt"
