#!/usr/bin/env bash
# The main job on the bundled dataset: embed once, then finetune and score decoders from the cache.
# Uses vit_h when its checkpoint is on disk (or downloadable); otherwise says so and uses `tiny`,
# an untrained model: the pipeline runs end to end, but its scores mean nothing.
set -euo pipefail
out=${SAMCACHE_DEMO_OUT:-demo}
samcache embed examples/data/cells -o "$out/cells.zarr" --fallback-tiny
samcache info "$out/cells.zarr" --verify
samcache finetune "$out/cells.zarr" --prompt box-jitter --epochs 2 --lr 1e-4 --val-fraction 0.25 --out "$out/run" --overwrite
samcache ablate "$out/cells.zarr" --prompts box,box-larger,center-point,random-3-points \
    --checkpoints "base,$out/run" -o "$out/ablation" --overwrite
