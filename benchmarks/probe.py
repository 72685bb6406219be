"""Reliability probe: what a careful user could do wrong, and how many of those cases hold.

    nice -n 10 python benchmarks/probe.py [--out benchmarks/out/probe]

Each case is run and judged. Bad input holds when it exits 2 with exactly one error line (a line starting
`error:`, or one line in click's boxed usage error) that names the file or option and the problem, prints no
Python traceback, and leaves what was already written as it was (folders hashed before and after).
Valid-but-unusual input holds when it exits 0 with the expected effect. Areas: bad input through the CLI,
on-disk damage to a cache, concurrency and crashes, a full disk (OSError ENOSPC injected in a subprocess),
security (pickled code as a checkpoint, path traversal, symlinks, S3 credentials). Bad options run in-process
through typer's CliRunner; whatever needs a process boundary runs as a subprocess with a timeout.

Prints a markdown table `| area | tried | held |`, then one line per case that did not hold, and writes
every case (area, case, command, exit code, held, output excerpt) to benchmarks/out/probe.json.
"""

from __future__ import annotations

import argparse
import errno  # noqa: F401 - used by the subprocess snippets' text
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import tifffile
import torch
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

from common import OUT
import sam_cache
from sam_cache.cli.main import app
from sam_cache.models import save_checkpoint
from sam_cache.tiny import build_tiny

MICRO = dict(img_size=256, embed_dim=32, mlp_dim=64, iou_hidden=32, decoder_depth=1)  # as tests/conftest.py
SAMCACHE = str(Path(sys.executable).parent / "samcache")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "80"}
TIMEOUT = 180
CASES: list[dict] = []
W: Path  # the work folder, set in main()
CKPT: Path


# ---------------------------------------------------------------------------------------------- data

def dataset(root: Path, n: int, seed: int = 0, size=(64, 96)) -> Path:
    """images/ + labels/ of n gray PNGs (64×96), three rectangular instances each (tests/conftest.py's way)."""
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 60, (h, w), dtype=np.uint8)
        label = np.zeros((h, w), np.uint16)
        for k in range(1, 4):
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            label[y:y + 10, x:x + 10] = k
            image[y:y + 10, x:x + 10] = 200
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / "labels" / f"im{i}.png")
    return root


def tree_hash(path: Path) -> str:
    """sha256 over every file's relative path and bytes under `path` (or of the file itself)."""
    h = hashlib.sha256()
    path = Path(path)
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def listing(path: Path) -> set[str]:
    return {str(p) for p in Path(path).rglob("*")}


def copy(src: Path, name: str) -> Path:
    dst = W / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


# -------------------------------------------------------------------------------------------- running

def cli(*args) -> tuple[int, str]:
    """A samcache command in-process: exit code and stdout+stderr, with the traceback of anything raised."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    out = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        out += "".join(traceback.format_exception(r.exception))
    return r.exit_code, out


def sub(args, timeout=TIMEOUT) -> tuple[int, str]:
    """A command in a subprocess: exit code (124 on timeout) and stdout+stderr."""
    try:
        p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out after {timeout}s: {(e.stdout or b'')[-300:]!r}"


def py(code: str, timeout=TIMEOUT) -> tuple[int, str]:
    return sub([sys.executable, "-c", textwrap.dedent(code)], timeout)


def error_lines(out: str) -> list[str]:
    """The error's lines: `error: …` lines (the project's), and the text lines of click's boxed usage error."""
    lines = [l for l in out.splitlines() if l.strip().lower().startswith("error:")]
    box = [l for l in out.splitlines() if l.startswith("│")]
    return lines + box


def judge_bad(code: int, out: str, names=(), why=()) -> tuple[bool, str]:
    """Exit 2, one error line holding one of `names` and one of `why` (case-insensitive), no traceback."""
    if "Traceback" in out:
        return False, "traceback"
    if code != 2:
        return False, f"exit {code}, not 2"
    lines = error_lines(out)
    if len(lines) != 1:
        return False, f"{len(lines)} error lines"
    line = lines[0].lower()
    if names and not any(n.lower() in line for n in names):
        return False, f"error names none of {list(names)}"
    if why and not any(w.lower() in line for w in why):
        return False, f"error says none of {list(why)}"
    return True, ""


def record(area, case, command, code, out, held, note=""):
    CASES.append({"area": area, "case": case, "command": " ".join(map(str, command)), "exit_code": code,
                  "held": held, "note": note, "output": out[-600:]})
    mark = {True: "ok  ", False: "FAIL", None: "skip"}[held]
    note = "" if held else note
    CASES[-1]["note"] = note
    print(f"  {mark} {area}: {case}" + (f"  ({note})" if note else ""), flush=True)


def bad(area, case, args, names=(), why=(), keep=(), absent=(), run=cli):
    """A bad input: judged by judge_bad, and every folder in `keep` must hash the same after; nothing in
    `absent` may exist after."""
    for p in absent:  # left by an earlier case: each case starts without them
        shutil.rmtree(p, ignore_errors=True) if Path(p).is_dir() else Path(p).unlink(missing_ok=True)
    before = [tree_hash(p) for p in keep]
    code, out = run(args) if run is not cli else cli(*args)
    held, note = judge_bad(code, out, names, why)
    if held and [tree_hash(p) for p in keep] != before:
        held, note = False, "something already written changed"
    if held and any(Path(p).exists() for p in absent):
        held, note = False, f"{[str(p) for p in absent if Path(p).exists()]} was created"
    record(area, case, args, code, out, held, note)


def good(area, case, args, check=lambda out: (True, ""), run=cli):
    """Valid-but-unusual input: exit 0 and check(out) holds."""
    code, out = run(args) if run is not cli else cli(*args)
    held, note = (False, f"exit {code}, not 0") if code != 0 else check(out)
    if "Traceback" in out:
        held, note = False, "traceback"
    record(area, case, args, code, out, held, note)


