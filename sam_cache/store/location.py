"""Where a cache lives: a local folder, or any fsspec URL (`s3://bucket/prefix/em.zarr`, `gs://…`, `memory://…`).

Every module that opens, sizes, copies or removes a cache goes through `Location`, so a URL is a cache
path like any other. Remote stores go through zarr's `FsspecStore` (s3fs for `s3://`). Credentials and
the endpoint come from the usual places (environment, AWS config files) and from storage options set
once per process with `set_storage_options` (the CLI's `--storage-option key=value`). Options are never
printed: `str(location)` is the URL with any `user:password@` removed.

Object stores have no rename and no lock, so the writer's commit rule differs there (see `writer.py`).
"""

from __future__ import annotations

import functools
import importlib.util
import posixpath
import re
import shutil
import sys
from contextvars import ContextVar
from pathlib import Path

import zarr

from ..errors import SamCacheError

_OPTIONS: dict = {}  # storage options for every URL of this process (the CLI's --storage-option)


def set_storage_options(options: dict | None) -> None:
    """Storage options (e.g. `endpoint_url`, `key`, `secret`, `anon`) that every remote cache path uses."""
    _OPTIONS.clear()
    _OPTIONS.update(options or {})


def parse_storage_options(pairs) -> dict:
    """`key=value` strings as storage options; `true`/`false` and numbers become booleans and numbers."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            from ..errors import OptionError

            raise OptionError(f"--storage-option takes key=value (e.g. endpoint_url=http://127.0.0.1:9000), not {pair!r}")
        low = value.strip().lower()
        out[key.strip()] = {"true": True, "false": False}.get(low, int(value) if re.fullmatch(r"-?\d+", value) else value)
    return out


_CALL: ContextVar[str | None] = ContextVar("sam_cache_call", default=None)  # the API call running (`recorded`)


def command_line(argv=None) -> str:
    """The command that is running, as recorded in a cache or a lock: `samcache …` when the process is the
    samcache command (`is_cli`), else the Python call running (`sam_cache.embed('data', 'em.zarr', model='tiny')`,
    see `recorded`), else the process's own command line (a script's). Every --storage-option value (it
    may hold a secret) is replaced by ***, and a URL's user:password@ is left out."""
    if argv is None and not (sys.argv and is_cli(sys.argv[0])) and _CALL.get() is not None:
        return _CALL.get()
    argv = list(sys.argv if argv is None else argv)
    if argv and is_cli(argv[0]):
        argv[0] = "samcache"
    out, hide = [], False
    for arg in argv:
        if hide or arg.startswith("--storage-option="):
            key = arg.removeprefix("--storage-option=").partition("=")[0]
            arg = ("--storage-option=" if not hide else "") + f"{key}=***"
        hide = arg == "--storage-option"
        out.append(_redact(arg))
    return " ".join(out)


def is_cli(program: str) -> bool:
    """Whether `program` (a process's argv[0]) is the samcache command: its entry-point script, or the
    CLI package run as `python -m sam_cache.cli` (a file of that package)."""
    path = Path(program)
    if path.name in ("samcache", "samcache.exe", "samcache-script.py"):
        return True
    spec = importlib.util.find_spec("sam_cache.cli")
    places = [Path(p).resolve() for p in (spec.submodule_search_locations or [])] if spec else []
    return path.suffix == ".py" and path.resolve().parent in places


def recorded(name: str, fn):
    """`fn`, which while it runs is the command `command_line` records (unless the process is the samcache
    command): `name(...)` with the arguments it was given (`python_call`). `sam_cache.embed` is `recorded`."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        token = _CALL.set(python_call(name, args, kwargs))
        try:
            return fn(*args, **kwargs)
        finally:
            _CALL.reset(token)
    return call


def python_call(name: str, args=(), kwargs=None) -> str:
    """A call as Python writes it, `name('data', 'em.zarr', model='tiny')`: paths as strings, a URL without
    its user:password@, a function by its name. Storage options are never in it (`set_storage_options`)."""
    parts = [_argument(a) for a in args] + [f"{k}={_argument(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def _argument(value) -> str:
    if isinstance(value, (str, Path)):
        return repr(_redact(str(value)))
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return _redact(repr(value))


def is_url(path) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _redact(url: str) -> str:
    return re.sub(r"(://)[^/@]*@", r"\1", url)


class Location:
    """A cache path: `local` (a folder) or remote (an fsspec URL). Pickles without any open connection."""

    def __init__(self, path, storage_options: dict | None = None):
        if isinstance(path, Location):
            path, storage_options = path.url, {**path.options, **(storage_options or {})}
        text = str(path)
        self.local = not is_url(text)
        self.url = str(Path(text.removeprefix("file://"))) if self.local else text.rstrip("/")
        self.options = {} if self.local else {**_OPTIONS, **(storage_options or {})}
        self._fs = None

    def __str__(self) -> str:
        return _redact(self.url)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __getstate__(self):
        return {**self.__dict__, "_fs": None}

    @property
    def path(self) -> Path:
        """The local folder (local caches only)."""
        assert self.local, f"{self} is not a local path"
        return Path(self.url)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url) if not self.local else self.path.name

    @property
    def fs(self):
        """The fsspec filesystem of a remote location."""
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.url, **self.options)
        return self._fs

    def store(self, read_only: bool = False):
        """A zarr store rooted here."""
        if self.local:
            return zarr.storage.LocalStore(self.url, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.options or None, read_only=read_only)

    def sibling(self, name: str) -> "Location":
        """A location beside this one, in the same folder or prefix."""
        if self.local:
            return Location(self.path.with_name(name))
        return Location(posixpath.join(posixpath.dirname(self.url), name), self.options)

    def staging(self) -> "Location":
        """Where an --overwrite rebuild is written, beside the old cache, until it replaces it."""
        return self.sibling(f".{self.name}.rebuild")

    def exists(self) -> bool:
        """Whether anything is stored here. A remote store that cannot be reached (no endpoint, no
        credentials, access denied) is one clear error, raised before zarr starts its concurrent reads: a
        failure among those leaves coroutines that print tracebacks when the process exits."""
        if self.local:
            return self.path.exists()
        try:
            return self.fs.exists(self.url)
        except Exception as e:  # noqa: BLE001 - botocore, aiohttp and fsspec each raise their own
            raise self.unreachable(e) from e

    def unreachable(self, error: Exception) -> SamCacheError:
        return SamCacheError(f"{self}: cannot be opened ({type(error).__name__}: {error}); check the endpoint and "
                             "the credentials (environment, AWS config files, --storage-option)")

    def size(self) -> int:
        """Bytes stored under this location."""
        if self.local:
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return int(self.fs.du(self.url)) if self.exists() else 0

    def remove(self) -> None:
        """Remove everything stored here (nothing if there is nothing)."""
        if self.local:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.exists():
            self.fs.rm(self.url, recursive=True)
            self.fs.invalidate_cache()

    def files(self) -> list[str]:
        """Every object (key) under a remote location, relative to it."""
        root = self.url.split("://", 1)[1]  # fsspec lists paths without their protocol
        return sorted(posixpath.relpath(f, root) for f in self.fs.find(root))
