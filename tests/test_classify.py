"""The class head on SAM's decoder tokens: trained from the cache on the TotalSegmentator CT volume's organ
ids, it beats the majority-class rate; a cache without classes is refused; only the head (and, when asked,
the two-way transformer) changes; the run folder holds what it says."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

import sam_cache
from sam_cache.classify.head import ClassHead
from sam_cache.classify.objects import IGNORE, ObjectClasses
from sam_cache.commands.classify import classify
from sam_cache.errors import OptionError, SamCacheError
from sam_cache.models import load_sam, save_checkpoint
from sam_cache.tiny import build_tiny
from sam_cache.runs import load_decoder
from sam_cache.store.reader import CacheReader

NAMES = {"1": "spleen", "5": "liver", "6": "stomach"}  # TotalSegmentator v2 ids (the others keep their ids)


def embed_ct(data_root, root, checkpoint):
    """The TotalSegmentator CT volume: 30 axial slices, 40 organ ids among the objects of 10+ pixels."""
    ct = data_root / "ct-totalseg"
    sam_cache.embed(ct / "example_ct_sm.nii.gz", root / "ct.zarr", labels=str(ct / "example_seg.nii.gz"),
                    model="tiny", checkpoint=checkpoint, read_workers=0, progress=False, skip_empty=True)
    return root / "ct.zarr"


@pytest.fixture(scope="module")
def ct_cache(data_root, tmp_path_factory):
    """The CT volume embedded by `tiny` at a 128² input with SAM's decoder width (256 channels, 8×8
    embeddings): a random-init decoder this wide gives tokens a head can learn organs from (mostly from where
    the point is), and the small input keeps an epoch under a second on 2 CPU cores."""
    root = tmp_path_factory.mktemp("ct")
    torch.manual_seed(7)
    return embed_ct(data_root, root, save_checkpoint(build_tiny(img_size=128), root / "tiny128.pth"))


@pytest.fixture(scope="module")
def ct_micro(data_root, tmp_path_factory, micro_checkpoint):
    """The CT volume embedded by the micro model (32 channels): fast runs, for what needs no learning."""
    return embed_ct(data_root, tmp_path_factory.mktemp("ct_micro"), micro_checkpoint)


@pytest.fixture
def names_file(tmp_path):
    path = tmp_path / "names.json"
    path.write_text(json.dumps(NAMES))
    return path


def decoder_state(run):
    return torch.load(run / "decoder.pth", weights_only=True)


@pytest.mark.slow
def test_the_class_head_beats_the_majority_class_rate_on_ct_organs(ct_cache, tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the image encoder ran while training the class head")

    monkeypatch.setattr(ImageEncoderViT, "forward", never)
    r = classify(ct_cache, tmp_path / "run", prompt="center-point", epochs=15, lr=1e-3, progress=False)
    print(f"\n{r}")
    assert r.evaluated_on == "validation" and len(r.classes) == 40
    assert r.majority_rate < 0.1 and r.accuracy > r.majority_rate + 0.2, str(r)
    assert r.balanced_accuracy > 1 / len(r.classes) + 0.15, str(r)
    other = r.summary.set_index("prompt").loc[["random-point", "box"]]
    assert (other["accuracy"] > other["majority_rate"] + 0.1).all(), str(r)
    assert r.history["train_loss"].iloc[-1] < r.history["train_loss"].iloc[0]
    assert r.history["val_accuracy"].iloc[-1] == pytest.approx(r.accuracy)  # the last epoch is the one kept


def test_a_cache_without_classes_is_refused(rect_cache, tmp_path):
    with pytest.raises(SamCacheError, match="no object classes") as e:
        classify(rect_cache, tmp_path / "run", epochs=1, progress=False)
    assert str(rect_cache) in str(e.value) and "class" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed
    from typer.testing import CliRunner

    from sam_cache.cli.main import app

    r = CliRunner().invoke(app, ["classify", str(rect_cache), "-o", str(tmp_path / "cli"), "-q", "--epochs", "1"])
    assert r.exit_code == 2 and "no object classes" in r.output and not (tmp_path / "cli").exists()


def test_the_run_folder_and_what_stays_frozen(ct_micro, tmp_path, names_file):
    reader = CacheReader(ct_micro)
    base = {f"mask_decoder.{k}": v for k, v in load_decoder(reader, "base").mask_decoder.state_dict().items()}
    kw = dict(prompt="box", epochs=1, lr=1e-2, objects_per_sample=4, progress=False, class_names=names_file)
    r = classify(ct_micro, tmp_path / "head", eval_prompts=["random-point"], **kw)
    run = tmp_path / "head"
    for name in ("config.json", "decoder.pth", "class_head.pth", "sam_finetuned.pth", "metrics.csv", "report.md",
                 "per_class.csv", "confusion_box.csv", "confusion_box.png", "confusion_random-point.png"):
        assert (run / name).stat().st_size > 0, name
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == r.classes and {"spleen", "liver", "stomach", "52"} <= set(config["classes"])
    assert config["class_ids"][:3] == ["1", "2", "3"] and config["classes"][0] == "spleen"
    assert set(config["sets"]["train"]).isdisjoint(config["sets"]["val"]) and config["sets"]["how"] == "slice"
    assert list(r.summary["prompt"]) == ["box", "random-point"]
    with open(run / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"liver", "spleen"} <= {row["class"] for row in rows}
    assert sum(int(row["support"]) for row in rows if row["prompt"] == "random-point") == r.summary["objects"].iloc[1]
    assert "liver" in (run / "confusion_random-point.csv").read_text() and "| random-point |" in (run / "report.md").read_text()

    frozen = decoder_state(run)  # train_transformer=False: the decoder is exactly the starting one
    assert frozen.keys() == base.keys() and all(torch.equal(frozen[k], base[k]) for k in base)
    state = torch.load(run / "class_head.pth", weights_only=True)
    head = ClassHead.load(run / "class_head.pth", load_decoder(reader, "base"), config["classes"])
    assert all(torch.equal(head.state_dict()[k], state[k]) for k in state) and head.classes[1] == "2"

    r2 = classify(ct_micro, tmp_path / "both", eval_prompts=[], train_transformer=True, balanced=True, **kw)
    trained = decoder_state(tmp_path / "both")
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    assert changed and all(k.startswith("mask_decoder.transformer.") for k in changed), changed
    for part in ("output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head", "iou_token", "mask_tokens"):
        assert any(k.startswith(f"mask_decoder.{part}") for k in base)
    assert r2.classes == r.classes

    # sam_finetuned.pth: a stock (tiny) SAM checkpoint with the trained decoder swapped in
    sam, _ = load_sam("tiny", tmp_path / "both" / "sam_finetuned.pth")
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in trained.items())
    with pytest.raises(SamCacheError, match="already holds"):
        classify(ct_micro, tmp_path / "both", **kw)


def test_object_classes_targets_and_balanced_weights(ct_micro):
    reader = CacheReader(ct_micro)
    classes = ObjectClasses(reader, 10, NAMES)
    assert len(classes) == 40 and classes.names[:2] == ["spleen", "2"]
    counts = classes.counts(reader.samples)
    w = classes.balanced_weights(reader.samples).numpy()
    assert np.allclose(w * counts, counts.sum() / len(classes))  # every class weighs the same in all
    index = int(reader.samples[0])
    _, ids = reader.objects(index, 10)
    batch = {"index": torch.tensor([index]), "n": torch.tensor([2]), "ids": torch.tensor([[ids[0], ids[1], 0]]),
             "prompt_valid": torch.tensor([[True, False, False]])}
    t = classes.targets(batch)
    assert t[0, 0] == classes.ids.index(reader.classes(index, ids[:1])[0]) and (t[0, 1:] == IGNORE).all()


@pytest.mark.slow
def test_classify_resumes_where_it_stopped(ct_micro, tmp_path):
    """The shared training loop gives classify --resume: 1 epoch, then resumed to 3, equals 3 epochs at once."""
    kw = dict(prompt="box", lr=1e-2, objects_per_sample=4, progress=False, eval_prompts=[])
    whole = classify(ct_micro, tmp_path / "whole", epochs=3, **kw)
    classify(ct_micro, tmp_path / "part", epochs=1, **kw)
    resumed = classify(ct_micro, tmp_path / "part", epochs=3, resume=True, **kw)
    np.testing.assert_allclose(resumed.history["train_loss"], whole.history["train_loss"], rtol=1e-5)
    assert list(resumed.history["epoch"]) == [1, 2, 3]
    heads = [torch.load(tmp_path / r / "class_head.pth", weights_only=True) for r in ("whole", "part")]
    assert all(torch.allclose(heads[0][k], heads[1][k], atol=1e-6) for k in heads[0])
    with pytest.raises(SamCacheError, match="other settings"):
        classify(ct_micro, tmp_path / "part", epochs=4, resume=True, **{**kw, "lr": 1e-3})


@pytest.mark.slow
def test_classify_early_stopping_keeps_the_best_epoch(ct_micro, tmp_path):
    """With a learning rate too small to change anything, epoch 2 is no better than epoch 1: patience 1 stops
    there, and the head kept (and scored) is epoch 1's."""
    r = classify(ct_micro, tmp_path / "run", prompt="box", epochs=6, lr=1e-12, objects_per_sample=4, progress=False,
                 eval_prompts=[], early_stopping=1)
    assert list(r.history["epoch"]) == [1, 2]
    assert r.balanced_accuracy == pytest.approx(r.history["val_balanced_accuracy"].iloc[0])
    with pytest.raises(OptionError, match="--val-fraction > 0"):
        classify(ct_micro, tmp_path / "none", epochs=2, val_fraction=0, early_stopping=1, progress=False)