def embed_args(data, out, *extra):
    return ["embed", data, "-o", out, "--model", "tiny", "--checkpoint", CKPT, "--read-workers", "0", "-q", *extra]


# ---------------------------------------------------------------------------------------------- areas

def read_only(A, data: Path, base: Path):
    """embed, finetune and ablate told to write into a read-only folder: chmod 0555, or as root (whom a mode does
    not stop) a read-only tmpfs mounted for the purpose."""
    ro = W / "ro"
    ro.mkdir(exist_ok=True)
    how = "chmod 0555"
    if os.geteuid() == 0:
        how = "a read-only tmpfs"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
            record(A, "output into a read-only folder", [], None, "", None, "skipped: root, and tmpfs cannot be mounted")
            return
    else:
        ro.chmod(0o555)
    try:
        for args in (embed_args(data, ro / "c.zarr"), ["finetune", base, "-o", ro / "run", "--epochs", "1", "-q"],
                     ["ablate", base, "-o", ro / "abl", "--prompts", "box", "-q"]):
            bad(A, f"{args[0]} -o into {how}", args, [str(ro)], ["read-only", "permission", "write"], keep=[base])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def bad_cli(base: Path, run: Path):
    A = "bad input (CLI)"
    keep = [base]
    nowhere = W / "no_such_thing"
    text = W / "notes.txt"
    text.write_text("not a dataset, not a cache")
    data = W / "data"
    new = W / "new.zarr"
    E = lambda *extra: embed_args(data, new, *extra)  # noqa: E731
    # embed: paths and options
    bad(A, "embed: dataset does not exist", embed_args(nowhere, new), [str(nowhere)], ["not exist", "no such", "not found"], absent=[new])
    bad(A, "embed: dataset is a text file", embed_args(text, new), [str(text)], ["not", "cannot", "unsupported", "unreadable"], absent=[new])
    bad(A, "embed: -o is an existing file", embed_args(data, text), [str(text)], ["file", "not a", "exists"], keep=[text])
    for opt, val, why in [("--patch", "0", ">= 1"), ("--patch", "abc", "--patch"), ("--halo", "-1", "halo"),
                          ("--stride", "0", "stride"), ("--intensity", "bogus", "bogus"), ("--window", "nonsense", "nonsense"),
                          ("--dtype", "int8", "int8"), ("--store", "bogus", "bogus"), ("--shard-size", "0", "shard"),
                          ("--model", "bogus", "bogus"), ("--label-kind", "bogus", "bogus"), ("--views", "bogus", "bogus"),
                          ("--batch-size", "0", "batch"), ("--precision", "fp8", "fp8")]:
        bad(A, f"embed {opt} {val}", E(opt, val), [opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"), val], [why], absent=[new])
    vol = W / "volume"
    vol.mkdir(exist_ok=True)
    stack = np.random.default_rng(2).integers(0, 255, (8, 64, 96), dtype=np.uint8)
    tifffile.imwrite(vol / "vol.tif", stack)
    tifffile.imwrite(vol / "vol_label.tif", (stack > 200).astype(np.uint8))
    bad(A, "embed a 3D stack --axis 7", embed_args(vol / "vol.tif", new, "--labels", str(vol / "vol_label.tif"), "--axis", "7"),
        ["--axis", "axis", "7"], ["axis", "7"], absent=[new])
    bad(A, "embed --intensity percentile --percentiles 99,1", E("--intensity", "percentile", "--percentiles", "99,1"),
        ["--percentiles", "percentile"], ["99", "low", "high", "<"], absent=[new])
    missing_ckpt = W / "missing.pth"
    bad(A, "embed --checkpoint missing.pth", E("--checkpoint", missing_ckpt), [str(missing_ckpt)], ["not exist", "no such", "not found"], absent=[new])
    bad(A, "embed into a cache made differently, no --overwrite", embed_args(data, base, "--patch", "32"), [str(base)],
        ["overwrite", "differently", "different"], keep=keep)

    # embed: bad files (each breaks im1 of a fresh 3-image dataset)
    def truncate(p):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def nan_image(p):
        a = np.random.default_rng(0).random((64, 96), dtype=np.float32)
        a[3, 4] = np.nan
        p.unlink()
        tifffile.imwrite(p.with_suffix(".tif"), a)

    def tif_label(value, dtype):
        def write(p):
            a = np.zeros((64, 96), dtype)
            a[5:9, 5:9] = value
            p.unlink()
            tifffile.imwrite(p.with_suffix(".tif"), a)
        return write

    def colour(p):
        a = np.zeros((64, 96, 3), np.uint8)
        a[5:9, 5:9] = (255, 0, 0)
        a[20:30, 40:50] = (0, 0, 255)
        Image.fromarray(a).save(p)

    files = [("truncated image", "images", truncate, ["cannot read", "truncated", "corrupt", "unreadable"]),
             ("NaN in image", "images", nan_image, ["nan"]),
             ("label shape mismatch", "labels", lambda p: Image.fromarray(np.zeros((10, 10), np.uint8)).save(p), ["shape"]),
             ("negative label", "labels", tif_label(-3, np.int16), ["negative"]),
             ("fractional label", "labels", tif_label(1.5, np.float32), ["fraction"]),
             ("colour label", "labels", colour, ["colour", "color", "rgb"]),
             ("missing label pair", "labels", lambda p: p.unlink(), ["no label", "missing"])]
    for name, folder, breaker, why in files:
        d = dataset(W / f"bad_{folder}_{name.replace(' ', '_')}", 3)
        breaker(d / folder / "im1.png")
        out = W / f"bad_{name.replace(' ', '_')}.zarr"
        bad(A, f"embed: {name}", embed_args(d, out), ["im1"], why, absent=[out])
    d = dataset(W / "bad_rebuild", 3)
    old = W / "bad_rebuild.zarr"
    sam_cache.embed(d, old, model="tiny", checkpoint=CKPT, read_workers=0, progress=False, log=lambda m: None)
    truncate(d / "images" / "im1.png")
    bad(A, "embed --overwrite with a truncated image keeps the old cache", embed_args(d, old, "--overwrite", "--patch", "32"),
        ["im1"], ["cannot read", "truncated", "corrupt"], keep=[old])
    empty = W / "empty"
    (empty / "images").mkdir(parents=True, exist_ok=True)
    (empty / "images" / "notes.txt").write_text("no image here")
    bad(A, "embed: empty dataset", embed_args(empty, W / "empty.zarr"), [str(empty)], ["no image", "found", "empty"],
        absent=[W / "empty.zarr"])
    inside = copy(data, "inside_data")
    before = tree_hash(inside)
    bad(A, "embed: cache inside its own dataset", embed_args(inside, inside / "images" / "c.zarr"), ["inside"], ["dataset"])
    if CASES[-1]["held"] and tree_hash(inside) != before:
        CASES[-1].update(held=False, note="the dataset changed")
    read_only(A, data, base)

    # finetune
    r = W / "ft_bad"
    F = lambda *extra: ["finetune", base, "-o", r, "-q", "--epochs", "1", *extra]  # noqa: E731
    for opt, val, why in [("--epochs", "0", ">= 1"), ("--epochs", "abc", "integer"), ("--lr", "-1", "lr"),
                          ("--lr", "nan", "lr"), ("--val-fraction", "1.5", "val"), ("--batch-size", "0", "batch"),
                          ("--prompt", "bogus", "bogus"), ("--optimizer", "bogus", "bogus"), ("--schedule", "bogus", "bogus"),
                          ("--labels", "nolayer", "nolayer"), ("--min-area", "-5", "area"), ("--workers", "-1", "worker"),
                          ("--objects-per-sample", "0", "objects"), ("--views", "bogus", "bogus"), ("--split", "bogus", "bogus"),
                          ("--preload", "bogus", "bogus")]:
        bad(A, f"finetune {opt} {val}", F(opt, val), [opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"), val], [why], keep=keep, absent=[r])
    bad(A, "finetune --prompt box-jitter --jitter -3", F("--prompt", "box-jitter", "--jitter", "-3"), ["jitter"], ["-3", ">"], keep=keep, absent=[r])
    bad(A, "finetune --split-file missing.csv", F("--split-file", W / "missing.csv"), [str(W / "missing.csv")],
        ["not exist", "no such", "not found"], keep=keep, absent=[r])
    bad(A, "finetune: cache does not exist", ["finetune", nowhere, "-o", r, "-q"], [str(nowhere)], ["not exist", "no such", "not found", "not a"], absent=[r])
    bad(A, "finetune: cache is a text file", ["finetune", text, "-o", r, "-q"], [str(text)], ["not a", "cache"], absent=[r])
    bad(A, "finetune: cache is a dataset folder", ["finetune", data, "-o", r, "-q"], [str(data)], ["not a samcache cache", "not a cache"], absent=[r])
    bad(A, "finetune -o is an existing run, no --resume/--overwrite", ["finetune", base, "-o", run, "-q", "--epochs", "2"],
        [str(run)], ["resume", "overwrite", "holds"], keep=[run])

    # evaluate
    ev = W / "ev.nc"
    V = lambda *extra: ["evaluate", base, "-q", "-o", ev, *extra]  # noqa: E731
    garbage = W / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    bad(A, "evaluate --prompt none --threshold 2", V("--prompt", "none", "--threshold", "2"), ["threshold", "2"], ["threshold"], keep=keep, absent=[ev])
    bad(A, "evaluate --split val --val-fraction -0.5", V("--split", "val", "--val-fraction", "-0.5"), ["val-fraction", "val_fraction", "-0.5"], ["fraction"], keep=keep, absent=[ev])
    for opt, val, why in [("--iterations", "0", "iterations"), ("--split", "bogus", "bogus"),
                          ("--scoring", "bogus", "bogus"), ("--per", "bogus", "bogus"), ("--mask", "bogus", "bogus"),
                          ("--min-area", "-1", "area")]:
        bad(A, f"evaluate {opt} {val}", V(opt, val), [opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"), val], [why], keep=keep, absent=[ev])
    bad(A, "evaluate --checkpoint missing.pth", V("--checkpoint", W / "missing.pth"), ["missing.pth"], ["not exist", "no such", "not found", "neither"], keep=keep, absent=[ev])
    bad(A, "evaluate --checkpoint garbage bytes", V("--checkpoint", garbage), [str(garbage)], ["tensor", "not a", "corrupt"], keep=keep, absent=[ev])
    bad(A, "evaluate --class-names missing.json", V("--class-names", W / "missing.json"), ["missing.json"], ["not exist", "no such", "not found"], keep=keep, absent=[ev])
    bad(A, "evaluate -o an existing folder", ["evaluate", base, "-q", "-o", W], [str(W)], ["folder", "directory", ".nc"], keep=keep)

    # ablate
    ab = W / "abl"
    B = lambda *extra: ["ablate", base, "-q", "-o", ab, *extra]  # noqa: E731
    for opt, val, why in [("--seeds", "0", ">= 1"), ("--prompts", "bogus,box", "unknown"), ("--partition-size", "0", "partition"),
                          ("--examples", "-1", "examples"), ("--iterations", "0", "iterations"), ("--split", "bogus", "bogus")]:
        bad(A, f"ablate {opt} {val}", B(opt, val), [opt, opt.lstrip("-"), val.split(",")[0]], [why], keep=keep, absent=[ab])
    bad(A, "ablate --checkpoints base,missing.pth", B("--checkpoints", f"base,{W / 'missing.pth'}"), ["missing.pth"],
        ["not exist", "no such", "not found", "neither"], keep=keep, absent=[ab])

    # segment
    sg = W / "seg"
    G = lambda *extra: ["segment", base, "-q", "-o", sg, *extra]  # noqa: E731
    for opt, val, why in [("--points-per-side", "0", "points"), ("--pred-iou-thresh", "1.5", "iou"), ("--crop-n-layers", "1", "crop"),
                          ("--sweep", "bogus=1,2", "bogus"), ("--sweep", "points_per_side=abc", "abc"), ("--sources", "nosuch", "nosuch"),
                          ("--output-mode", "bogus", "bogus"), ("--points-per-batch", "0", "batch"), ("--keep", "99", "keep")]:
        bad(A, f"segment {opt} {val}", G(opt, val), [opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_"), val.split("=")[0]],
            [why], keep=keep, absent=[sg])

    # predict
    pr = W / "pred"
    P = lambda *extra: ["predict", base, "-q", "-o", pr, *extra]  # noqa: E731
    bad(A, "predict with no prompts", P(), ["--prompts"], ["prompts"], keep=keep, absent=[pr])
    bad(A, "predict --prompts missing.csv", P("--prompts", W / "missing.csv"), ["missing.csv"], ["not exist", "no such", "not found"], keep=keep, absent=[pr])
    for name, body, why in [("no box columns", "image,a,b\nim0.png,1,2\n", ["column", "x0"]),
                            ("box outside the image", "image,x0,y0,x1,y1\nim0.png,10,10,500,40\n", ["outside"]),
                            ("non-numeric coordinate", "image,x0,y0,x1,y1\nim0.png,ten,10,30,40\n", ["ten", "number", "numeric"]),
                            ("unknown image", "image,x0,y0,x1,y1\nnope.png,10,10,30,40\n", ["not a source"])]:
        f = W / f"prompts_{name.replace(' ', '_')}.csv"
        f.write_text(body)
        bad(A, f"predict --prompts: {name}", P("--prompts", f), [str(f), f.name], why, keep=keep, absent=[pr])
    bad(A, "predict --annotated-fraction 2", P("--prompts-from-labels", "box", "--annotated-fraction", "2"),
        ["annotated-fraction", "annotated_fraction", "fraction"], ["2"], keep=keep, absent=[pr])
    bad(A, "predict --prompts-from-labels bogus", P("--prompts-from-labels", "bogus"), ["bogus"], ["bogus"], keep=keep, absent=[pr])

    # info
    bad(A, "info: cache does not exist", ["info", nowhere], [str(nowhere)], ["not exist", "no such", "not found", "not a"])
    bad(A, "info: a text file", ["info", text], [str(text)], ["not a"])
    bad(A, "info: a dataset folder", ["info", data], [str(data)], ["not a samcache cache", "not a cache"])
    bad(A, "info --verify: cache does not exist", ["info", nowhere, "--verify"], [str(nowhere)], ["not exist", "no such", "not found", "not a"])


def unusual(base: Path):
    A = "valid but unusual"
    data = W / "data"
    again = copy(base, "again.zarr")
    arrays = lambda: {p.name: tree_hash(p) for p in again.iterdir() if p.is_dir()}  # noqa: E731 - root attrs record the run
    before = arrays()
    good(A, "embed again into the complete cache: no array rewritten", embed_args(data, again),
         lambda out: (arrays() == before, f"arrays changed: {[k for k, v in arrays().items() if before.get(k) != v]}"))
    d = dataset(W / "odd_data", 3)
    Image.fromarray(np.zeros((64, 96), np.uint16)).save(d / "labels" / "im1.png")
    for src, dst in (("im0", "a b ü"), ("im2", "x.y.z")):
        for sub_ in ("images", "labels"):
            (d / sub_ / f"{src}.png").rename(d / sub_ / f"{dst}.png")
    out = W / "odd.zarr"

    def odd_check(out_text):
        objects = sam_cache.open_cache(out).objects.values.tolist()
        text = cli("info", out)[1]
        return (sorted(objects) == [0, 3, 3] and "a b ü" in text, f"objects {objects}, info names 'a b ü': {'a b ü' in text}")

    good(A, "embed: spaces/unicode/dots in names, an empty label", embed_args(d, out), odd_check)
    shapes = W / "shapes"
    for sub_ in ("images", "labels"):
        (shapes / sub_).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, img in (("thin", rng.integers(0, 255, (16, 400), dtype=np.uint8)),
                      ("deep", rng.integers(0, 65535, (64, 64), dtype=np.uint16)),
                      ("rgba", rng.integers(0, 255, (40, 40, 4), dtype=np.uint8)),
                      ("tiny", rng.integers(0, 255, (8, 8), dtype=np.uint8))):
        Image.fromarray(img).save(shapes / "images" / f"{name}.png")
        label = np.zeros(img.shape[:2], np.uint8)
        label[2:6, 2:6] = 1
        Image.fromarray(label).save(shapes / "labels" / f"{name}.png")
    out = W / "shapes.zarr"
    good(A, "embed: 16×400, 16-bit, RGBA and 8×8 images", embed_args(shapes, out),
         lambda _: (sam_cache.open_cache(out).sizes["sample"] == 4, "not 4 samples"))
    good(A, "evaluate a cache with an empty-label tile", ["evaluate", W / "odd.zarr", "-q"])
    rr = W / "resume_empty"
    good(A, "finetune --resume into an empty folder starts a run", ["finetune", base, "-o", rr, "--resume", "--epochs", "1", "-q"],
         lambda _: (any(rr.glob("*.pth")), "no weights written"))
    f = W / "prompts_border.csv"
    f.write_text("image,x0,y0,x1,y1\nim0.png,0,0,96,64\n")  # the whole image: the border is inside
    good(A, "predict a box on the image border", ["predict", base, "--prompts", f, "-o", W / "pred_border", "-q"],
         lambda _: ((W / "pred_border" / "masks.json").exists(), "no masks.json"))


DAMAGES = {  # name: (what to break, how, whether only metadata a reader can do without is hit)
    "root zarr.json deleted": ("zarr.json", "delete", False),
    "root zarr.json truncated": ("zarr.json", "truncate", False),
    "root attrs edited (format 99)": ("zarr.json", "attrs", False),
    "embedding/zarr.json truncated": ("embedding/zarr.json", "truncate", True),
    "embedding chunk deleted": ("embedding/c", "delete", False),
    "embedding chunk truncated": ("embedding/c", "truncate", False),
    "embedding chunk byte flipped": ("embedding/c", "flip", False),
    "done chunk byte flipped": ("done/c", "flip", False),
    "done/zarr.json deleted": ("done/zarr.json", "delete", True),
    "label chunk byte flipped": ("label/c", "flip", False),
    "image chunk deleted": ("image/c", "delete", False),
}


def damage(cache: Path, where: str, how: str):
    target = cache / where
    if target.is_dir():  # the first chunk file under it
        target = sorted(p for p in target.rglob("*") if p.is_file())[0]
    if how == "delete":
        target.unlink()
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif how == "flip":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif how == "attrs":
        meta = json.loads(target.read_text())
        meta["attributes"]["samcache"]["format"] = 99
        target.write_text(json.dumps(meta))


def on_disk(base: Path):
    A = "on-disk damage"
    for name, (where, how, meta_only) in DAMAGES.items():
        cache = copy(base, "dmg_" + name.split()[0].replace("/", "_") + "_" + how + ".zarr")
        damage(cache, where, how)
        code, out = cli("info", cache, "--verify")
        held, note = (False, "traceback") if "Traceback" in out else (code != 0, "info --verify exit 0 on a damaged cache")
        record(A, f"{name}: info --verify", ["info", cache, "--verify"], code, out, held, note)
        verified = held
        run = W / f"dmg_run_{how}_{len(CASES)}"
        for args in (["evaluate", cache, "-q"], ["finetune", cache, "-o", run, "--epochs", "1", "-q"]):
            code, out = cli(*args)
            if meta_only and code == 0 and verified:  # read from the consolidated copy: a correct result, and --verify tells
                held, note = "Traceback" not in out, ""
            else:
                held, note = judge_bad(code, out, [str(cache), cache.name, "cache"])
            record(A, f"{name}: {args[0]}", args, code, out, held, note)


def concurrency(base: Path):
    A = "concurrency/crash"
    run = W / "race_run"
    procs = [subprocess.Popen([SAMCACHE, "finetune", base, "-o", run, "--epochs", "3", "-q"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV) for _ in range(2)]
    results = []
    for p in procs:
        try:
            results.append((p.wait(timeout=TIMEOUT), p.stdout.read()))
        except subprocess.TimeoutExpired:
            p.kill()
            results.append((124, "timed out"))
    codes = sorted(c for c, _ in results)
    loser = [o for c, o in results if c != 0]
    held = codes == [0, 2] and judge_bad(2, loser[0], [str(run)], ["being written", "holds", "resume", "overwrite"])[0]
    if held:
        try:
            held = sam_cache.runs.Run.open(run).config["recipe"]["epochs"] == 3
        except Exception as e:  # noqa: BLE001
            held = False
            loser.append(f"the run cannot be opened: {e}")
    record(A, "two finetunes into one --out started together", ["finetune", base, "-o", run, "x2"], codes,
           " || ".join(o for _, o in results), held, "" if held else f"exit codes {codes}")

    big = dataset(W / "big_data", 150, seed=3)
    cache = W / "big.zarr"
    slow = lambda d, out: ["embed", d, "-o", out, "--model", "tiny", "--read-workers", "0", "-q", "--shard-size", "4"]  # noqa: E731
    args = slow(big, cache)  # SAM-sized tiny (1024² input, ~4 images/s here): slow enough to race
    first = subprocess.Popen([SAMCACHE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and not (cache.exists() or any(W.glob(".big.zarr*tmp*")) or any(W.glob(".big.zarr.*"))):
        time.sleep(0.2)
    time.sleep(1.0)
    info = subprocess.Popen([SAMCACHE, "info", str(cache)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)  # started beside the second embed, so that both meet the first one still writing
    code, out = sub([SAMCACHE, *map(str, args)])
    racing = first.poll() is None
    held, note = judge_bad(code, out, [str(cache)], ["being written", "locked", "pid"])
    if not racing:
        held, note = False, "the first embed had ended before the second finished: race not reached"
    record(A, "second embed into a cache being written", args, code, out, held, note)
    try:
        code, out = info.wait(timeout=TIMEOUT), info.stdout.read()
    except subprocess.TimeoutExpired:
        info.kill()
        code, out = 124, "timed out"
    racing = first.poll() is None
    held = "Traceback" not in out and (code == 0 or judge_bad(code, out, [str(cache)])[0]) and racing
    record(A, "info of a cache being written", ["info", cache], code, out, held, "" if held else f"exit {code}, racing {racing}")
    try:
        first_code, first_out = first.wait(timeout=TIMEOUT), first.stdout.read()
    except subprocess.TimeoutExpired:
        first.kill()
        first_code, first_out = 124, "timed out"
    code, out = sub([SAMCACHE, "info", cache, "--verify"])
    record(A, "the first embed finishes whole beside the refused one", args, first_code, first_out + out,
           first_code == 0 and code == 0, f"embed exit {first_code}, verify exit {code}")

    crashed = W / "crashed.zarr"
    args = slow(big, crashed)
    p = subprocess.Popen([SAMCACHE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and not (crashed.exists() or list(W.glob(".crashed.zarr*"))):
        time.sleep(0.2)
    time.sleep(3.0)
    alive = p.poll() is None
    p.kill()
    p.wait()
    code, out = sub([SAMCACHE, *map(str, args)])
    vcode, vout = sub([SAMCACHE, "info", crashed, "--verify"])
    n = sam_cache.open_cache(crashed).sizes["sample"] if vcode == 0 else None
    held = alive and code == 0 and vcode == 0 and n == len(list((big / "images").iterdir()))
    record(A, "embed killed (SIGKILL) midway, then the same command resumes", args, code, out + vout, held,
           "" if held else f"killed while running {alive}, rerun exit {code}, verify exit {vcode}, samples {n}")


def killed(args, delay: float) -> bool:
    """Start a command, SIGKILL it after `delay` s; whether it was still running when killed."""
    p = subprocess.Popen([SAMCACHE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(delay)
    alive = p.poll() is None
    p.kill()
    p.wait()
    return alive


def timed(args) -> tuple[float, int, str]:
    t = time.time()
    code, out = sub([SAMCACHE, *args])
    return time.time() - t, code, out


def kills(base: Path):
    """SIGKILL at spread-out moments, then the same command (finetune: with --resume): it must finish, and give
    what an uninterrupted run gives."""
    A = "SIGKILL then rerun"
    data = dataset(W / "kill_data", 40, seed=5)
    E = lambda out: ["embed", data, "-o", out, "--model", "tiny", "--read-workers", "0", "-q", "--shard-size", "4"]  # noqa: E731
    whole = W / "kill_whole.zarr"
    seconds, code, out = timed(E(whole))
    assert code == 0, out
    want = sam_cache.open_cache(whole)
    for k in range(10):  # from start-up (the model build) to the last shards and the final metadata
        delay = seconds * (0.05 + 0.1 * k)
        cache = W / f"kill_{k}.zarr"
        alive = killed(E(cache), delay)
        while not alive and delay > 1:  # this run was faster than the timed one: kill it sooner, from scratch
            shutil.rmtree(cache, ignore_errors=True)
            delay *= 0.85
            alive = killed(E(cache), delay)
        code, out = sub([SAMCACHE, *E(cache)])
        vcode, vout = sub([SAMCACHE, "info", cache, "--verify"])
        same = False
        if code == 0 and vcode == 0:
            got = sam_cache.open_cache(cache)
            same = got.sizes == want.sizes and bool(np.array_equal(got.embedding.values, want.embedding.values))
        held = alive and code == 0 and vcode == 0 and same
        record(A, f"embed killed at {delay:.1f} s of {seconds:.1f}, then the same command", E(cache), code, out + vout,
               held, "" if held else f"killed while running {alive}, rerun exit {code}, verify exit {vcode}, same {same}")

    run, whole_run = W / "kill_run", W / "kill_run_whole"
    F = lambda out, *extra: ["finetune", base, "-o", out, "--epochs", "8", "-q", *extra]  # noqa: E731
    seconds, code, out = timed(F(whole_run))
    alive = killed(F(run), seconds * 0.6)
    code, out = sub([SAMCACHE, *F(run, "--resume")])
    epochs = lambda r: [row.split(",")[0] for row in (r / "metrics.csv").read_text().splitlines()[1:]]  # noqa: E731
    same = code == 0 and epochs(run) == epochs(whole_run)
    record(A, f"finetune killed at {seconds * 0.6:.1f} s of {seconds:.1f}, then --resume", F(run, "--resume"), code, out,
           alive and same, "" if alive and same else f"killed while running {alive}, exit {code}, epochs as uninterrupted {same}")

    for name, cmd, result in (
            ("ablate", ["ablate", base, "--prompts", "box,center-point", "--partition-size", "2", "-q"], "results.nc"),
            ("segment", ["segment", base, "--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh",
                         "0", "--partition-size", "2", "--figures", "0", "-q"], "sweep.csv")):
        out_dir, whole_dir = W / f"kill_{name}", W / f"kill_{name}_whole"
        seconds, code, out = timed([*cmd, "-o", whole_dir])
        assert code == 0, out
        alive = killed([*cmd, "-o", out_dir], seconds * 0.6)
        code, out = sub([SAMCACHE, *cmd, "-o", out_dir])
        same = False
        if code == 0 and name == "ablate":
            with xr.open_dataset(out_dir / result) as got, xr.open_dataset(whole_dir / result) as want:
                same = got.equals(want)
        elif code == 0:
            same = (out_dir / result).read_text() == (whole_dir / result).read_text()
        held = alive and same
        record(A, f"{name} killed at {seconds * 0.6:.1f} s of {seconds:.1f}, then the same command", cmd, code, out, held,
               "" if held else f"killed while running {alive}, exit {code}, same result {same}")


PRELUDE = """
import errno, sys
import torch, xarray as xr
from zarr.storage import LocalStore
from sam_cache.cli.main import app
torch.set_num_threads(1)
"""


def full_disk(base: Path, data: Path):
    A = "full disk"

    def cli_in(patch: str, args) -> tuple[int, str]:
        code = PRELUDE + textwrap.dedent(patch) + f"\napp(args={[str(a) for a in args]!r}, prog_name='samcache')\n"
        return py(code)

    store_full = """
    real = LocalStore.set
    written = []
    async def limited(self, key, value):
        if key.startswith("embedding/c/"):
            if len(written) >= 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(key)
        return await real(self, key, value)
    LocalStore.set = limited
    """
    out = W / "full.zarr"
    args = embed_args(data, out, "--shard-size", "4")
    code, text = cli_in(store_full, args)
    held, note = judge_bad(code, text, [str(out), "full.zarr"], ["no space left"])
    if held:
        again, more = sub([SAMCACHE, *map(str, args)])
        vcode, vout = sub([SAMCACHE, "info", out, "--verify"])
        held, note = again == 0 and vcode == 0, f"rerun exit {again}, verify exit {vcode}: {more[-200:]}{vout[-200:]}"
    record(A, "embed: store full after one shard, then the same command resumes", args, code, text, held, note)

    old = copy(base, "full_rebuild.zarr")
    before = tree_hash(old)
    args = embed_args(data, old, "--overwrite", "--patch", "32", "--shard-size", "4")
    code, text = cli_in(store_full, args)
    held, note = judge_bad(code, text, ["no space left"], ["no space left"])
    if held and tree_hash(old) != before:
        held, note = False, "the old cache changed"
    record(A, "embed --overwrite rebuild on a full store keeps the old cache", args, code, text, held, note)

    save_full = """
    def full(obj, f, *a, **k):
        with open(f, "wb") as h:
            h.write(b"PK half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    torch.save = full
    """
    run = W / "full_run"
    args = ["finetune", base, "-o", run, "--epochs", "2", "-q"]
    code, text = cli_in(save_full, args)
    held, note = judge_bad(code, text, [str(run)], ["no space left"])
    if held:
        partial = [p.name for p in run.rglob("*") if p.suffix == ".pth" or ".tmp" in p.name]
        held, note = not partial, f"half-written files left: {partial}"
    record(A, "finetune: torch.save raises ENOSPC", args, code, text, held, note)

    nc_full = """
    def full(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\\x89HDF half a file")
        raise OSError(errno.ENOSPC, "No space left on device")
    xr.Dataset.to_netcdf = full
    """
    ev = W / "full_ev" / "ev.nc"
    ev.parent.mkdir(exist_ok=True)
    ev.write_bytes(b"an earlier run's results")
    args = ["evaluate", base, "-o", ev, "-q"]
    code, text = cli_in(nc_full, args)
    held, note = judge_bad(code, text, [str(ev.parent)], ["no space left"])
    if held and (ev.read_bytes() != b"an earlier run's results" or len(list(ev.parent.iterdir())) != 1):
        held, note = False, f"ev.nc changed or a temporary left: {sorted(p.name for p in ev.parent.iterdir())}"
    record(A, "evaluate -o: to_netcdf raises ENOSPC", args, code, text, held, note)

    ab = W / "full_abl"
    args = ["ablate", base, "-o", ab, "--prompts", "box", "-q"]
    code, text = cli_in(nc_full, args)
    held, note = judge_bad(code, text, [str(ab)], ["no space left"])
    record(A, "ablate: to_netcdf raises ENOSPC", args, code, text, held, note)

    sg = W / "full_seg"
    args = ["segment", base, "-o", sg, "--points-per-side", "4", "--figures", "0", "-q"]
    code, text = cli_in(nc_full, args)
    held, note = judge_bad(code, text, [str(sg)], ["no space left"])
    if held:
        again, more = sub([SAMCACHE, *map(str, args)])
        held, note = again == 0, f"rerun after space freed: exit {again}: {more[-300:]}"
    record(A, "segment: to_netcdf raises ENOSPC, then the same command", args, code, text, held, note)


class Code:
    """Pickles as a call of os.system: loading it unpickled would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def security(base: Path, data: Path):
    A = "security"
    marker = W / "PWNED"
    zip_pth, raw_pth = W / "code.pth", W / "code_raw.pth"
    torch.save({"model": Code(f"touch {marker}")}, zip_pth)
    with open(raw_pth, "wb") as f:
        pickle.dump({"model": Code(f"touch {marker}")}, f)
    for pth in (zip_pth, raw_pth):
        kind = "torch zip" if pth is zip_pth else "raw pickle"
        for args in (["evaluate", base, "--checkpoint", pth, "-q"], embed_args(data, W / "sec.zarr", "--checkpoint", pth),
                     ["ablate", base, "--checkpoints", f"base,{pth}", "-o", W / "sec_abl", "-q"],
                     ["segment", base, "--checkpoint", pth, "-o", W / "sec_seg", "-q"]):
            if args[0] == "embed" and kind == "raw pickle":
                continue
            bad(A, f"{args[0]} --checkpoint: pickled code ({kind})", args, [str(pth)], ["tensor", "not a", "refus", "unsafe", "pickle", "weights"])
            if marker.exists():
                CASES[-1].update(held=False, note="the pickled code RAN")
                marker.unlink()

    around = listing(W)
    for name, image in (("relative ../", "../../../../../etc/passwd"), ("absolute path outside", "/etc/hostname")):
        f = W / f"traversal_{len(CASES)}.csv"
        f.write_text(f"image,x0,y0,x1,y1\n{image},1,1,5,5\n")
        around.add(str(f))
        bad(A, f"predict --prompts: image {name}", ["predict", base, "--prompts", f, "-o", W / "trav_pred", "-q"],
            [str(f), f.name], ["not a source"], keep=[base], absent=[W / "trav_pred"])

    lay = copy(base, "layer.zarr")
    before_outside = listing(W)
    bad(A, "predict --write-layer ../../evil", ["predict", lay, "--prompts-from-labels", "box", "-o", W / "lay_pred",
                                                "--write-layer", "../../evil", "-q"], ["evil", "--write-layer", "layer"],
        ["name", "invalid", "not", "must"], keep=[lay])
    escaped = {p for p in listing(W) - before_outside if not p.startswith(str(W / "lay_pred"))}
    if escaped:
        CASES[-1].update(held=False, note=f"written outside: {sorted(escaped)[:3]}")

    man = W / "manifest"
    (man / "sub").mkdir(parents=True, exist_ok=True)
    (man / "sub" / "m.csv").write_text("image,label\n../../data/images/im0.png,../../data/labels/im0.png\n"
                                       "../../data/images/im1.png,../../../../../../etc/passwd\n")
    out = W / "man.zarr"
    bad(A, "manifest: label ../../../etc/passwd (not an image)", embed_args(man / "sub" / "m.csv", out),
        ["passwd"], ["cannot read", "not", "unreadable", "unsupported"], absent=[out])
    (man / "sub" / "m.csv").write_text("image,label\n../../data/images/im0.png,../../data/labels/im0.png\n")
    before_outside = listing(W)

    def inside_only(_):
        report = sam_cache.describe(out)
        pred_code, _text = cli("predict", out, "--prompts-from-labels", "box", "-o", W / "man_pred", "-q")
        escaped = {p for p in listing(W) - before_outside
                   if not (p.startswith(str(out)) or p.startswith(str(W / "man_pred")) or p.endswith(".man.zarr.lock"))}
        target = (W / "data" / "images" / "im0.png").resolve()
        named = [w for w in json.dumps(report, default=str).replace('"', " ").split() if w.endswith("im0.png")]
        recorded = any(Path(w).resolve() == target for w in named)
        ok = pred_code == 0 and not escaped and recorded
        return ok, f"predict exit {pred_code}, written outside: {sorted(escaped)[:3]}, source path recorded: {named[:2]}"

    good(A, "manifest: ../ paths outside its folder are read, outputs stay in -o", embed_args(man / "sub" / "m.csv", out), inside_only)

    elsewhere = dataset(W / "elsewhere", 2, seed=5)
    linked = W / "linked"
    for sub_ in ("images", "labels"):
        (linked / sub_).mkdir(parents=True, exist_ok=True)
    (linked / "images" / "im0.png").symlink_to(elsewhere / "images" / "im0.png")
    shutil.copy(elsewhere / "labels" / "im0.png", linked / "labels" / "im0.png")
    shutil.copy(elsewhere / "images" / "im1.png", linked / "images" / "im1.png")
    shutil.copy(elsewhere / "labels" / "im1.png", linked / "labels" / "im1.png")
    out = W / "linked.zarr"

    def link_reported(_):
        text = cli("info", out)[1]
        target = str(elsewhere / "images" / "im0.png")
        return ("symlink" in text and target in text, f"info says symlink: {'symlink' in text}, names {target}: {target in text}")

    good(A, "symlinked image from outside the dataset: followed, info reports it", embed_args(linked, out), link_reported)
    s3(data)


def s3(data: Path):
    A = "security"
    try:
        from moto.server import ThreadedMotoServer
        import logging
        import s3fs
    except ImportError as e:
        record(A, "S3 credentials never printed", [], None, str(e), None, "skipped: moto/s3fs missing")
        return
    from sam_cache.store.location import set_storage_options

    secret = "s3cr3t-never-printed"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret=secret).mkdir("caches")
        opts = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing",
                "--storage-option", f"secret={secret}"]
        url = "s3://caches/p.zarr"
        code, out = cli(*opts, *embed_args(data, url, "--shard-size", "4"))
        if code != 0:
            record(A, "S3: embed a cache (setup)", ["embed", url], code, out, False, "could not make the S3 cache")
            return
        for name, args in (("info", ["info", url]), ("info --json", ["info", url, "--json"]), ("info --verify", ["info", url, "--verify"])):
            code, out = cli(*opts, *args)
            held = code == 0 and secret not in out and "Traceback" not in out
            record(A, f"S3 {name}: no credentials printed", args, code, out.replace(secret, "<SECRET>"), held,
                   "" if held else f"exit {code}, secret printed: {secret in out}")
        missing = "s3://caches/missing.zarr"
        code, out = cli(*opts, "info", missing)
        held, note = judge_bad(code, out, [missing], ["not", "no "])
        if secret in out:
            held, note = False, "secret printed"
        record(A, "S3 info of a missing cache: one line, no credentials", ["info", missing], code, out.replace(secret, "<SECRET>"), held, note)
        set_storage_options(None)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=secret)
        bucket = "s3://nobucket-here/x.zarr"
        code, out = cli("--storage-option", f"endpoint_url={endpoint}", "finetune", bucket, "-o", W / "s3run", "-q")
        held, note = judge_bad(code, out, [bucket], [])
        if secret in out:
            held, note = False, "secret printed"
        record(A, "S3 finetune of a missing bucket, secret in env: one line, no credentials", ["finetune", bucket], code,
               out.replace(secret, "<SECRET>"), held, note)
    finally:
        os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
        os.environ.pop("AWS_ACCESS_KEY_ID", None)
        set_storage_options(None)
        server.stop()


# ----------------------------------------------------------------------------------------------- main

def main():
    global W, CKPT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT / "probe", help="Work folder (emptied first).")
    ap.add_argument("--only", default="", help="Comma-separated areas to run (bad, unusual, damage, concurrency, kill, "
                    "full, security); default all.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    W = args.out.resolve()
    shutil.rmtree(W, ignore_errors=True)
    W.mkdir(parents=True)
    torch.manual_seed(7)
    CKPT = save_checkpoint(build_tiny(**MICRO), W / "micro.pth")
    data = dataset(W / "data", 8)
    base = W / "base.zarr"
    sam_cache.embed(data, base, model="tiny", checkpoint=CKPT, shard_size=4, read_workers=0, progress=False, log=lambda m: None)
    run = W / "run"
    code, out = cli("finetune", base, "-o", run, "--epochs", "1", "-q")
    assert code == 0, out
    pristine = tree_hash(base)
    areas = {"bad": lambda: bad_cli(base, run), "unusual": lambda: unusual(base), "damage": lambda: on_disk(base),
             "concurrency": lambda: concurrency(base), "kill": lambda: kills(base),
             "full": lambda: full_disk(base, data), "security": lambda: security(base, data)}
    for name, area in areas.items():
        if args.only and name not in args.only.split(","):
            continue
        area()
        assert tree_hash(base) == pristine, "a probe changed the base cache"
    seconds = time.time() - t0

    areas = list(dict.fromkeys(c["area"] for c in CASES))
    print("\n| area | tried | held |\n|---|---|---|")
    for a in areas:
        tried = [c for c in CASES if c["area"] == a and c["held"] is not None]
        print(f"| {a} | {len(tried)} | {sum(c['held'] for c in tried)} |")
    tried = [c for c in CASES if c["held"] is not None]
    print(f"| **all** | {len(tried)} | {sum(c['held'] for c in tried)} |\n")
    for c in CASES:
        if c["held"] is False:
            print(f"- {c['area']} | {c['case']} | exit {c['exit_code']} | {c['note']} | {c['output'][:200]!r}")
    for c in CASES:
        if c["held"] is None:
            print(f"- skipped: {c['area']} | {c['case']} | {c['note']}")
    print(f"\n{seconds:.0f} s")
    path = args.out.parent / ("probe.json" if not args.only else f"probe-{args.only.replace(',', '-')}.json")
    path.write_text(json.dumps({"seconds": round(seconds, 1), "cases": CASES}, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
