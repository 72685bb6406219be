"""The record of an evaluation grid (`ablate`, `segment`): what lets the same command resume it.

A grid writes its partitions into a parts folder of OUT, beside `grid.json`, the record of what the
grid is (its options, the samples, the partitioning, the cache's fingerprint and the identity of every
checkpoint's weights). The parts folder is removed last, once every output is written, so it marks an
unfinished grid:

- OUT new or empty: a new grid; its record is written before any task.
- OUT holds a parts folder whose record is this grid's: resumed; finished partitions are kept.
- OUT holds a parts folder of another grid: refused, naming what differs.
- OUT holds finished output (no parts folder): refused as `runs.claim` refuses it.
`overwrite` replaces OUT whole in every case. Partition files are written whole or not at all (`atomic`),
so a partition is done exactly when its file is there.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SamCacheError
from ..files import TMP, atomic, file_sha256
from ..identity import derived, differences
from ..runs import DECODER, claim, is_run

RECORD = "grid.json"




def weights(spec: str, reader) -> dict:
    """What identifies a checkpoint's weights: `base` is the cache's own SAM (its sha256, checked when it is
    loaded); a run folder's decoder.pth or a .pth file is known by its content's sha256, so a copied or
    moved file still resumes and a retrained one does not."""
    if spec == "base":
        return {"sha256": reader.model["checkpoint_sha256"]}
    return {"sha256": file_sha256(Path(spec) / DECODER if is_run(spec) else Path(spec))}


def start(out: str | Path, what: str, outputs: tuple[str, ...], parts: str, record: dict,
          overwrite: bool = False) -> tuple[Path, bool]:
    """Make OUT ready for the grid `record` (see the module's rules). Returns the parts folder and whether
    the grid is resumed."""
    out = Path(out)
    folder, record = out / parts, json.loads(json.dumps(record, default=str))  # as stored: tuples become lists
    # the grid's identity: derived from its cache's, by this command with these arguments
    identity = derived(record.get("cache_fingerprint", ""), what,
                       {k: v for k, v in record.items() if k != "cache_fingerprint"})
    if not overwrite and (folder / RECORD).is_file():
        try:
            old = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError) as e:
            raise SamCacheError(f"{folder / RECORD}: unreadable ({e}). Pass --overwrite to start again, or choose "
                                "another --out") from e
        old.pop("fingerprint", None)  # follows from the rest (and grids made before it have none)
        diffs = differences(old, record)
        if diffs:
            raise SamCacheError(
                f"{out} holds an unfinished {what} of another grid ({'; '.join(diffs[:4])}"
                f"{'; ...' if len(diffs) > 4 else ''}). Only the same command resumes it: pass --overwrite to "
                "replace it, or choose another --out")
        for tmp in folder.rglob(TMP):  # the leftovers of writes a crash interrupted
            tmp.unlink()
        return folder, True
    if not overwrite and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # killed before its record was written: nothing to keep
    out = claim(out, what, outputs, overwrite=overwrite)
    folder.mkdir()
    with atomic(folder / RECORD) as tmp:
        tmp.write_text(json.dumps({**record, "fingerprint": identity}, indent=1))
    return folder, False
