#!/usr/bin/env bash
# Every GPU figure in one command (see benchmarks/gpu.py): bash benchmarks/gpu.sh [--dry-run] [--only STEPS]
# On the lent GPU machines python3 holds torch but not all of samcache's packages: make wheels here with
# benchmarks/gpu_wheels.sh, carry `.whl`, and this script installs them before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import zarr, segment_anything, monai, dask" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: $PY lacks samcache's packages; run benchmarks/gpu_wheels.sh where pip works and carry .whl" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu.py "$@"
