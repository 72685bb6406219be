"""The batched encoder stage: tiles read in batches (one shard each), encoded, and each finished shard
handed to the cache writer in the background. `embed` runs it over its shards, and so does a cluster worker."""

from __future__ import annotations

import os
import queue
import threading
import numpy as np
import torch
from torch.utils.data import DataLoader
from .. import schema as S
from ..ingest.tiles import TileDataset
from ..progress import Progress
from ..store.writer import CacheWriter


def _batches(todo: np.ndarray, shard: int, batch_size: int) -> list[list[int]]:
    """Batches of the samples still to do, each inside one shard."""
    out = []
    for k in np.unique(todo // shard):
        members = todo[todo // shard == k]
        out += [members[i:i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    return out


class _Writer(threading.Thread):
    """Hands finished shards to the cache writer in the background; the first error is re-raised by `check`."""

    def __init__(self, writer: CacheWriter):
        super().__init__(daemon=True)
        self.writer, self.queue, self.error = writer, queue.Queue(maxsize=2), None

    def run(self):
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_shard(*item)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    self.error = e

    def check(self):
        if self.error is not None:
            raise self.error

    def put(self, item):
        self.check()
        self.queue.put(item)

    def close(self):
        self.queue.put(None)
        self.join()
        self.check()


def encode_samples(encoder, p, writer, todo, batch_size, dtype, read_workers, progress) -> int:
    """Encode the samples `todo` (whole shards) of plan `p` and hand each finished shard to `writer`;
    `read_workers`: DataLoader processes reading tiles (None: 0 on CPU, up to 4 with a GPU)."""
    if len(todo) == 0:
        return 0
    workers = read_workers
    if workers is None:  # on a CPU the encoder is the bottleneck: reading inline beats a spawned reader
        workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if encoder.device.type == "cuda" else 0
    shard = writer.shard
    loader = DataLoader(
        TileDataset(p, np.arange(len(p.tiles))), batch_sampler=_batches(todo, shard, batch_size),
        num_workers=workers, multiprocessing_context="spawn" if workers else None,
        pin_memory=encoder.device.type == "cuda", persistent_workers=False,
    )
    names = (S.EMBEDDING, S.IMAGE, S.LABEL) if p.label_kind is not None else (S.EMBEDDING, S.IMAGE)
    n = len(p.tiles)
    background = _Writer(writer)
    background.start()
    shards: dict[int, tuple[dict, list]] = {}  # shard -> (arrays being filled, [rows filled])
    bar = Progress(len(todo), "embed", "tiles", enabled=progress)
    try:
        for batch in loader:  # a batch lies inside one shard
            emb = encoder(batch[S.IMAGE], batch["valid"]).to(getattr(torch, dtype)).cpu().numpy()
            values = {S.EMBEDDING: emb, S.IMAGE: batch[S.IMAGE].numpy(), S.LABEL: batch[S.LABEL].numpy()}
            index = batch["index"].numpy()
            k = int(index[0]) // shard
            start, stop = k * shard, min(n, (k + 1) * shard)
            arrays, filled = shards.setdefault(
                k, ({m: np.zeros((stop - start, *values[m].shape[1:]), values[m].dtype) for m in names}, [0]))
            for m in names:
                arrays[m][index - start] = values[m]
            filled[0] += len(index)
            if filled[0] == stop - start:
                background.put((start, shards.pop(k)[0]))
            bar.update(len(index))
    finally:
        background.close()
        bar.close()
    assert not shards, f"shards {sorted(shards)} left unfinished"  # the todo list holds whole shards
    return len(todo)
