"""samcache's instance scores against python-elf's `mean_segmentation_accuracy`, the implementation behind
micro-sam's published mSA, run in the peers' venv (benchmarks/peers/.venv; `make test` builds it) on the same
label-image pairs: real EM cells against eroded, dropped, merged and shifted copies, and hand-built pairs whose
IoUs sit exactly on a threshold (3/4, 3/5) or tie at 1/2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import label as components

from sam_cache.metrics.instances import scores

pytestmark = pytest.mark.slow  # starts the peers' python (elf imports numba): ~20 s
ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
PEER = ROOT / "tests" / "elf_peer.py"


def hand_built() -> list[tuple[np.ndarray, np.ndarray]]:
    true = np.zeros((40, 40), np.int64)
    true[0:10, 0:10], true[20:30, 20:30] = 1, 2
    on_075, on_060 = np.zeros_like(true), np.zeros_like(true)
    on_075[0:10, 0:10], on_075[20:30, 20:27], on_075[20:25, 27] = 5, 7, 7  # IoU 1 and 75/100
    on_060[0:10, 0:10], on_060[20:26, 20:30] = 5, 7  # IoU 1 and 60/100 = 0.6
    tie = np.zeros((20, 20), np.int64)
    tie[0:4, 0:8] = 1  # one true object of 32 pixels ...
    halves = np.zeros_like(tie)
    halves[0:4, 0:4], halves[0:4, 4:8] = 3, 4  # ... two predictions of 16, each IoU exactly 1/2
    return [(on_075, true), (on_060, true), (halves, tie), (tie, halves)]


def em_pairs(data_root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(3):
        cells = np.asarray(Image.open(data_root / "em-isbi2012" / "labels" / f"{i}.png"))[:256, :256]
        truth = components(cells > 0, connectivity=1).astype(np.int64)
        for size in (3, 5, 9):  # eroded by 1, 2 and 4 px, some dropped
            e = np.where(ndimage.grey_erosion(truth, size=size) == truth, truth, 0)
            e[np.isin(e, rng.choice(np.unique(e)[1:], 5, replace=False))] = 0
            pairs.append((e, truth))
        merged = truth.copy()
        merged[np.isin(merged, np.unique(truth)[1:8])] = 1  # seven cells as one
        pairs.append((merged, truth))
        pairs.append((np.roll(truth, (3, 2), axis=(0, 1)), truth))  # every cell shifted
    return pairs


def test_instance_scores_equal_elfs_on_the_same_label_images(data_root, tmp_path):
    assert PEERS.exists(), f"{PEERS} is missing: run `bash benchmarks/peers/setup.sh` (make test does)"
    pairs = hand_built() + em_pairs(data_root)
    files = []
    for k, (pred, true) in enumerate(pairs):
        np.save(tmp_path / f"p{k}.npy", pred)
        np.save(tmp_path / f"t{k}.npy", true)
        files.append([str(tmp_path / f"p{k}.npy"), str(tmp_path / f"t{k}.npy")])
    (tmp_path / "pairs.json").write_text(json.dumps(files))
    subprocess.run([str(PEERS), str(PEER), str(tmp_path / "pairs.json"), str(tmp_path / "elf.json")],
                   check=True, timeout=600, capture_output=True)
    theirs = json.loads((tmp_path / "elf.json").read_text())
    for k, ((pred, true), (msa, sa50, sa75)) in enumerate(zip(pairs, theirs)):
        mine = scores(true, pred)
        assert (mine["msa"], mine["sa50"], mine["sa75"]) == pytest.approx((msa, sa50, sa75), abs=1e-9), f"pair {k}"
    # the boundary cases really are on a threshold: an IoU of exactly 3/4 does not count at elf's "0.75"
    on_075 = scores(pairs[0][1], pairs[0][0])
    assert on_075["sa50"] == 1.0 and on_075["sa75"] == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
