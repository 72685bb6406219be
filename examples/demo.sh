#!/usr/bin/env bash
# The main job on the bundled real dataset (8 slices of ISBI 2012 EM, examples/data/em-isbi2012) with the
# trained LiteMedSAM that ships with samcache: embed once, finetune the decoder from the cache with the default
# recipe, then score base against finetuned on the held-out slices. No download, no GPU.
set -euo pipefail
out=${SAMCACHE_DEMO_OUT:-demo}
data=${SAMCACHE_DEMO_DATA:-examples/data/em-isbi2012}
samcache embed "$data" -o "$out/em.zarr" --model lite_medsam --patch 256
samcache info "$out/em.zarr" --verify
samcache finetune "$out/em.zarr" --prompt box --out "$out/run" --overwrite
samcache ablate "$out/em.zarr" --prompts box,box-larger,center-point \
    --checkpoints "base,$out/run" -o "$out/ablation" --overwrite
