"""Figure 4: a finetune epoch from the cache against the same training with the encoder run on every step
(the way the studies did it), same decoder, device and batches; and the step-time split (read vs compute).

    python benchmarks/finetune_speed.py --model vit_b --n 8               # CPU
    python benchmarks/finetune_speed.py --model vit_h --n 1980 --patch 256  # GPU (the EM study's size)

Builds (once) a cache of N EM patches (256², ../shared/data/em-isbi2012, repeated as needed) with the
model's random-init encoder. Random-init weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import torch

from common import DATA, OUT, save, sync, table
import sam_cache
from sam_cache.encode.encoder import Encoder
from sam_cache.decode.load import load_decoder
from sam_cache.models import load_sam
from sam_cache.store.reader import CacheReader
from sam_cache.samples import ObjectSamples, Timed, loader
from sam_cache.commands.finetune import FinetuneConfig, make_optimizer, train_step


def em_data(n: int):
    """A dataset of N EM patches once embedded with --patch 256: the first ceil(N/4) slices (cycling through
    the 30), each 4 patches of 256²."""
    root = OUT / f"ft_data_{n}"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range((n + 3) // 4):
            shutil.copy(DATA / "em-isbi2012" / sub / f"{i % 30}.png", root / sub / f"{i:05d}.png")
    return root


def em_cache(model: str, n: int, device) -> str:
    """N EM patches: the first ceil(N/4) slices (cycling through the 30) cut into 4 patches of 256²."""
    path = OUT / f"ft_{model}_{n}.zarr"
    if not path.exists():
        sam_cache.embed(em_data(n), path, model=model, random_init=True, patch=256, device=device, progress=True)
    return str(path)


def epoch(decoder, data, c, device, opt, encoder=None, reader=None):
    compute = 0.0
    batches = Timed(data)
    for batch in batches:
        t = time.perf_counter()
        if encoder is not None:  # the encoder-in-the-loop way: embed this batch's tiles now
            idx = batch["index"].tolist()
            tiles = torch.zeros(len(idx), *reader.canvas, 3, dtype=torch.uint8)
            for j, i in enumerate(idx):
                image = reader.image(i)
                tiles[j, :image.shape[0], :image.shape[1]] = torch.from_numpy(image)
            batch["embedding"] = encoder(tiles, batch["valid_size"])
        loss, n = train_step(decoder, batch, c, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        compute += time.perf_counter() - t
    return batches.wait, compute


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--objects-per-sample", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    path = em_cache(args.model, args.n, args.device)
    reader = CacheReader(path)
    c = FinetuneConfig(batch_size=args.batch_size, objects_per_sample=args.objects_per_sample)
    decoder, _ = load_decoder(reader.model)
    decoder.to(device).train()
    opt = make_optimizer(decoder.mask_decoder.parameters(), c)
    ds = ObjectSamples(reader, np.arange(args.n), "box", args.objects_per_sample, decoder.img_size[0], min_area=10)
    data = loader(ds, args.batch_size, torch.Generator().manual_seed(0), args.workers, pin=device.type == "cuda")
    epoch(decoder, data, c, device, opt)  # warm-up
    r_cache, c_cache = epoch(decoder, data, c, device, opt)
    sam, _ = load_sam(args.model, random_init=True)
    encoder = Encoder(sam, device)
    r_enc, c_enc = epoch(decoder, data, c, device, opt, encoder, reader)
    rows = [
        {"way": "from the cache", "epoch_s": r_cache + c_cache, "read_s": r_cache, "compute_s": c_cache},
        {"way": "encoder every step", "epoch_s": r_enc + c_enc, "read_s": r_enc, "compute_s": c_enc},
    ]
    ratio = rows[1]["epoch_s"] / rows[0]["epoch_s"]
    print(f"{args.model} on {device}: epoch of {args.n} samples × {args.objects_per_sample} objects, "
          f"batch {args.batch_size}")
    print(table(rows, ["way", "epoch_s", "read_s", "compute_s"]))
    print(f"from the cache: {ratio:.1f}x faster per epoch; read share of a cached step "
          f"{r_cache / (r_cache + c_cache):.1%}")
    name = f"finetune_{args.model}_{device.type}_k{args.objects_per_sample}"
    print("results:", save(name, vars(args), rows + [{"ratio": ratio}]))


if __name__ == "__main__":
    main()
