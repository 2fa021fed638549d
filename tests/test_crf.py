"""Tests for segeig.crf: dense CRF refinement, top-k label reduction, process pool."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from segeig.crf import CRFParams, CRFPool, crf_labels, dense_crf, topk_probs

pytest.importorskip("pydensecrf.densecrf")

COLOURS = np.array([[200, 40, 40], [40, 180, 60], [50, 60, 200]])


def _scene(seed: int = 0, size: int = 64, flip_frac: float = 0.25):
    """Three flat colour regions with mild noise, clean labels and a noisy softmax.

    Each pixel's softmax puts 0.7 on one label and 0.15 on the two others; for
    ``flip_frac`` of the pixels that peak sits on a random wrong label.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int64)
    labels[:, size // 2 :] = 1
    labels[size // 2 :, size // 2 :] = 2
    image = COLOURS[labels] + rng.normal(0, 4, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    n = len(COLOURS)
    wrong = (labels + rng.integers(1, n, labels.shape)) % n
    peak = np.where(rng.random(labels.shape) < flip_frac, wrong, labels)
    probs = np.full((n, size, size), 0.15, np.float32)
    np.put_along_axis(probs, peak[None], 0.7, axis=0)
    return image, labels, probs


def test_crf_cleans_noisy_softmax():
    image, clean, probs = _scene()
    noisy_acc = np.mean(probs.argmax(0) == clean)
    assert 0.7 < noisy_acc < 0.8
    refined = crf_labels(image, probs)
    crf_acc = np.mean(refined == clean)
    assert crf_acc > 0.97
    assert crf_acc - noisy_acc > 0.15


def test_dense_crf_shapes_and_dtypes():
    image, _, probs = _scene(size=32)
    q = dense_crf(image, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.all((q >= 0) & (q <= 1))
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    labels = crf_labels(image, probs, CRFParams(iterations=2))
    assert labels.shape == (32, 32) and labels.dtype == np.int64


def test_dense_crf_accepts_readonly_and_noncontiguous_inputs():
    image, clean, probs = _scene(size=32)
    image = np.asfortranarray(image)
    image.flags.writeable = False  # like np.asarray(PIL.Image)
    probs_view = np.transpose(np.ascontiguousarray(np.transpose(probs, (1, 2, 0))), (2, 0, 1))
    assert not probs_view.flags.c_contiguous
    assert np.mean(crf_labels(image, probs_view) == clean) > 0.9


def test_dense_crf_rejects_bad_inputs():
    image, _, probs = _scene(size=16)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="spatial size"):
        dense_crf(image, probs[:, :8])


def test_single_label_is_trivial():
    image, _, _ = _scene(size=16)
    q = dense_crf(image, np.ones((1, 16, 16), np.float32))
    assert q.shape == (1, 16, 16) and np.all(q == 1)


def test_topk_probs_keeps_winners_and_maps_back():
    image, clean, probs3 = _scene(size=32)
    # Embed the 3 real labels at ids 5, 17, 40 among 50 labels; the rest get
    # small noise so they lose everywhere but are not all equal.
    rng = np.random.default_rng(1)
    ids = np.array([5, 17, 40])
    probs = rng.random((50, 32, 32)).astype(np.float32) * 0.01
    probs[ids] = probs3
    probs /= probs.sum(0, keepdims=True)

    kept, class_ids = topk_probs(probs, 4)
    assert kept.shape == (4, 32, 32) and kept.dtype == np.float32
    assert class_ids.dtype == np.int64
    assert set(ids) <= set(class_ids.tolist())
    assert np.all(np.diff(class_ids) > 0)
    np.testing.assert_allclose(kept.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(class_ids[kept.argmax(0)], probs.argmax(0))

    labels = crf_labels(image, probs, max_labels=4)
    assert set(np.unique(labels).tolist()) <= set(ids.tolist())
    assert np.mean(labels == ids[clean]) > 0.97
    # m >= K keeps everything in order.
    kept_all, all_ids = topk_probs(probs3, 8)
    assert all_ids.tolist() == [0, 1, 2] and np.array_equal(kept_all, probs3)


def test_topk_prefers_pixel_winners_over_peaky_losers():
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 0.55  # wins every pixel, modest peak
    probs[1] = 0.45
    probs[1, 0, 0] = 0.0
    probs[2, 0, 0] = 0.45  # never wins, lower peak than label 1
    _, ids = topk_probs(probs, 1)
    assert ids.tolist() == [0]
    _, ids = topk_probs(probs, 2)
    assert ids.tolist() == [0, 1]


def test_missing_pydensecrf_gives_install_hint(monkeypatch):
    image, _, probs = _scene(size=16)
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(image, probs)


def test_pool_matches_inline():
    scenes = [_scene(seed=s, size=48) for s in range(4)]
    images = [s[0] for s in scenes]
    probs = [s[2] for s in scenes]
    expected = [crf_labels(i, p) for i, p in zip(images, probs, strict=True)]
    with CRFPool(workers=0) as pool:
        inline = pool.map(images, probs)
    with CRFPool(workers=2) as pool:
        parallel = pool.map(images, probs)
    for e, a, b in zip(expected, inline, parallel, strict=True):
        np.testing.assert_array_equal(e, a)
        np.testing.assert_array_equal(e, b)


def test_pool_topk_maps_back_inline():
    image, clean, probs3 = _scene(size=24)
    probs = np.zeros((40, 24, 24), np.float32)
    probs[[3, 10, 33]] = probs3
    with CRFPool(workers=0, max_labels=3) as pool:
        (labels,) = pool.map([image], [probs])
    assert np.mean(labels == np.array([3, 10, 33])[clean]) > 0.97
    with pytest.raises(ValueError):
        CRFPool(workers=-1)
    with pytest.raises(ValueError, match="images"):
        CRFPool(workers=0).map([image], [])
