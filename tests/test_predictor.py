"""Predictor: numpy in/out, any size, sliding windows, banded argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segeig.model import build_model, resolve_device
from segeig.predictor import Segmenter
from segeig.resample import pixel_scores, upsample_scores
from tests.conftest import random_image


@pytest.fixture
def segmenter(tiny_model) -> Segmenter:
    return Segmenter(tiny_model, device="cpu")


@pytest.mark.parametrize("size", [(1, 1), (7, 200), (48, 64), (65, 31)])
def test_predict_any_size(segmenter, rng, size):
    labels = segmenter.predict(random_image(rng, *size))
    assert labels.shape == size
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 12


def test_proba_and_scores_agree_with_labels(segmenter, rng):
    image = random_image(rng, 37, 53)
    probs = segmenter.predict_proba(image)
    assert probs.shape == (12, 37, 53)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), segmenter.predict(image))
    scores = pixel_scores(segmenter.patch_scores(image), 16, (37, 53))
    np.testing.assert_allclose(probs, torch.softmax(scores, 0).numpy(), atol=1e-6)


def test_predict_equals_argmax_of_upsampled_scores(segmenter, rng):
    image = random_image(rng, 70, 45)
    full = upsample_scores(segmenter.patch_scores(image)[None], 16, (70, 45))[0].argmax(0)
    np.testing.assert_array_equal(segmenter.predict(image), full.numpy())


def test_batched_tensor_api_matches_single_images(segmenter, rng):
    images = [random_image(rng, 40, 56) for _ in range(3)]
    batch = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    scores = segmenter.forward(batch).scores
    assert scores.shape == (3, 12, 3, 4)  # patch grid of 40×56 at p = 16
    for image, row in zip(images, scores, strict=True):
        torch.testing.assert_close(row, segmenter.patch_scores(image), atol=1e-4, rtol=1e-4)


def test_window_covering_image_equals_single_pass(segmenter, rng):
    image = random_image(rng, 64, 96)
    single = segmenter.patch_scores(image, max_side=None)
    windowed = segmenter.patch_scores(image, window=96, stride=32)
    torch.testing.assert_close(single, windowed)


def test_sliding_window_large_image(segmenter, rng):
    image = random_image(rng, 150, 260)
    scores = segmenter.patch_scores(image, max_side=64)
    assert scores.shape == (12, 10, 17)
    labels = segmenter.predict(image, max_side=64)
    assert labels.shape == (150, 260)


def test_methods_and_eigenfunctions(segmenter, rng):
    assert segmenter.methods == ["eigen"]
    values = segmenter.eigenfunctions(random_image(rng, 32, 48))
    assert values.shape == (12, 2, 3)
    with pytest.raises(ValueError, match="not available"):
        segmenter.predict(random_image(rng, 8, 8), method="kmeans")


def test_patch_maps_give_the_labels_and_eigenfunctions_of_one_pass(segmenter, rng):
    image = random_image(rng, 45, 70)
    scores, eigen = segmenter.patch_maps(image)
    assert scores.shape == (12, 3, 5) and eigen.shape == (12, 3, 5)
    assert segmenter.num_eigenfunctions == 12
    np.testing.assert_allclose(eigen, segmenter.eigenfunctions(image), atol=1e-6)
    np.testing.assert_array_equal(segmenter.labels_from_scores(image, scores),
                                  segmenter.predict(image, max_side=None))
    crf = segmenter.labels_from_scores(image, scores, crf=True)
    np.testing.assert_array_equal(crf, segmenter.predict(image, crf=True, max_side=None))


def test_kmeans_only_checkpoint_has_no_eigenfunctions(tiny_model, rng):
    model = build_model(tiny_model.backbone, None)
    model.set_centroids("kmeans", torch.randn(4, model.backbone.embed_dim))
    seg = Segmenter(model, device="cpu")
    assert seg.num_eigenfunctions is None
    scores, eigen = seg.patch_maps(random_image(rng, 32, 32), "kmeans")
    assert scores.shape == (4, 2, 2) and eigen is None


def test_bad_inputs(segmenter):
    with pytest.raises(ValueError, match="uint8"):
        segmenter.predict(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        segmenter.predict(np.zeros((4, 4), np.uint8))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")


def test_crf_prediction(segmenter, rng):
    image = random_image(rng, 40, 56)
    probs, ids = segmenter.crf_inputs(image, max_labels=5)
    assert probs.shape == (len(ids), 40, 56) and len(ids) <= 5
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    plain = segmenter.predict(image)
    refined = segmenter.predict(image, crf=True)
    assert refined.shape == plain.shape and refined.dtype == np.int32
    assert set(np.unique(refined)) <= set(ids.tolist()) | set(np.unique(plain).tolist())


def test_crf_backends_and_working_size(segmenter, rng):
    image = random_image(rng, 50, 70)
    assert segmenter.crf_backend == "auto"
    segmenter.crf_backend = "torch"
    torch_labels = segmenter.predict(image, crf=True)
    # Below the working size the CRF runs at full size; a smaller working size
    # gives labels of the full size with the same segments.
    segmenter.crf_backend, segmenter.crf_side = "torch", 25
    small = segmenter.predict(image, crf=True)
    assert small.shape == (50, 70) and small.dtype == np.int32
    assert np.mean(small == torch_labels) > 0.7
    with pytest.raises(ValueError, match="unknown CRF backend"):
        Segmenter(segmenter.model, device="cpu", crf_backend="fastest")


def test_densecrf_backend_agrees_with_torch(segmenter, rng, pydensecrf):
    image = random_image(rng, 50, 70)
    segmenter.crf_backend = "torch"
    torch_labels = segmenter.predict(image, crf=True)
    segmenter.crf_backend = "densecrf"
    assert np.mean(segmenter.predict(image, crf=True) == torch_labels) > 0.97
