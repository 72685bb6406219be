"""The cache's one writer and one reader: partial caches, damaged chunks, checksums, format 1, the writer's
lock, a full disk, the fingerprint, label kinds and class names."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import (CacheCorruptError, CacheIncompleteError, CacheLockedError, CacheMismatchError,
                              DiskFullError, SamCacheError)
from sam_cache.ingest.labels import objects
from sam_cache import identity as fingerprint
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader
from sam_cache.store.writer import Lock
from sam_cache.samples import ObjectSamples

from .conftest import write_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory, micro_checkpoint):
    """Six images, shards of 2 samples: three shards."""
    root = tmp_path_factory.mktemp("store")
    data = write_dataset(root / "data", [(64, 64)] * 6)
    sam_cache.embed(data, root / "c.zarr", model="tiny", checkpoint=micro_checkpoint, shard_size=2, read_workers=0,
                    progress=False)
    return root / "c.zarr"


def copy(cache, tmp_path):
    shutil.copytree(cache, tmp_path / "copy.zarr")
    return tmp_path / "copy.zarr"



def leaf(path, name, k):
    """The shard file of shard k of a per-sample array."""
    return next(p for p in (path / name / "c" / str(k)).rglob("*") if p.is_file())


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---- partial caches: every reader refuses, or filters with allow_partial ----------------------------------
def test_every_reader_refuses_or_filters_a_partial_cache(cache, tmp_path):
    part = copy(cache, tmp_path)
    zarr.open_group(str(part), mode="r+")[S.DONE][4:6] = False  # the last shard is not committed
    with pytest.raises(CacheIncompleteError, match="4 of 6 samples"):
        sam_cache.open_cache(part)
    with pytest.raises(CacheIncompleteError):
        sam_cache.evaluate(part)
    with pytest.raises(CacheIncompleteError):
        sam_cache.ablate(part, tmp_path / "a", progress=False)
    with pytest.raises(CacheIncompleteError):
        sam_cache.finetune(part, tmp_path / "r", sam_cache.FinetuneConfig(epochs=1), progress=False)
    for command in (["evaluate", part], ["ablate", part, "-o", tmp_path / "b", "-q"], ["finetune", part, "-q"]):
        r = run_cli(*command)
        assert r.exit_code == 2 and "4 of 6 samples are written" in r.output, r.output
    assert sam_cache.describe(part)["written"] == 4  # info reports it as it is
    assert "INCOMPLETE" in run_cli("info", part).output
    reader = CacheReader(part, allow_partial=True)
    assert reader.samples.tolist() == [0, 1, 2, 3]
    assert sam_cache.open_cache(part, allow_partial=True).sizes["sample"] == 4
    with pytest.raises(CacheIncompleteError, match="sample 5 is not written"):
        ObjectSamples(reader, [5], "box", None, 256)[0]


# ---- damaged chunks: named, exit code 2, and found by info --verify --------------------------------------
@pytest.mark.parametrize("name", [S.EMBEDDING, S.LABEL])
def test_a_missing_shard_is_an_error_naming_it(cache, tmp_path, name):
    damaged = copy(cache, tmp_path)
    victim = leaf(damaged, name, 1)
    victim.unlink()
    with pytest.raises(CacheCorruptError, match=f"shard file {name}/c/1/0/0.* is missing"):
        CacheReader(damaged)
    r = run_cli("evaluate", damaged)
    assert r.exit_code == 2 and f"{name}/c/1" in r.output and "Traceback" not in r.output
    r = run_cli("info", damaged, "--verify")
    assert r.exit_code == 2 and f"{name}/c/1" in r.output and "missing" in r.output


@pytest.mark.parametrize("name", [S.EMBEDDING, S.LABEL])
def test_flipped_bytes_fail_their_checksum(cache, tmp_path, name):
    damaged = copy(cache, tmp_path)
    victim = leaf(damaged, name, 2)
    raw = bytearray(victim.read_bytes())
    raw[40] ^= 0xFF  # inside the first inner chunk (sample 4), not the shard index at the end
    victim.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match=f"variable `{name}`, sample 4 cannot be read.*checksum"):
        getattr(CacheReader(damaged), name)(4)
    r = run_cli("evaluate", damaged, "--min-area", "1")
    assert r.exit_code == 2 and f"`{name}`, sample 4" in r.output and "Traceback" not in r.output
    r = run_cli("info", damaged, "--verify")
    assert r.exit_code == 2 and f"{name}, sample 4" in r.output and r.output.count(", sample ") == 1
    ok = run_cli("info", cache, "--verify")
    assert ok.exit_code == 0 and "every checksum matches" in ok.output


def test_every_chunk_is_checksummed(cache):
    group = zarr.open_group(str(cache), mode="r")
    for name, a in group.arrays():
        codecs = a.metadata.codecs[0].codecs if name in S.SHARDED else a.metadata.codecs
        assert type(codecs[-1]).__name__ == "Crc32cCodec", name
    assert sam_cache.describe(cache)["format"] == 2


def test_a_format_1_cache_still_opens_and_refuses_additions(cache, tmp_path):
    """Format 1 had no checksums: rewrite every array without them, as 0.1 wrote it."""
    old = tmp_path / "old.zarr"
    src = zarr.open_group(str(cache), mode="r")
    dst = zarr.open_group(str(old), mode="w", zarr_format=3)
    for name, a in src.arrays():
        sharded = name in S.SHARDED
        b = dst.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.chunks, shards=a.shards if sharded else None,
                             dimension_names=a.metadata.dimension_names, compressors=S.EMBEDDING_CODECS[:1],
                             fill_value=a.fill_value)
        b[...] = a[...]
    attrs = dict(src.attrs[S.ATTRS])
    attrs["format"] = 1
    dst.attrs[S.ATTRS] = attrs
    results = sam_cache.evaluate(old, min_area=1)
    np.testing.assert_array_equal(results.dice.values, sam_cache.evaluate(cache, min_area=1).dice.values)
    data = cache.parent / "data"
    with pytest.raises(CacheMismatchError, match="format 1.*--overwrite"):
        sam_cache.embed(data, old, model="tiny", checkpoint=attrs["checkpoint"], shard_size=2, read_workers=0,
                        progress=False)


# ---- writers: a lock, and a full disk -------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from sam_cache.store.writer import Lock
lock = Lock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_refuses_naming_the_holder(tmp_path, micro_checkpoint):
    data = write_dataset(tmp_path / "data", [(64, 64)] * 2)
    out = tmp_path / "c.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CacheLockedError, match=f"pid {holder.pid}"):
            sam_cache.embed(data, out, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
        r = run_cli("embed", data, "-o", out, "--model", "tiny", "--checkpoint", micro_checkpoint, "-q")
        assert r.exit_code == 2 and f"is being written by pid {holder.pid}" in r.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    sam_cache.embed(data, out, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)  # released


SLOW_RECORD = """
import sys, time
from pathlib import Path
from sam_cache.store.writer import Lock
lock = Lock(Path(sys.argv[1]))
lock.lock.acquire()  # the lock is taken; the holder's record comes a moment later
print("locked", flush=True)
time.sleep(0.5)
lock.acquire()
time.sleep(60)
"""


def test_a_writer_refused_before_the_holder_records_itself_still_names_it(tmp_path):
    """The instant between taking the lock and writing who holds it (a race two finetunes once hit in CI)."""
    out = tmp_path / "c.zarr"
    holder = subprocess.Popen([sys.executable, "-c", SLOW_RECORD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"is being written by pid {holder.pid} "):
            Lock(out).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_keeps_what_is_done_and_the_same_command_resumes(cache, tmp_path, micro_checkpoint, monkeypatch):
    """A store that runs out of space after two embedding shards (a size-limited store)."""
    from zarr.storage import LocalStore

    data = cache.parent / "data"
    real = LocalStore.set
    written = []

    async def limited(self, key, value):
        if key.startswith(f"{S.EMBEDDING}/c/"):
            if len(written) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(key)
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", limited)
    out = tmp_path / "full.zarr"
    args = dict(model="tiny", checkpoint=micro_checkpoint, shard_size=2, read_workers=0, progress=False)
    with pytest.raises(DiskFullError, match="no space left on device.*the 4 samples committed before are kept"):
        sam_cache.embed(data, out, **args)
    written.clear()
    r = run_cli("embed", data, "-o", tmp_path / "cli.zarr", "--model", "tiny", "--checkpoint", micro_checkpoint,
                "--shard-size", "2", "-q")
    assert r.exit_code == 2 and "no space left on device" in r.output and "Traceback" not in r.output
    assert CacheReader(out, allow_partial=True).samples.tolist() == [0, 1, 2, 3]
    monkeypatch.setattr(LocalStore, "set", real)  # space freed
    again = sam_cache.embed(data, out, **args)
    assert again.computed == 2
    np.testing.assert_array_equal(sam_cache.open_cache(out).embedding.values,
                                  sam_cache.open_cache(cache).embedding.values)


# ---- the fingerprint ------------------------------------------------------------------------------------
def test_mismatch_names_each_part_and_execution_details_are_not_identity(cache, tmp_path, micro_checkpoint):
    attrs = sam_cache.describe(cache)
    for part, key in (("model", "checkpoint_sha256"), ("preprocessing", "patch"), ("data", "sources")):
        other = json.loads(json.dumps(attrs))
        other[part][key] = "something else"
        why = fingerprint.mismatch(attrs, other)
        assert why.startswith(f"another {part} ({key}: cache has") and "this run 'something else'" in why
        assert fingerprint.build(other["model"], other["preprocessing"], other["data"])["fingerprint"] != \
            attrs["fingerprint"]
    assert fingerprint.mismatch(attrs, attrs) is None
    assert "shard_size" not in attrs["preprocessing"] and attrs["execution"]["shard_size"] == 2
    assert "precision" in attrs["preprocessing"]  # bf16 and fp32 embeddings never mix
    # resuming with another shard size is not another cache
    again = sam_cache.embed(cache.parent / "data", cache, model="tiny", checkpoint=micro_checkpoint, shard_size=4,
                            read_workers=0, progress=False)
    assert again.computed == 0
    one, two = (fingerprint.derived(attrs["fingerprint"], "finetune", {"lr": lr}) for lr in (1, 2))
    assert one != two


# ---- labels and classes ---------------------------------------------------------------------------------
def test_objects_of_every_label_kind():
    label = np.zeros((8, 10), np.int32)
    label[0:2, 0:2] = 1  # 4 px
    label[5:8, 0:3] = 1  # 9 px, same value, not touching
    label[0:3, 6:10] = 7  # 12 px
    masks, ids = objects(label > 0, "binary")
    assert ids.tolist() == [1, 2, 3] and masks.sum((1, 2)).tolist() == [4, 12, 9]  # components, row-major order
    masks, ids = objects(label, "instance")
    assert ids.tolist() == [1, 7] and masks.sum((1, 2)).tolist() == [13, 12]
    masks, ids = objects(label, "class")
    assert ids.tolist() == [1, 7] and (masks[0] == (label == 1)).all()
    masks, ids = objects(label, "instance", min_area=13)
    assert ids.tolist() == [1]
    masks, ids = objects(np.zeros((4, 4), np.int32), "binary")
    assert masks.shape == (0, 4, 4) and ids.size == 0


def test_class_names_of_mask_files_and_class_ids(data_root, tmp_path):
    out = tmp_path / "ct.zarr"
    sam_cache.embed(data_root / "ct-sammed2d", out, model="tiny", read_workers=0, progress=False)
    reader = CacheReader(out)
    paths = list(reader.source_table(S.SOURCE_PATH))
    i = next(k for k, p in enumerate(paths) if p.endswith("amos_0006_90.png"))
    _, ids = reader.objects(i, 1)
    assert sorted(reader.classes(i, ids)) == ["aorta", "inferior_vena_cava", "liver", "spleen"]
    j = next(k for k, p in enumerate(paths) if p.endswith("s0619_32.png"))
    _, ids = reader.objects(j, 1)
    assert sorted(reader.classes(j, ids)).count("hip_left") == 2

    vol = tmp_path / "vol.zarr"
    sam_cache.embed(data_root / "ct-totalseg" / "example_ct_sm.nii.gz", vol, labels=str(
        data_root / "ct-totalseg" / "example_seg.nii.gz"), model="tiny", read_workers=0, progress=False, skip_empty=True)
    reader = CacheReader(vol)
    assert reader.label_kind == "class"
    k = int(reader.samples[len(reader.samples) // 2])
    _, ids = reader.objects(k, 1)
    assert reader.classes(k, ids) == [str(i) for i in np.unique(reader.label(k)) if i > 0]


def test_derived_things_carry_the_fingerprint_of_parent_operation_and_args(rect_cache, tmp_path):
    """Label layers and grids, like runs, are identified by hash(parent fingerprint, operation, arguments)."""
    import shutil

    import zarr

    from sam_cache.scoring import grid
    from sam_cache.store.layers import write_label_layer

    cache = tmp_path / "c.zarr"
    shutil.copytree(rect_cache, cache)
    reader = CacheReader(cache)
    provenance = {"made_by": "samcache predict", "prompt_seed": 1}
    write_label_layer(cache, "a", {0: np.ones(reader.valid_size(0), np.int32)}, provenance)
    layer = zarr.open_group(str(cache), mode="r")["label_a"].attrs
    assert layer["fingerprint"] == fingerprint.derived(reader.fingerprint, "samcache predict", provenance)
    assert layer["fingerprint"] != fingerprint.derived(reader.fingerprint, "samcache predict", {**provenance, "prompt_seed": 2})

    record = {"cache_fingerprint": reader.fingerprint, "request": {"seeds": [0]}}
    folder, resumed = grid.start(tmp_path / "g", "ablate", ("results.nc",), "parts", record)
    stored = json.loads((folder / grid.RECORD).read_text())
    assert not resumed and stored["fingerprint"] == fingerprint.derived(reader.fingerprint, "ablate", {"request": {"seeds": [0]}})
    assert grid.start(tmp_path / "g", "ablate", ("results.nc",), "parts", record)[1]  # the same grid resumes
    with pytest.raises(SamCacheError, match=r"another grid \(request.seeds: recorded \[0\], now \[1\]\)"):
        grid.start(tmp_path / "g", "ablate", ("results.nc",), "parts", {**record, "request": {"seeds": [1]}})


def test_a_mixed_size_set_preloads_its_content_not_n_times_the_largest_canvas(tmp_path, micro_checkpoint):
    """Whole-image mode pads every tile onto the largest image's canvas; the preloaded copy must not."""
    import torch

    from sam_cache.samples import preload_bytes

    sizes = [(32, 32)] * 7 + [(256, 192)]
    cache = tmp_path / "mixed.zarr"
    sam_cache.embed(write_dataset(tmp_path / "data", sizes), cache, model="tiny", checkpoint=micro_checkpoint,
                    read_workers=0, progress=False)
    reader = CacheReader(cache)
    assert reader.canvas == (256, 192)
    pre = reader.preload(range(8))
    emb = pre.embeddings.nbytes
    label = reader.array(S.LABEL).dtype.itemsize
    content = sum(h * w for h, w in sizes) * label
    assert pre.nbytes == emb + content == preload_bytes(reader, range(8))
    assert content < 0.2 * 8 * 256 * 192 * label  # what the padded copy held
    for i in range(8):  # the very values the reader gives, so training from either is the same
        assert np.array_equal(pre.label(i), reader.label(i)) and np.array_equal(pre.embedding(i).numpy(), reader.embedding(i))
    a, b = ObjectSamples(pre, range(8), "box", 2, 1024), ObjectSamples(reader, range(8), "box", 2, 1024)
    for i in range(8):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in ("masks", "boxes", "annotated", S.EMBEDDING)), i
    # a batch is padded to its own largest tile, not to the canvas, and the targets do not depend on it
    from sam_cache.samples import loader, low_res_targets

    small = next(iter(loader(ObjectSamples(pre, range(7), "box", 2, 1024), 7)))
    mixed = next(iter(loader(ObjectSamples(pre, [0, 7], "box", 2, 1024), 2)))
    assert small["masks"].shape[-2:] == (32, 32) and small["annotated"].shape[-2:] == (32, 32)
    assert mixed["masks"].shape[-2:] == (256, 192)
    assert torch.equal(low_res_targets(small["masks"][:1], small["valid_size"][:1], 256),
                       low_res_targets(mixed["masks"][:1], mixed["valid_size"][:1], 256))
