"""Tests for segeig.train.augment (training augmentation)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from segeig.train.augment import train_transform


def _image(h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_output_shape_dtype_and_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deprecated albumentations arguments would warn
        t = train_transform(32, seed=0)
        for h, w in ((40, 56), (10, 12), (100, 30)):
            out = t(_image(h, w))
            assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_scale_is_relative_to_image_and_varies():
    # Zero mask + large crop: the non-padded area is exactly the rescaled image.
    t = train_transform(128, scale=(0.5, 2.0), hflip=False, photometric=False, seed=1)
    img = _image(64, 64)
    sides = []
    for _ in range(40):
        _, valid = t(img, np.zeros((64, 64), np.uint8))
        side = int(np.sqrt((valid == 0).sum()))
        sides.append(side)
        assert (valid[side:, :] == 255).all()  # padding is bottom/right, filled with 255
    assert 32 <= min(sides) < 48 and 100 < max(sides) <= 128
    assert len(set(sides)) > 10


def test_mask_follows_geometry():
    # Mask equal to the red channel must stay equal to it through scale/crop/flip.
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :20, 0] = 7
    img[30:, :, 0] = 9
    t = train_transform(32, photometric=False, seed=3)
    for _ in range(10):
        out, mask = t(img, img[..., 0].copy())
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        keep = mask != 255
        assert set(np.unique(mask)) <= {0, 7, 9, 255}
        # Bilinear image vs nearest mask differ only along the two region edges.
        assert (out[..., 0][keep] == mask[keep]).mean() > 0.85


def test_photometric_changes_colours_and_flip_only_is_exact():
    img = np.full((32, 32, 3), 128, np.uint8)
    t = train_transform(32, scale=(1.0, 1.0), hflip=False, photometric=True, seed=0)
    outs = [t(img) for _ in range(20)]
    assert any(not np.array_equal(o, img) for o in outs)
    t = train_transform(32, scale=(1.0, 1.0), hflip=True, photometric=False, seed=0)
    src = _image(32, 32)
    flips = [t(src) for _ in range(20)]
    assert all(np.array_equal(o, src) or np.array_equal(o, src[:, ::-1]) for o in flips)
    assert any(np.array_equal(o, src[:, ::-1]) for o in flips)


def test_seeded_is_reproducible_and_validates_input():
    a = [train_transform(24, seed=5)(_image()) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    t = train_transform(24)
    with pytest.raises(ValueError, match="uint8"):
        t(_image().astype(np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        t(_image(), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="scale"):
        train_transform(24, scale=(2.0, 0.5))
