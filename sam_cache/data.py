"""Cached samples -> objects -> prompts, for training and evaluation, without the image encoder.

`ObjectSamples` reads one sample's embedding and label from the Zarr cache, finds its objects (with a
minimum area), draws up to K of them and their prompts from a generator seeded by (seed, epoch, sample),
so results never depend on batch order, worker count or partitioning. One embedding read serves all the
objects drawn from it. The store is opened lazily inside each worker process: zarr v3's event loop is not
fork-safe, so workers are spawned.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DataLoader

from .cache import read_attrs
from .errors import SamCacheError
from .labels import objects
from .prompts import make_prompts


def sample_generator(seed: int, epoch: int, sample: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, sample]).generate_state(1)[0]))


class ObjectSamples(torch.utils.data.Dataset):
    """Item i: sample `indices[i]` with up to `k` objects (all if k is None) and their prompts.

    Returns embedding [C, h, w], masks [K, H, W] bool on the canvas (the tile's true objects), the prompts
    (padded to K rows, `valid` False for padding and for objects too small for the strategy), the low-res
    target masks [K, 4h, 4w] in the decoder's output frame, object ids/areas, and the valid tile size.
    """

    def __init__(self, path, indices, prompt: str, k: int | None, img_size: int, seed: int = 0,
                 min_area: int = 1, prompt_options: dict | None = None, epoch: int = 0):
        attrs = read_attrs(path)
        if attrs.get("label_kind") is None:
            raise SamCacheError(f"{path}: the cache holds no labels; embed a dataset with labels to train or score")
        self.path, self.indices, self.prompt, self.k = str(path), np.asarray(indices), prompt, k
        self.kind, self.img_size, self.seed, self.min_area = attrs["label_kind"], img_size, seed, min_area
        self.options, self.epoch = prompt_options or {}, epoch
        self._group = self._table = None

    def __len__(self):
        return len(self.indices)

    def __getstate__(self):  # never pickle an open store into a worker
        return {**self.__dict__, "_group": None, "_table": None}

    @property
    def group(self):
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r")
            self._table = sample_table(self._group)
        return self._group

    def __getitem__(self, i):
        index = int(self.indices[i])
        g = self.group
        label, (h, w) = stored_label(g, self._table, index)
        masks, ids = objects(label[:h, :w], self.kind, self.min_area)
        gen = sample_generator(self.seed, self.epoch, index)
        if self.k is not None and len(ids) > self.k:
            pick = torch.randperm(len(ids), generator=gen)[: self.k].sort().values.numpy()
            masks, ids = masks[pick], ids[pick]
        masks = torch.from_numpy(masks)
        prompts = make_prompts(self.prompt, masks, gen, target_length=self.img_size, **self.options)
        n, k = len(ids), self.k or len(ids)
        H, W = label.shape
        full = torch.zeros(k, H, W, dtype=torch.bool)
        full[:n, :h, :w] = masks
        return {
            "index": index, "n": n, "valid_size": torch.tensor([h, w]),
            "masks": full, "ids": _pad(torch.from_numpy(ids.astype(np.int64)), k),
            "areas": _pad(masks.flatten(1).sum(1), k),
            "prompt_valid": _pad(prompts.valid, k).bool(),
            "points": _pad(prompts.points, k) if prompts.points is not None else torch.zeros(k, 0, 2),
            "labels": _pad(prompts.labels, k, -1) if prompts.labels is not None else torch.zeros(k, 0, dtype=torch.int64),
            "boxes": _pad(prompts.boxes, k) if prompts.boxes is not None else torch.zeros(k, 0),
            "embedding": torch.from_numpy(np.asarray(g["embedding"][index])),
        }


def sample_table(group) -> dict[str, np.ndarray]:
    """The per-sample coordinates a reader needs, read once: each is a single chunk holding every sample,
    so reading one element per sample would decode the whole array again and again."""
    return {name: np.asarray(group[name][:]) for name in ("source", "valid_h", "valid_w")}


def stored_label(group, table: dict, index: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A sample's stored label (canvas) and its valid size."""
    return np.asarray(group["label"][index]), (int(table["valid_h"][index]), int(table["valid_w"][index]))


def _pad(t: torch.Tensor, k: int, value=0) -> torch.Tensor:
    if len(t) >= k:
        return t[:k]
    return torch.cat([t, torch.full((k - len(t), *t.shape[1:]), value, dtype=t.dtype)])


def low_res_targets(masks: torch.Tensor, valid_size: torch.Tensor, low_res: int) -> torch.Tensor:
    """True masks [B, K, H, W] (canvas) -> float targets [B, K, L, L] in the decoder's low-res frame:
    the valid region resized like the image (longest side to L), padded bottom/right."""
    B, K = masks.shape[:2]
    out = torch.zeros(B, K, low_res, low_res, device=masks.device)
    for b in range(B):
        h, w = valid_size[b].tolist()
        th, tw = ResizeLongestSide.get_preprocess_shape(h, w, low_res)
        m = masks[b, :, :h, :w].float()[None]
        out[b, :, :th, :tw] = (F.interpolate(m, (th, tw), mode="bilinear", align_corners=False)[0] > 0.5).float()
    return out


def loader(dataset, batch_size: int, shuffle_generator=None, workers: int = 0, pin: bool = False) -> DataLoader:
    """Prefetching DataLoader; spawned workers (zarr's event loop is not fork-safe)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle_generator is not None, generator=shuffle_generator,
        num_workers=workers, multiprocessing_context="spawn" if workers else None, pin_memory=pin,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
