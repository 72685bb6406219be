"""The model registry: custom encoders registered from Python, checkpoints recognised by their shapes, vit_t."""

import sys
from functools import partial

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sam_cache
from sam_cache import registry
from sam_cache.cli.main import app
from sam_cache.errors import CheckpointError, OptionError
from sam_cache.tiny import build_tiny
from sam_cache.models import detect_type, load_sam, save_checkpoint
from sam_cache.files import file_sha256
from sam_cache.registry import register_model, unregister_model
from sam_cache.commands.finetune import FinetuneConfig

from .conftest import write_dataset, write_rectangles

# Not SAM's ViT-B/L/H: a 512² input cut into 8-pixel patches, still SAM's 256×64×64 embedding grid (a one-block
# decoder, to train fast)
P8 = dict(img_size=512, patch_size=8, encoder_dim=48, decoder_depth=1, embed_dim=256, mlp_dim=64, iou_hidden=32)


@pytest.fixture
def p8():
    register_model("p8_test", partial(build_tiny, **P8), replace=True)
    yield "p8_test"
    unregister_model("p8_test")


def test_a_registered_encoder_embeds_finetunes_and_evaluates(p8, tmp_path):
    torch.manual_seed(5)
    ckpt = save_checkpoint(build_tiny(**P8), tmp_path / "p8.pth")
    data = write_rectangles(tmp_path / "data", n=4)
    cache = tmp_path / "p8.zarr"
    summary = sam_cache.embed(data, cache, model=p8, checkpoint=ckpt, read_workers=0, progress=False)
    info = sam_cache.describe(cache)
    assert summary.model == p8 and info["embedding_shape"] == [256, 64, 64]
    assert info["model"] == {"type": p8, "checkpoint_sha256": file_sha256(ckpt), "trained": True,
                             "preprocess": "sam"}

    run = tmp_path / "run"
    sam_cache.finetune(cache, run, FinetuneConfig(epochs=1, val_fraction=0.25, min_area=1), progress=False)
    results = sam_cache.evaluate(cache, str(run), "box", min_area=1)
    assert results.sizes["object"] > 0 and np.isfinite(results.dice.values).all()

    unregister_model(p8)  # as in a process that never registered it
    with pytest.raises(CheckpointError, match=r"'p8_test', which is not registered in this process.*register_model"):
        sam_cache.evaluate(cache, "base", "box")


def test_a_random_init_custom_model_rebuilds_its_decoder_from_the_seed(p8, tmp_path):
    cache = tmp_path / "r.zarr"
    sam_cache.embed(write_dataset(tmp_path / "data", [(40, 40)]), cache, model=p8, random_init=True,
                    read_workers=0, progress=False)
    from sam_cache.decode.load import load_decoder

    decoder, spec = load_decoder(sam_cache.describe(cache)["model"])
    sam, _ = load_sam(p8, random_init=True)
    assert spec.type == p8 and decoder.img_size == (512, 512)
    assert all(torch.equal(v, sam.state_dict()[f"mask_decoder.{k}"]) for k, v in decoder.mask_decoder.state_dict().items())


def test_checkpoints_are_recognised_by_their_shapes(p8, tmp_path):
    for name in ("vit_b", "vit_l", "vit_h"):  # on the meta device: shapes without weights
        with torch.device("meta"):
            state = registry.get(name).builder().state_dict()
        assert detect_type(state) == name
    assert detect_type(build_tiny().state_dict()) == "tiny"
    assert detect_type(build_tiny(**P8).state_dict()) == p8

    # a file that is not the official one loads by its shapes, under `auto` too, with its own sha256
    ckpt = save_checkpoint(build_tiny(**P8), tmp_path / "finetuned_elsewhere.pth")
    _, spec = load_sam("auto", ckpt)
    assert (spec.type, spec.checkpoint_sha256) == (p8, file_sha256(ckpt))
    with pytest.raises(CheckpointError, match="p8_test checkpoint, not vit_b; pass --model p8_test"):
        load_sam("vit_b", ckpt)


def test_a_checkpoint_that_fits_no_registered_encoder(tmp_path):
    bad = save_checkpoint(build_tiny(encoder_dim=40), tmp_path / "odd.pth")
    data = write_dataset(tmp_path / "data", [(40, 40)])
    r = CliRunner().invoke(app, ["embed", str(data), "-o", str(tmp_path / "c.zarr"), "--model", "vit_b",
                                 "--checkpoint", str(bad)])
    assert r.exit_code == 2, r.output
    assert str(bad) in r.output and "fit no registered model" in r.output and "patch-embed width 40" in r.output
    assert not (tmp_path / "c.zarr").exists()


def test_registry_names_and_refusals(p8):
    assert {"vit_h", "vit_l", "vit_b", "vit_t", "tiny", p8} <= set(registry.registered_models())
    assert sam_cache.register_model is register_model
    with pytest.raises(OptionError, match="already registered"):
        register_model(p8, build_tiny)
    with pytest.raises(OptionError, match="built in"):
        unregister_model("vit_b")
    with pytest.raises(CheckpointError, match="unknown model type 'nope'.*register"):
        load_sam("nope")


def test_an_entry_point_registers_models_in_any_process(monkeypatch):
    class EntryPoint:
        value = "somepkg.samcache:register"

        def load(self):
            return lambda: register_model("from_ep", build_tiny, replace=True)

    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EntryPoint()])
    monkeypatch.setattr(registry, "_LOADED", set())
    try:
        assert registry.get("from_ep").builder is build_tiny
    finally:
        unregister_model("from_ep")


def test_vit_t_without_mobile_sam_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mobile_sam", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match=r"mobile_sam package: pip install 'samcache\[mobilesam\]'"):
        load_sam("vit_t", random_init=True)


def test_vit_t_is_mobilesam(tmp_path):
    sam, _ = load_sam("vit_t", random_init=True)
    ckpt = save_checkpoint(sam, tmp_path / "mobile_sam.pt")
    assert detect_type(torch.load(ckpt, weights_only=True)) == "vit_t"
    loaded, spec = load_sam("auto", ckpt)
    assert (spec.type, spec.trained) == ("vit_t", True)
    with torch.no_grad():
        assert loaded.image_encoder(torch.zeros(1, 3, 1024, 1024)).shape == (1, 256, 64, 64)


def test_a_cluster_whose_workers_lack_the_model_is_refused():
    from sam_cache.encode import cluster

    class Client:  # dask's Client.run: the function's result on each worker
        def run(self, fn):
            return {"tcp://worker:1": fn()}

    cluster.check_model(Client(), "vit_b")
    with pytest.raises(OptionError, match="'p8_gone' is not registered on 1 worker.*client.run"):
        cluster.check_model(Client(), "p8_gone")
