"""AIS targets and post-processing (sam_cache/instance): torch_em's definitions, checked against values computed
by hand, and the watershed against touching discs whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sam_cache.instance.decoder import AISDecoder, ais_loss
from sam_cache.instance.targets import distance_targets
from sam_cache.instance.watershed import instances
from sam_cache.metrics.instances import scores


def square(size=7, side=5):
    labels = np.zeros((size, size), np.uint16)
    lo = (size - side) // 2
    labels[lo:lo + side, lo:lo + side] = 3
    return labels


def test_a_square_by_hand():
    """A 5×5 square at (1..5, 1..5) in a 7×7 image: centre (3, 3). Centre distance: hypot to the centre over its
    largest value, sqrt(8) at the corners. Inner boundary: the square's outer ring; distance to it 0, 1, 2
    from the ring inwards, so the boundary target (2 - d) / 2 is 1 on the ring, 0.5 inside it, 0 at the centre."""
    t = distance_targets(square())
    fg, center, boundary = t
    inside = square() > 0
    assert fg.dtype == np.float32 and t.shape == (3, 7, 7)
    np.testing.assert_array_equal(fg, inside)
    assert np.all(center[~inside] == 1) and np.all(boundary[~inside] == 1)  # background is far from everything
    yy, xx = np.indices((7, 7))
    want = np.hypot(yy - 3, xx - 3) / (math.sqrt(8) + 1e-7)
    np.testing.assert_allclose(center[inside], want[inside], rtol=1e-6)
    ring = np.array([[0.0] * 7, [0, 1, 1, 1, 1, 1, 0], [0, 1, .5, .5, .5, 1, 0], [0, 1, .5, 0, .5, 1, 0],
                     [0, 1, .5, .5, .5, 1, 0], [0, 1, 1, 1, 1, 1, 0], [0.0] * 7]) * (2 / (2 + 1e-7))
    np.testing.assert_allclose(boundary[inside], ring[inside], rtol=1e-6)


def test_a_c_shape_takes_its_centre_inside():
    """A C whose centroid falls in its gap: the centre moves to the pixel farthest from its boundary, so the
    centre distance is 0 on the object, never at the centroid."""
    labels = np.zeros((21, 21), np.uint8)
    labels[2:19, 2:19] = 1
    labels[7:14, 7:19] = 0  # the gap, open to the right, holds the centroid
    center = distance_targets(labels)[1]
    ys, xs = np.nonzero(center == 0)
    assert len(ys) == 1 and labels[ys[0], xs[0]] == 1
    cy, cx = np.argwhere(labels).mean(0)
    assert labels[int(round(cy)), int(round(cx))] == 0  # the case the correction is for


def test_touching_objects_stay_apart_and_small_ones_go():
    labels = np.zeros((12, 12), np.uint16)
    labels[2:10, 1:6] = 1
    labels[2:10, 6:11] = 2  # touches object 1
    labels[0, 0] = 7  # one pixel
    fg, center, boundary = distance_targets(labels, min_size=2)
    assert fg[0, 0] == 0 and center[0, 0] == 1
    np.testing.assert_allclose(boundary[2:10, 5:7], 1, atol=1e-6)  # the seam is a boundary of each object
    for obj in (labels == 1, labels == 2):
        assert center[obj].min() == 0 and center[obj].max() == pytest.approx(1, abs=1e-6)


def discs(centers, radius, shape=(64, 64)):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.uint16)
    for k, (cy, cx) in enumerate(centers, start=1):
        labels[(np.hypot(yy - cy, xx - cx) <= radius) & (labels == 0)] = k
    return labels


def test_the_watershed_recovers_touching_discs():
    truth = discs([(32, 20), (32, 39), (14, 30)], radius=10)  # discs 1 and 2 overlap by a sliver: they touch
    assert set(np.unique(truth[28:37, 29:31])) == {1, 2}
    seg = instances(*distance_targets(truth))
    assert seg.max() == 3
    for k in range(1, 4):
        found = np.bincount(seg[truth == k], minlength=4)
        match = found.argmax()
        iou = ((seg == match) & (truth == k)).sum() / ((seg == match) | (truth == k)).sum()
        assert match > 0 and iou > 0.95, (k, iou)


def test_the_foreground_alone_joins_them():
    """Without the distance maps (both 0 everywhere: one seed per foreground component) the touching discs become
    one instance: the distances are what separate them."""
    truth = discs([(32, 20), (32, 39)], radius=10)
    fg = (truth > 0).astype(np.float32)
    assert instances(fg, np.zeros_like(fg), np.zeros_like(fg)).max() == 1
    assert instances(*distance_targets(truth)).max() == 2


def test_post_processing_options():
    truth = discs([(32, 20), (32, 39)], radius=10)
    t = distance_targets(truth)
    assert instances(*t, min_size=10_000).max() == 0  # every instance under min_size
    assert instances(*t, foreground_threshold=1.0).max() == 0  # nothing is foreground
    with pytest.raises(ValueError, match="unknown AIS post-processing option.*center_threshold"):
        instances(*t, center_threshold=0.4)
    with pytest.raises(ValueError, match="one shape"):
        instances(t[0], t[1][:10], t[2])


def blob_tiles(n, seed, size=64):
    """N tiles of 2-4 touching or nearby discs (radius 7-10), their instance labels, and stand-in 'embeddings'
    that hold each tile's image: the disc image (bright centres, dimmer rims, so the seam of two touching
    discs is visible) unshuffled to [16, 16, 16] and projected to 32 channels by a fixed random 1x1 map."""
    rng = np.random.default_rng(seed)
    labels, images = [], []
    yy, xx = np.indices((size, size))
    for _ in range(n):
        lab = np.zeros((size, size), np.uint16)
        img = np.zeros((size, size), np.float32)
        for k in range(1, rng.integers(2, 5) + 1):
            r = rng.uniform(7, 10)
            cy, cx = rng.uniform(r, size - r, 2)
            d = np.hypot(yy - cy, xx - cx)
            disc = (d <= r) & (lab == 0)
            lab[disc] = k
            img[disc] = np.maximum(img[disc], 1 - 0.7 * d[disc] / r)
        labels.append(lab)
        images.append(img)
    images = torch.from_numpy(np.stack(images))[:, None]
    mix = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    emb = torch.einsum("oc,bchw->bohw", mix, torch.nn.functional.pixel_unshuffle(images, 4))
    return emb, np.stack(labels)


def test_an_ais_decoder_trained_for_a_few_steps_separates_blobs():
    """Trained from the stand-in embeddings for 150 steps, the decoder's outputs through the watershed score an
    mSA on held-out tiles far above that of its untrained outputs (measured 0.936 against 0.000; 0.933 and
    0.902 with torch seeds 1 and 2)."""
    torch.manual_seed(0)
    emb, labels = blob_tiles(48, seed=1)
    targets = torch.from_numpy(np.stack([distance_targets(lab) for lab in labels]))
    test_emb, test_labels = blob_tiles(8, seed=2)
    decoder = AISDecoder(embedding_channels=32, embedding_size=16, input_size=64, width=64)
    assert len([m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]) == 2  # 16 -> 64

    def msa():
        decoder.eval()
        with torch.no_grad():
            maps = torch.sigmoid(decoder(test_emb)).numpy()
        return np.nanmean([scores(lab, instances(*m))["msa"] for lab, m in zip(test_labels, maps)])

    before = msa()
    decoder.train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(150):
        batch = rng.choice(len(emb), 8, replace=False)
        optimizer.zero_grad(set_to_none=True)
        loss = ais_loss(decoder(emb[batch]), targets[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = msa()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert before < 0.1 and after > 0.8, (before, after)


def test_the_decoder_refuses_an_embedding_of_another_shape():
    with pytest.raises(ValueError, match="power of 2"):
        AISDecoder(256, 64, 200)
    with pytest.raises(ValueError, match=r"do not fit this decoder, built for \(256, 64, 64\)"):
        AISDecoder(256, 64, 256)(torch.zeros(1, 256, 32, 32))
