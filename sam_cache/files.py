"""Files: the sha256 of file contents, and the one atomic write every output goes through.

- `file_sha256(*paths)`: the sha256 of the files' bytes in order (a folder: its files in sorted order).
  One file gives the usual sha256 (`sha256sum`), so checkpoints compare with their published values.
- `atomic(path)`: a temporary name beside `path`, renamed onto it when the block ends without error, so
  `path` is never seen half written: a killed or failing writer (a full disk, say) leaves the old file,
  or none, and at most a `.NAME.XXXXXXXX.tmp` leftover that `TMP` matches.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

TMP = ".*.tmp"  # the temporary names of `atomic` (a glob)


def file_sha256(*paths: str | Path) -> str:
    h = hashlib.sha256()
    for p in map(Path, paths):
        for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()


@contextmanager
def atomic(path: str | Path):
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path` at once."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # name the file the user asked for (a full disk's error often names none, or the tmp)
        if e.filename in (None, str(tmp)) and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
