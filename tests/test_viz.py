"""Tests for segeig.viz: palettes, colouring, overlays, plots and label PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segeig.viz import (
    colorize,
    comparison_grid,
    confusion_plot,
    eigenfunction_grid,
    eigenfunction_maps,
    legend_image,
    make_palette,
    overlay,
)


def _is_png(path) -> bool:
    with Image.open(path) as img:
        img.verify()
        return img.format == "PNG"


def test_palette_distinct_and_deterministic():
    pal = make_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal.tolist()}) == 256
    assert not np.any(np.all(pal == 0, axis=1))  # black is reserved for ignore
    assert np.array_equal(pal, make_palette(256))
    assert np.array_equal(make_palette(5), pal[:5])
    assert make_palette(0).shape == (0, 3)
    assert len({tuple(c) for c in make_palette(1000).tolist()}) == 1000


def test_colorize_ignore_and_negative_black():
    pal = make_palette(4)
    labels = np.array([[0, 1, -1], [255, 3, 2]])
    out = colorize(labels, pal)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], pal[0]) and np.array_equal(out[1, 1], pal[3])
    assert np.all(out[0, 2] == 0) and np.all(out[1, 0] == 0)
    with pytest.raises(ValueError, match="palette"):
        colorize(np.array([[4]]), pal)
    # With ignore disabled, 255 is an ordinary id.
    big = make_palette(300)
    assert np.array_equal(colorize(np.array([[255]]), big, ignore_index=None)[0, 0], big[255])


def test_overlay_shapes_blend_and_boundaries():
    image = np.full((6, 8, 3), 100, np.uint8)
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 1
    labels[0, 0] = 255
    pal = np.array([[200, 0, 0], [0, 200, 0]], np.uint8)
    out = overlay(image, labels, pal, alpha=0.5, draw_boundaries=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[3, 1].tolist() == [150, 50, 50]
    assert out[0, 0].tolist() == [100, 100, 100]  # ignored pixel keeps the image
    edged = overlay(image, labels, pal)
    assert edged[3, 3].tolist() == [255, 255, 255]  # last column of segment 0
    assert edged[3, 1].tolist() == [150, 50, 50]
    assert np.array_equal(overlay(image, labels, pal, alpha=0.0, draw_boundaries=False), image)
    with pytest.raises(ValueError):
        overlay(image, labels[:3], pal)
    with pytest.raises(ValueError):
        overlay(image, labels, pal, alpha=1.5)


@pytest.mark.parametrize("n_classes", [3, 150])
def test_confusion_plot_writes_png(tmp_path, n_classes):
    rng = np.random.default_rng(n_classes)
    conf = rng.integers(0, 100, size=(n_classes, n_classes + 1))
    conf[0] = 0  # an absent class must not divide by zero
    path = tmp_path / f"conf{n_classes}.png"
    confusion_plot(conf, [f"class{i}" for i in range(n_classes)], path, title="test")
    assert _is_png(path)
    confusion_plot(conf[:, :n_classes], [f"c{i}" for i in range(n_classes)], path)
    assert _is_png(path)


def test_eigenfunction_maps_and_grid():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(10, 6, 9)).astype(np.float32)
    values[1] = 0.0  # constant map must not divide by zero
    maps = eigenfunction_maps(values, n=8, size=(24, 36))
    assert len(maps) == 8
    assert all(m.shape == (24, 36, 3) and m.dtype == np.uint8 for m in maps)
    assert np.all(maps[1] == maps[1][0, 0])  # zero map -> uniform neutral colour
    grid = eigenfunction_grid(values, eigenvalues=np.linspace(1, 0.5, 10), n=6, cols=3)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype == np.uint8
    assert grid.shape[1] > grid.shape[0]  # 3 columns x 2 rows of landscape tiles
    assert len(eigenfunction_maps(values[:3], n=8)) == 3


def test_comparison_grid_and_legend(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    path = tmp_path / "cmp.png"
    comparison_grid([(img, img, img), (img, img, img)], path)
    assert _is_png(path)
    with pytest.raises(ValueError):
        comparison_grid([(img, img)], path)
    legend = legend_image([f"name {i}" for i in range(45)], make_palette(45))
    assert legend.ndim == 3 and legend.shape[2] == 3 and legend.dtype == np.uint8
