"""Cache bytes per tile: samcache's stores (exact float16, bit-rounded, int8) against micro-sam's float32 cache,
on the same 256² EM tiles, from the same vit_b checkpoint file (random init), in one run.

    python benchmarks/peers/sizes.py --n 4

samcache embeds once (exact float16); its other stores are that cache rewritten (benchmarks/lossy.py's
`rewrite`: the same samples through the writer, no encoder). Bytes: each whole cache folder (embeddings,
images, labels, coordinates) per tile; the embeddings alone beside it. micro-sam: the Zarr files that
`precompute_image_embeddings` writes (features and signature), one per tile. Deterministic figures, not times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, save, table  # noqa: E402
from lossy import embedding_bytes, rewrite  # noqa: E402
from run import tiles  # noqa: E402

import sam_cache  # noqa: E402
from sam_cache.models import load_sam  # noqa: E402
from sam_cache.store.location import Location  # noqa: E402

HERE = Path(__file__).resolve().parent
STORES = ("bitround:7", "bitround:5", "int8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="tiles (256² EM)")
    ap.add_argument("--peers-python", default=str(HERE / ".venv" / "bin" / "python"))
    args = ap.parse_args()
    work = OUT / "peers" / f"sizes{args.n}"
    data = tiles(work / "data", args.n)
    ckpt = work / "vit_b_random_init.pth"
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(load_sam("vit_b", random_init=True)[0].state_dict(), ckpt)
    exact = work / "exact.zarr"
    sam_cache.embed(data, exact, model="vit_b", checkpoint=ckpt, overwrite=True, progress=False)
    caches = {"exact float16": exact}
    for store in STORES:
        caches[store] = work / f"{store.replace(':', '')}.zarr"
        rewrite(exact, caches[store], store)
    micro = work / "micro-sam"
    micro.mkdir(exist_ok=True)
    out = subprocess.run([args.peers_python, str(HERE / "sizes_peer.py"), str(ckpt), str(micro),
                          *map(str, sorted((data / "images").glob("*.png")))], check=True, capture_output=True,
                         text=True).stdout
    peer = json.loads(out.strip().splitlines()[-1])
    theirs = sum(v["bytes"] for v in peer.values()) / args.n
    rows = [{"cache": f"samcache {name}", "bytes_per_tile": Location(path).size() / args.n,
             "embedding_bytes_per_tile": embedding_bytes(path) / args.n} for name, path in caches.items()]
    rows.append({"cache": f"micro-sam ({next(iter(peer.values()))['dtype']})", "bytes_per_tile": theirs})
    for r in rows:
        r["vs_micro_sam"] = r["bytes_per_tile"] / theirs
    print(f"{args.n} EM tiles of 256², vit_b (random init)")
    print(table(rows, ["cache", "bytes_per_tile", "embedding_bytes_per_tile", "vs_micro_sam"]))
    print("results:", save("peers_sizes", vars(args), rows))


if __name__ == "__main__":
    main()
