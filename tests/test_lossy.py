"""Lossy storage of embeddings (`embed --store`): each setting's error bound, what is really stored, readers
that give floats back, the store in the cache's identity, and bad settings refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CacheMismatchError
from sam_cache.store import lossy
from sam_cache import schema as S
from sam_cache.store.writer import ShardWriter

from .conftest import write_rectangles

STORES = ("exact", "bitround:7", "bitround:3", "int8")


@pytest.fixture(scope="module")
def caches(tmp_path_factory, micro_checkpoint):
    """One small dataset (8 tiles, shards of 4) embedded once per store."""
    root = tmp_path_factory.mktemp("lossy")
    data = write_rectangles(root / "data", n=8)
    out = {"data": data}
    for store in STORES:
        out[store] = root / f"{store.replace(':', '')}.zarr"
        sam_cache.embed(data, out[store], model="tiny", checkpoint=micro_checkpoint, store=store, shard_size=4,
                        read_workers=0, progress=False, log=lambda *_: None)
    return out


def _embeddings(path) -> np.ndarray:
    r = sam_cache.CacheReader(path)
    return np.stack([r.embedding(int(i)) for i in r.samples])


@pytest.mark.parametrize("bits", [7, 3])
def test_bitround_keeps_k_mantissa_bits(caches, bits):
    exact, kept = _embeddings(caches["exact"]).astype(np.float64), _embeddings(caches[f"bitround:{bits}"])
    assert kept.dtype == np.float16
    err = np.abs(kept - exact)
    # round to nearest with K bits: at most half a step, 2^-(K+1) of the value (float16 subnormals: of 2^-14)
    assert (err <= np.maximum(np.abs(exact), 2.0**-14) * 2.0 ** -(bits + 1)).all()
    assert err.max() > 0  # it did round
    a = zarr.open_array(str(caches[f"bitround:{bits}"] / S.EMBEDDING), mode="r")
    assert a.dtype == np.float16 and [f.codec_config["keepbits"] for f in a.filters] == [bits]
    assert type(a.filters[0]).__name__ == "BitRound"


def test_int8_is_stored_as_int8_with_a_scale_per_sample_and_channel(caches):
    exact, back = _embeddings(caches["exact"]).astype(np.float64), _embeddings(caches["int8"])
    g = zarr.open_group(str(caches["int8"]), mode="r")
    q, scale, offset = g[S.EMBEDDING], g[S.EMBEDDING_SCALE], g[S.EMBEDDING_OFFSET]
    assert q.dtype == np.int8 and scale.dtype == offset.dtype == np.float32
    assert scale.shape == offset.shape == q.shape[:2] and scale.shards == offset.shards == (4, q.shape[1])
    assert np.abs(q[:]).max() == lossy.LEVELS  # the full range is used
    s = scale[:][..., None, None]
    # quantisation: at most half a step; then the float16 the reader returns rounds once more
    assert (np.abs(back - exact) <= s / 2 * (1 + 1e-5) + np.abs(exact) * 2.0**-11 + 2.0**-24).all()
    assert back.dtype == np.float16
    assert not np.array_equal(back, exact)
    e = zarr.open_array(str(caches["exact"] / S.EMBEDDING), mode="r")
    assert e.dtype == np.float16 and e.filters == ()
    assert "store" not in sam_cache.CacheReader(caches["exact"]).attrs["preprocessing"]  # as before --store existed
    assert sam_cache.CacheReader(caches["exact"]).store.name == "exact"


def test_quantise_edge_cases_and_torch_equals_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    x[0, 1] = 4.25  # a constant channel comes back exactly
    q, scale, offset = lossy.quantise(x)
    back = lossy.dequantise(q, scale, offset, "float32")
    assert back[0, 1].tolist() == x[0, 1].tolist()
    assert (np.abs(back - x) <= scale[..., None, None] / 2 * (1 + 1e-5)).all()
    t = lossy.dequantise(torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(offset), "float16")
    assert t.dtype == torch.float16 and np.array_equal(t.numpy(), lossy.dequantise(q, scale, offset, "float16"))


@pytest.mark.parametrize("store", ["bitround:3", "int8"])
def test_every_reader_gives_the_same_float_values(caches, store):
    r = sam_cache.CacheReader(caches[store])
    ds = sam_cache.open_cache(caches[store])
    assert ds[S.EMBEDDING].dtype == np.float16 and ds[S.EMBEDDING].dims == S.DIMS[S.EMBEDDING]
    assert S.EMBEDDING_SCALE not in ds and S.EMBEDDING_OFFSET not in ds
    direct = _embeddings(caches[store])
    assert np.array_equal(ds[S.EMBEDDING].values, direct)
    pre = r.preload([1, 2, 5, 6])
    for i in (1, 2, 5, 6):
        assert pre.embedding(i).dtype == torch.float16 and np.array_equal(pre.embedding(i).numpy(), direct[i])
    if store == "int8":  # kept int8 in memory: half the bytes of float16
        assert pre.embeddings.dtype == torch.int8


def test_a_shard_writer_quantises_what_it_is_given(caches, tmp_path):
    """Every writer of an int8 cache (this process, cluster workers, ranks) writes through ShardWriter."""
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(caches["int8"], path)
    ex = sam_cache.CacheReader(caches["exact"])
    values = np.stack([ex.embedding(i) for i in range(4, 8)]) * 2  # other values than the cache holds
    r = sam_cache.CacheReader(path)
    images = np.stack([r.array(S.IMAGE)[i] for i in range(4, 8)])
    ShardWriter(path).write_shard(4, {S.EMBEDDING: values, S.IMAGE: images})
    back = np.stack([sam_cache.CacheReader(path).embedding(i) for i in range(4, 8)])
    top = np.abs(values).max()  # a channel's scale is at most 2·top/254; float16 adds 2^-11 of a value
    assert np.abs(back.astype(np.float64) - values).max() <= top / 254 * 1.001 + top * 2.0**-11


def test_evaluate_and_finetune_run_on_an_int8_cache(caches, tmp_path):
    exact = sam_cache.evaluate(caches["exact"], "base", "box", min_area=1, log=lambda *_: None)
    lossy_ = sam_cache.evaluate(caches["int8"], "base", "box", min_area=1, log=lambda *_: None)
    assert lossy_.sizes == exact.sizes
    d0, d1 = float(exact["dice"].mean()), float(lossy_["dice"].mean())
    assert np.isfinite(d1) and abs(d1 - d0) < 0.1
    res = sam_cache.finetune(caches["int8"], tmp_path / "run", sam_cache.FinetuneConfig(epochs=1, batch_size=4),
                             progress=False, log=lambda *_: None)
    assert res is not None


def test_resuming_with_another_store_is_refused(caches, micro_checkpoint):
    kw = dict(model="tiny", checkpoint=micro_checkpoint, shard_size=4, read_workers=0, progress=False,
              log=lambda *_: None)
    with pytest.raises(CacheMismatchError, match="store"):
        sam_cache.embed(caches["data"], caches["exact"], store="int8", **kw)
    with pytest.raises(CacheMismatchError, match="store"):
        sam_cache.embed(caches["data"], caches["bitround:3"], store="bitround:7", **kw)
    assert sam_cache.embed(caches["data"], caches["int8"], store="int8", **kw).computed == 0  # same store: resumes


@pytest.mark.parametrize("args, words", [
    (["--store", "int8", "--dtype", "float32"], "needs --dtype float16"),
    (["--store", "bitround:11"], "1 to 10 mantissa bits"),
    (["--store", "bitround:24", "--dtype", "float32"], "1 to 23 mantissa bits"),
    (["--store", "bitround:0"], "not 0"),
    (["--store", "bitround:-2"], "not -2"),
    (["--store", "bitround"], "needs K"),
    (["--store", "float8"], "unknown --store 'float8'"),
])
def test_bad_store_settings_exit_2_and_write_nothing(caches, micro_checkpoint, tmp_path, args, words):
    out = tmp_path / "bad.zarr"
    r = CliRunner().invoke(app, ["embed", str(caches["data"]), "-o", str(out), "--model", "tiny", "--checkpoint",
                                 str(micro_checkpoint), "-q", *args])
    assert r.exit_code == 2 and words in r.output, r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
