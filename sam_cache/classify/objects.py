"""The class of every object of a cache, read once: the targets a class head trains on and is scored by.

An object's class is what `CacheReader.classes` says: the class id of a `class` label cache (CT volumes
labelled by organ id), or the class named by a one-object mask file's name. Classes are numbered over the
sorted set present in the cache (ids in numeric order), and named through an optional {id: name} map.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SamCacheError

IGNORE = -100  # torch.nn.functional.cross_entropy's ignore_index: padding and unprompted objects


def _order(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


class ObjectClasses:
    """Per sample, object id -> class index, over every usable sample of `reader`; objects under `min_area`
    pixels are left out, as `samples.ObjectSamples` leaves them out."""

    def __init__(self, reader, min_area: int, names: dict[str, str] | None = None):
        if reader.label_kind != "class" and not reader.attrs.get("class_names"):
            raise SamCacheError(
                f"{reader.path}: the cache holds no object classes (labels: {reader.label_kind or 'none'}), so "
                "every object is just `object`. Embed class labels (e.g. a CT volume with organ ids, "
                "--label-kind class) or one-object mask files named by class (<image>_<class>_<k>.png)")
        raw = {}
        for index in reader.samples:
            _, ids = reader.objects(int(index), min_area)
            raw[int(index)] = dict(zip(ids.tolist(), reader.classes(int(index), ids)))
        self.ids = sorted({c for table in raw.values() for c in table.values()}, key=_order)
        if len(self.ids) < 2:
            raise SamCacheError(f"{reader.path}: {len(self.ids)} class(es) ({', '.join(self.ids) or 'none'}) among "
                                f"the objects of at least {min_area} pixels; a class head needs 2 or more")
        position = {c: i for i, c in enumerate(self.ids)}
        self.names = [(names or {}).get(c, c) for c in self.ids]
        self.table = {i: {k: position[c] for k, c in t.items()} for i, t in raw.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def holding(self, indices) -> np.ndarray:
        """The samples of `indices` that hold at least one object."""
        return np.asarray([i for i in np.asarray(indices).tolist() if self.table.get(int(i))], dtype=np.int64)

    def most(self, indices) -> int:
        """The largest number of objects in one of these samples."""
        return max((len(self.table[int(i)]) for i in indices), default=0)

    def counts(self, indices) -> np.ndarray:
        """Objects per class in these samples."""
        found = [c for i in indices for c in self.table[int(i)].values()]
        return np.bincount(np.asarray(found, dtype=np.int64), minlength=len(self))

    def balanced_weights(self, indices) -> torch.Tensor:
        """Inverse class frequency over these samples' objects, n / (classes present * count), as scikit-learn's
        `class_weight="balanced"`; 0 for a class absent from them (it has no target to weigh)."""
        counts = self.counts(indices).astype(np.float64)
        present = counts > 0
        weights = np.zeros_like(counts)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return torch.as_tensor(weights, dtype=torch.float32)

    def targets(self, batch: dict) -> torch.Tensor:
        """Class index of each object of a collated `ObjectSamples` batch, [B, K]; IGNORE for padding and for
        objects without a valid prompt."""
        ids, valid = batch["ids"], batch["prompt_valid"].bool()
        out = torch.full(ids.shape, IGNORE, dtype=torch.long)
        for b, index in enumerate(batch["index"].tolist()):
            table = self.table[int(index)]
            for k in range(int(batch["n"][b])):
                out[b, k] = table[int(ids[b, k])]
        out[~valid] = IGNORE
        return out
