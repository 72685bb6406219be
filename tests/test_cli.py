"""The command line a new user meets: help, version, warnings, what info says, logs that stay short."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_help_is_grouped_with_an_example_and_version():
    r = run_cli("embed", "-h")
    assert r.exit_code == 0
    for heading in ("Input", "Tiles", "Intensity", "Model", "Output", "Execution"):
        assert f"─ {heading} ─" in r.output, heading
    assert "Example: samcache embed data/em -o em.zarr" in r.output
    assert "<bool>" not in r.output and "<bool>" not in run_cli("-h").output  # flags show no type
    r = run_cli("--version")
    assert r.exit_code == 0 and r.output.strip() == f"samcache {sam_cache.__version__}"


def test_help_does_not_load_the_engine():
    code = "import sys, sam_cache.cli.main; print(sorted(m for m in ('torch', 'zarr', 'xarray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_embed_says_what_a_user_would_not_guess(data_root, tmp_path):
    ct = data_root / "ct-totalseg"
    r = run_cli("embed", ct / "example_ct_sm.nii.gz", "--labels", ct / "example_seg.nii.gz", "-o", tmp_path / "a.zarr",
                "--model", "tiny", "-q")
    assert r.exit_code == 0 and "for CT that is rarely what is wanted: pass --window" in r.output
    r = run_cli("embed", ct / "example_ct_sm.nii.gz", "--labels", ct / "example_seg.nii.gz", "-o", tmp_path / "b.zarr",
                "--model", "tiny", "-q", "--window", "abdomen")
    assert r.exit_code == 0 and "--window" not in r.output
    info = run_cli("info", tmp_path / "b.zarr").output
    assert "window level 40, width 400 HU" in info and "slicing axis 2" in info and ", 1 source," in info
    assert "example_ct_sm.nii.gz" in info
    big = tmp_path / "big"
    (big / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 2200), np.uint8)).save(big / "images" / "wide.png")
    r = run_cli("embed", big, "-o", tmp_path / "c.zarr", "--model", "tiny", "-q")
    assert r.exit_code == 0 and "shrunk 2.1× to the encoder's 1024² input; pass --patch" in r.output


def test_a_log_of_ablate_stays_short(rect_cache, tmp_path):
    log = tmp_path / "ablate.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "sam_cache.cli", "ablate", str(rect_cache), "--prompts", "box",
                        "-o", str(tmp_path / "a"), "--partition-size", "4", "--examples", "1"],
                       stdout=f, stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text and len(text.splitlines()) < 100
    assert "score: 32/32 samples (100%" in text


def test_finetune_returns_its_history_and_decoder(rect_cache, tmp_path):
    r = sam_cache.finetune(rect_cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=2, lr=1e-3),
                           progress=False, log=lambda m: None)
    assert list(r.history.index) == [0, 1, 2] and {"train_loss", "val_dice", "val_iou"} <= set(r.history.columns)
    assert r.history.loc[r.best_epoch, "val_dice"] == r.best_val_dice
    kept = torch.load(tmp_path / "run" / "decoder.pth", weights_only=True)
    assert all(torch.equal(v, kept[f"mask_decoder.{k}"]) for k, v in r.decoder.mask_decoder.state_dict().items())


BAD_OPTIONS = """
import json, sys
from typer.testing import CliRunner
from sam_cache.cli.main import app
said = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    said.append([r.exit_code, r.output.strip(), [m for m in ("torch", "zarr") if m in sys.modules]])
print(json.dumps(said))
"""


def test_option_errors_answer_before_the_engine_is_imported(tmp_path):
    """Each bad value is refused with one line naming the option, and neither torch nor zarr is imported: the
    answer comes as fast as --help. The cache named does not exist, so a check the CLI missed would reach the
    engine and fail on the cache instead."""
    data, cache = str(tmp_path), str(tmp_path / "no.zarr")
    cases = {
        "--dtype": ["embed", data, "-o", cache, "--dtype", "float64"],
        "--store": ["embed", data, "-o", cache, "--store", "bitround:99"],
        "--precision": ["embed", data, "-o", cache, "--precision", "fp8"],
        "--label-kind": ["embed", data, "-o", cache, "--label-kind", "rgb"],
        "--shard-size": ["embed", data, "-o", cache, "--shard-size", "0"],
        "--model": ["embed", data, "-o", cache, "--model", "vit_z"],
        "prompt strategy": ["evaluate", cache, "--prompt", "boxx"],
        "--mask": ["evaluate", cache, "--mask", "best"],
        "--iterations": ["evaluate", cache, "--iterations", "0"],
        "--split": ["evaluate", cache, "--split", "vall"],
        "--propagate-from": ["evaluate", cache, "--scoring", "volume", "--propagate-from", "points"],
        "centre-point": ["ablate", cache, "--prompts", "box,centre-point"],
        "--seeds": ["ablate", cache, "--seeds", "0"],
        "--partition-size": ["ablate", cache, "--partition-size", "0"],
        "pred_iou_thresh": ["segment", cache, "--sweep", "pred_iou_thresh=0.5,2"],
        "--output-mode": ["segment", cache, "--output-mode", "png"],
        "--keep": ["segment", cache, "--sweep", "pred_iou_thresh=0.5,0.8", "--keep", "2"],
        "--prompts-from-labels": ["predict", cache],
        "--epochs": ["finetune", cache, "--epochs", "0"],
        "--percentiles": ["embed", data, "-o", cache, "--intensity", "percentile", "--percentiles", "99,1"],
        "--threshold": ["evaluate", cache, "--prompt", "none", "--threshold", "2"],
        "--examples": ["ablate", cache, "--examples", "-1"],
        # click's own checks (a type, an unknown option or command, a missing argument): one line too
        "'--epochs'": ["finetune", cache, "--epochs", "abc"],
        "--bogus": ["embed", data, "--bogus"],
        "'bogus'": ["bogus"],
        "'cache'": ["finetune"],
    }
    out = subprocess.run([sys.executable, "-c", BAD_OPTIONS, json.dumps(list(cases.values()))], capture_output=True,
                         text=True, check=True).stdout
    for (option, args), (code, said, imported) in zip(cases.items(), json.loads(out)):
        assert code == 2 and option in said and len(said.splitlines()) == 1, (args, code, said)
        assert imported == [], (args, imported)
    import importlib

    from sam_cache import choices as C
    for registry, group in ((C.PROMPT_REGISTRY, C.PROMPT_PLUGINS), (C.MODEL_REGISTRY, C.MODEL_PLUGINS)):
        assert importlib.import_module(registry).ENTRY_POINTS == group  # the registry the check defers to
