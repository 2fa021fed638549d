"""Patch-grid → pixel resampling: exactness of the pruned argmax, CRF probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segeig.resample.argmax as resample
from segeig.resample import interp_matrix, pixel_argmax, pixel_probs, upsample_scores


def _structured_scores(s: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Scores like a trained model's: one clear winner per patch region, smooth elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    regions = F.interpolate(torch.rand(1, s, max(1, h // 3), max(1, w // 3), generator=gen),
                            size=(h, w), mode="nearest")[0]
    return 8.0 * regions + 0.3 * torch.randn(s, h, w, generator=gen)


def _reference(scores: torch.Tensor, patch: int, in_size, out_size) -> torch.Tensor:
    """Independent reference: grid_sample at each output pixel's grid coordinate."""
    _, h, w = scores.shape
    ys = (torch.arange(out_size[0]) + 0.5) * in_size[0] / (out_size[0] * patch) - 0.5
    xs = (torch.arange(out_size[1]) + 0.5) * in_size[1] / (out_size[1] * patch) - 0.5
    grid = torch.stack(torch.meshgrid((2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1,
                                      indexing="xy"), -1)[None]
    return F.grid_sample(scores[None].double(), grid.double(), mode="bilinear",
                         padding_mode="border", align_corners=False)[0].float()


@pytest.mark.parametrize("s,h,w,size", [(20, 6, 9, (90, 140)), (7, 5, 4, (77, 60)),
                                        (5, 1, 6, (13, 90)), (4, 3, 1, (40, 9)),
                                        (9, 2, 2, (32, 32))])
def test_argmax_equals_upsampled_argmax(s, h, w, size):
    scores = _structured_scores(s, h, w)
    expected = upsample_scores(scores[None], 16, size)[0].argmax(0)
    torch.testing.assert_close(pixel_argmax(scores, 16, size), expected, rtol=0, atol=0)


def test_ragged_path_is_used_for_peaked_scores(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("dense fallback used")

    monkeypatch.setattr(resample, "_dense_argmax", fail)
    scores = _structured_scores(64, 10, 12, seed=3)
    expected = upsample_scores(scores[None], 16, (160, 190))[0].argmax(0)
    torch.testing.assert_close(pixel_argmax(scores, 16, (160, 190)), expected, rtol=0, atol=0)


def test_dense_fallback_for_flat_scores(monkeypatch):
    calls = []
    dense = resample._dense_argmax
    monkeypatch.setattr(resample, "_dense_argmax", lambda *a: calls.append(1) or dense(*a))
    # One distinct winner per grid point and all else flat: every segment is
    # a candidate in every cell, the case the dense path is for.
    winners = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:36].view(6, 6)
    scores = F.one_hot(winners, 64).permute(2, 0, 1).float()
    out = pixel_argmax(scores, 16, (96, 96))
    assert calls, "flat scores should take the dense path"
    expected = upsample_scores(scores[None], 16, (96, 96))[0].argmax(0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_other_output_size_matches_grid_sample():
    scores = _structured_scores(12, 8, 11, seed=1)
    in_size, out_size = (120, 170), (97, 133)
    expected = _reference(scores, 16, in_size, out_size).argmax(0)
    assert (pixel_argmax(scores, 16, in_size, out_size) == expected).float().mean() > 0.9999


def test_ties_go_to_lowest_id():
    scores = torch.zeros(5, 3, 3)
    scores[3] = 1.0
    scores[4] = 1.0
    assert torch.all(pixel_argmax(scores, 8, (24, 24)) == 3)
    assert torch.all(pixel_argmax(torch.zeros(4, 2, 2), 8, (10, 13)) == 0)


def test_interp_matrix_matches_interpolate():
    signal = torch.randn(7)
    weights = interp_matrix(50, 7, 7 / 50)
    torch.testing.assert_close(weights.sum(1), torch.ones(50))
    expected = F.interpolate(signal[None, None], size=50, mode="linear", align_corners=False)
    torch.testing.assert_close(weights @ signal, expected[0, 0], atol=1e-5, rtol=1e-5)


def test_pixel_probs():
    scores = _structured_scores(40, 5, 6, seed=2)
    probs, ids = pixel_probs(scores, 16, (80, 96), max_labels=8)
    assert probs.shape == (len(ids), 80, 96) and len(ids) <= 8
    assert probs.dtype == np.float32 and probs.flags["C_CONTIGUOUS"]
    assert np.all(np.diff(ids) > 0)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # Every segment winning a patch is kept, so the argmax is unchanged.
    if len(scores.argmax(0).unique()) <= 8:
        np.testing.assert_array_equal(ids[probs.argmax(0)],
                                      pixel_argmax(scores, 16, (80, 96)).numpy())
    full = torch.softmax(upsample_scores(scores[None], 16, (80, 96))[0], 0)[torch.from_numpy(ids)]
    np.testing.assert_allclose(probs, (full / full.sum(0)).numpy(), atol=1e-5)


@pytest.mark.parametrize(("size", "patch", "n_seg"), [((100, 37), 16, 5), ((257, 300), 8, 300),
                                                      ((1000, 20), 14, 12)])
def test_pixel_labels_in_bands_equal_the_whole_argmax(size, patch, n_seg):
    """Bands see the grid rows around them, so every pixel gets the same id (compact dtype)."""
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    scores = _structured_scores(n_seg, *grid, seed=n_seg)
    whole = pixel_argmax(scores, patch, size).numpy()
    for band_pixels in (1, 3 * size[1] * patch, 10**8):
        labels = resample.pixel_labels(scores, patch, size, band_pixels=band_pixels)
        assert labels.dtype == (np.uint8 if n_seg <= 256 else np.uint16)
        np.testing.assert_array_equal(labels, whole)
