"""Shared fixtures: tiny SAM checkpoints built here, small synthetic datasets, the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam_cache.tiny import build_tiny
from sam_cache.models import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Real datasets: $SAMCACHE_TEST_DATA, else ../shared/data beside the repository."""
    root = Path(os.environ.get("SAMCACHE_TEST_DATA", REPO.parent / "shared" / "data"))
    assert root.is_dir(), f"real test data not found at {root}; set SAMCACHE_TEST_DATA"
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM saved in segment_anything's checkpoint format, with its own seed's weights."""
    torch.manual_seed(123)
    return save_checkpoint(build_tiny(), tmp_path_factory.mktemp("ckpt") / "tiny_seed123.pth")


def write_dataset(root: Path, sizes, seed: int = 0, label_dir: str = "labels") -> Path:
    """images/ + labels/ of random gray images with a few rectangular instances each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        image = rng.integers(0, 255, (h, w), dtype=np.uint8)
        label = np.zeros((h, w), np.uint16)
        for k in range(1, 4):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            label[y:y + 6, x:x + 6] = k
            image[y:y + 6, x:x + 6] = 200
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / label_dir / f"im{i}.png")
    return root


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """Six images of mixed sizes (aspect ratios differ) with instance labels."""
    return write_dataset(tmp_path / "data", [(64, 96), (64, 96), (80, 40), (64, 96), (50, 50), (64, 96)])


MICRO = dict(img_size=256, embed_dim=32, mlp_dim=64, iou_hidden=32, decoder_depth=1)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM at 256² input with 32×16×16 embeddings: decoder steps take milliseconds on a CPU."""
    torch.manual_seed(7)
    return save_checkpoint(build_tiny(**MICRO), tmp_path_factory.mktemp("micro") / "micro.pth")


def write_rectangles(root: Path, n: int = 32, size: int = 64, seed: int = 0) -> Path:
    """Bright rectangles (2 instances per image) on a dark noisy background: a task a decoder can learn."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 60, (size, size), dtype=np.uint8)
        label = np.zeros((size, size), np.uint16)
        for k in (1, 2):
            h, w = rng.integers(10, 24, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            label[y:y + h, x:x + w][label[y:y + h, x:x + w] == 0] = k
            image[y:y + h, x:x + w] = rng.integers(150, 255)
        Image.fromarray(image).save(root / "images" / f"r{i:02d}.png")
        Image.fromarray(label).save(root / "labels" / f"r{i:02d}.png")
    return root


def embed_ct(tmp_path: Path, data_root: Path) -> Path:
    """The real CT example (a NIfTI volume and its class labels, 30 slices along axis 2) embedded with a tiny
    random-init SAM at 128², empty slices skipped."""
    import sam_cache

    ct = data_root / "ct-totalseg"
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_tiny(img_size=128), tmp_path / "t.pth")
    sam_cache.embed(ct / "example_ct_sm.nii.gz", tmp_path / "ct.zarr", labels=str(ct / "example_seg.nii.gz"),
                    model="tiny", checkpoint=ckpt, read_workers=0, progress=False, skip_empty=True)
    return tmp_path / "ct.zarr"


@pytest.fixture(scope="session")
def rect_cache(tmp_path_factory, micro_checkpoint) -> Path:
    import sam_cache

    root = tmp_path_factory.mktemp("rect")
    data = write_rectangles(root / "data")
    sam_cache.embed(data, root / "rect.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    return root / "rect.zarr"
