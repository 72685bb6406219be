"""What made a cache: its identity (model, preprocessing, data), kept apart from how it was run.

Identity is what changes the stored values: the model and its weights, every preprocessing setting
(tiles, intensity, input size, precision, storage dtype) and the bytes of every source file. Two caches
with the same identity hold the same values, so a run may resume into one; a cache of another identity
is refused. Execution details (shard size, attention kernel, batch size, device) do not change the
values and are recorded under `execution`, outside the fingerprint.
"""

from __future__ import annotations

import hashlib
import json

IDENTITY = ("model", "preprocessing", "data")


def digest(parts) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(model: dict, preprocessing: dict, data: dict) -> dict:
    """The identity parts, as stored (JSON round trip: tuples become lists), and their fingerprint."""
    parts = json.loads(json.dumps({"model": model, "preprocessing": preprocessing, "data": data}))
    return {**parts, "fingerprint": digest(parts)}


def mismatch(old: dict, new: dict) -> str | None:
    """Which part of the identity differs, said plainly; None when they are the same."""
    for part in IDENTITY:
        a, b = old.get(part) or {}, new.get(part) or {}
        if a != b:
            keys = sorted(set(a) | set(b), key=lambda k: (k not in b, k))
            diffs = [f"{k}: cache has {a.get(k)!r}, this run {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
            return f"another {part} ({'; '.join(diffs[:3])})"
    return None


def child(parent: str, parts: dict) -> str:
    """The fingerprint of something derived from a cache (a finetune run, a label layer): the parent's
    fingerprint and what was done to it."""
    return digest({"parent": parent, **parts})
