#!/usr/bin/env bash
# The main job on the bundled dataset: embed once, then work from the cache.
# Uses vit_h when its checkpoint is on disk (or downloadable); otherwise says so and uses `tiny`.
set -euo pipefail
out=${SAMCACHE_DEMO_OUT:-demo}
samcache embed examples/data/cells -o "$out/cells.zarr" --fallback-tiny
samcache info "$out/cells.zarr"
