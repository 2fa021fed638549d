"""Texture proxy datasets: layout, determinism, colour carries no class, disjoint pretraining."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from segeig.data.registry import build_dataset
from segeig.data.textures import (
    EVAL_TEXTURES,
    PRETRAIN_TEXTURE_OFFSET,
    TextureClass,
    make_texture_dataset,
    render_texture,
    render_texture_sample,
    texture_class,
    texture_names,
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_is_a_custom_dataset(tmp_path):
    root = make_texture_dataset(tmp_path / "tex", n_train=2, n_val=3, size=(48, 64), n_classes=5)
    val = build_dataset("custom", root, "val")
    assert len(build_dataset("custom", root, "train", with_labels=False)) == 2
    assert len(val) == 3 and val.class_names == texture_names(5)
    for i in range(len(val)):
        sample = val[i]
        assert sample.image.shape == (48, 64, 3) and sample.label.shape == (48, 64)
        assert sample.label.max() < 5 and len(np.unique(sample.label)) >= 2


def test_deterministic_per_seed(tmp_path):
    a = make_texture_dataset(tmp_path / "a", 1, 1, 40, 4, seed=3)
    b = make_texture_dataset(tmp_path / "b", 1, 1, 40, 4, seed=3)
    c = make_texture_dataset(tmp_path / "c", 1, 1, 40, 4, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_colour_does_not_identify_a_class():
    """The mean colour of a class's regions varies across images as much as between classes."""
    means: dict[int, list[np.ndarray]] = {}
    for i in range(40):
        image, label = render_texture_sample(np.random.default_rng(i), (96, 96), 8)
        for c in np.unique(label):
            means.setdefault(int(c), []).append(image[label == c].mean(0))
    centres = np.stack([np.mean(v, 0) for v in means.values()])
    within = np.mean([np.linalg.norm(np.stack(v) - np.mean(v, 0), axis=1).mean()
                      for v in means.values()])
    between = np.linalg.norm(centres - centres.mean(0), axis=1).mean()
    # A colour-coded class set (segeig.data.synthetic) has between >> within.
    assert between < 0.5 * within


def test_texture_statistics_differ_between_classes():
    """Orientation is a class property: a grating's dominant frequency follows its angle."""
    for c in (0, 1):
        coverage = render_texture(EVAL_TEXTURES[c], (128, 128), np.random.default_rng(c))
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(coverage - coverage.mean())))
        y, x = np.unravel_index(spectrum.argmax(), spectrum.shape)
        angle = np.rad2deg(np.arctan2(y - 64, x - 64)) % 180
        diff = abs(angle - EVAL_TEXTURES[c].angle) % 180
        assert min(diff, 180 - diff) < 8


def test_pretraining_textures_are_disjoint_from_evaluation():
    for appearance in range(PRETRAIN_TEXTURE_OFFSET, PRETRAIN_TEXTURE_OFFSET + 128):
        t = texture_class(appearance)
        assert t not in EVAL_TEXTURES
        for e in EVAL_TEXTURES:
            if t.family == e.family:
                turn = abs(t.angle - e.angle) % 180
                isotropic = t.family in ("scatter", "blobs")
                close = isotropic or min(turn, 180 - turn) < 20
                assert not (close and max(t.period, e.period) / min(t.period, e.period) < 1.3)
    assert texture_class(3) == EVAL_TEXTURES[3]
    assert isinstance(texture_class(PRETRAIN_TEXTURE_OFFSET), TextureClass)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        make_texture_dataset(tmp_path, 1, 1, 32, n_classes=len(EVAL_TEXTURES) + 1)
    with pytest.raises(ValueError, match="n_classes"):
        render_texture_sample(np.random.default_rng(0), (32, 32), 1)
