"""Identities: what made a cache (model, preprocessing, data), kept apart from how it was run, and what
made each thing derived from it.

Identity is what changes the stored values: the model and its weights, every preprocessing setting
(tiles, intensity, input size, precision, storage dtype) and the bytes of every source file. Two caches
with the same identity hold the same values, so a run may resume into one; a cache of another identity
is refused. Execution details (shard size, attention kernel, batch size, device) do not change the
values and are recorded under `execution`, outside the fingerprint.

A derived thing (a finetune run, an evaluation or AMG grid, a label layer) is identified as Hugging Face
`datasets` identifies a transform's output: `derived(parent, operation, args)`, the hash of its parent's
fingerprint, the operation and its arguments. `differences` says, one phrase per key, what differs between
two records; the cache's `mismatch` and a grid's refusal both use it.
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
            diffs = differences(a, b, was="cache has", now="this run", show=repr, nested=False)
            return f"another {part} ({'; '.join(diffs[:3])})"
    return None


def derived(parent: str, operation: str, args: dict) -> str:
    """The fingerprint of what `operation` with `args` made from the thing of fingerprint `parent`."""
    return digest({"parent": parent, "operation": operation, "args": args})


def differences(old: dict, new: dict, prefix: str = "", was: str = "recorded", now: str = "now", show=None,
                nested: bool = True) -> list[str]:
    """What differs between two records, one phrase per key (`seeds: recorded [0, 1], now [0]`); keys of
    `new` first, in order, then those only `old` has. `nested`: name the differing keys inside dicts
    (`request.seeds`) rather than the whole dict."""
    show = show or _short
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if nested and isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.", was, now, show)
        else:
            out.append(f"{prefix}{key}: {was} {show(a)}, {now} {show(b)}")
    return out


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} values [{', '.join(map(str, value[:3]))}, ...]"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
