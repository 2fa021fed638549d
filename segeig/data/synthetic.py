"""Synthetic labelled datasets in the ``custom`` layout, for tests, demos and benchmarks.

Each class is an appearance family — a base colour plus one of several
textures (flat, stripes at a class-specific angle and period, checkerboard,
dots, grain, smooth gradient) — rendered with per-object colour jitter and
pixel noise, so that telling classes apart takes colour *and* texture and
segments have to be grouped across objects, as with real "stuff" and "things".
Every image has a two-region background (a "horizon" between two stuff
classes) and several foreground objects (ellipses, rectangles, triangles) that
may overlap.

A class's appearance is a function of its *appearance id*; label ``c`` is
drawn with id ``c + class_offset``. Evaluation sets use offset 0 (ids from 0);
the benchmark's proxy backbone (``scripts/make_proxy_backbone.py``) is
pretrained on :data:`PRETRAIN_CLASS_OFFSET` and up, so it never sees an
evaluation class: every id from 64 differs from each of ids 0..7 in texture
kind or texture geometry (angle, period), and the nearest hue with the same
texture kind is 14° away (golden-ratio hue steps).

Layout written (what :class:`segeig.data.CustomDataset` reads)::

    ROOT/images/{train,val}/synth_00000.png      RGB
    ROOT/annotations/{train,val}/synth_00000.png uint8 class ids (255 = ignore)
    ROOT/classes.txt                             one class name per line
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segeig.atomic import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["PRETRAIN_CLASS_OFFSET", "TEXTURES", "class_names", "make_synthetic_dataset",
           "random_shape", "render_sample", "save_png", "write_custom_dataset"]

TEXTURES = ("flat", "stripes", "checker", "dots", "grain", "gradient")
_GOLDEN = 0.618033988749895
#: First appearance id of the classes a proxy backbone is pretrained on
#: (evaluation sets use ids below it).
PRETRAIN_CLASS_OFFSET = 64


def class_names(n_classes: int, class_offset: int = 0) -> list[str]:
    """Names written to classes.txt: ``"c03-checker"`` etc. (appearance id and texture)."""
    ids = range(class_offset, class_offset + n_classes)
    return [f"c{c:02d}-{TEXTURES[c % len(TEXTURES)]}" for c in ids]


def _class_colour(c: int) -> np.ndarray:
    # Golden-ratio hue steps keep consecutive classes far apart; saturation and
    # value cycle so that classes sharing a hue region still differ.
    hue = (c * _GOLDEN) % 1.0
    sat, val = ((0.75, 0.85), (0.45, 0.95), (0.9, 0.55))[c % 3]
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0


def _texture(c: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Brightness modulation in about [-1, 1] for class ``c``, ``H×W`` float32."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = TEXTURES[c % len(TEXTURES)]
    # Class-specific geometry; a random phase so objects are not pixel copies.
    angle = np.pi * ((c * 0.37) % 1.0)
    period = 6.0 + 3.0 * (c % 4)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        t = xx * np.cos(angle) + yy * np.sin(angle)
        return np.sign(np.sin(2 * np.pi * t / period + phase)).astype(np.float32)
    if kind == "checker":
        a = np.floor((xx + phase) / period) + np.floor((yy + phase) / period)
        return (2.0 * (a % 2) - 1.0).astype(np.float32)
    if kind == "dots":
        d = (np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase))
        return np.where(d > 0.5, 1.0, -0.4).astype(np.float32)
    if kind == "grain":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    if kind == "gradient":
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        return (2.0 * t - 1.0).astype(np.float32)
    return np.zeros(shape, np.float32)


def random_shape(mask: np.ndarray, rng: np.random.Generator,
                 radius: tuple[float, float] | None = None) -> None:
    """Draw one filled ellipse, rectangle or triangle (value 1) into ``mask``.

    ``radius``: ``(ry, rx)`` half-extents in pixels; ``None`` draws each in
    ``[side/10, side/3)``.
    """
    h, w = mask.shape
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    if radius is None:
        ry = int(rng.integers(max(2, h // 10), max(3, h // 3)))
        rx = int(rng.integers(max(2, w // 10), max(3, w // 3)))
    else:
        ry, rx = max(2, round(radius[0])), max(2, round(radius[1]))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        cv2.ellipse(mask, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        cv2.rectangle(mask, (cx - rx, cy - ry), (cx + rx, cy + ry), 1, -1)
    else:
        pts = np.stack([rng.integers(cx - rx, cx + rx + 1, 3),
                        rng.integers(cy - ry, cy + ry + 1, 3)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)


def render_sample(rng: np.random.Generator, size: tuple[int, int], n_classes: int,
                  n_objects: tuple[int, int] = (2, 5), noise: float = 8.0,
                  ignore_width: int = 0, class_offset: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Render one image and its label map.

    Args:
        rng: random generator (the sample is a deterministic function of it).
        size: ``(H, W)``.
        n_classes: number of classes C ≥ 2.
        n_objects: inclusive range of foreground objects per image.
        noise: std of the per-pixel Gaussian noise (0-255 units).
        ignore_width: pixels of 255 (ignore) drawn along class boundaries
            (0 = none), like the VOC annotation style.
        class_offset: label ``c`` is drawn with the appearance of class id
            ``c + class_offset`` (labels stay in ``[0, C)``).

    Returns:
        ``(image H×W×3 uint8 RGB, label H×W uint8 in [0, C) or 255)``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    h, w = size
    label = np.empty((h, w), np.uint8)
    # Background: two stuff classes split by a slanted "horizon".
    top, bottom = rng.choice(n_classes, 2, replace=False)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = h * rng.uniform(0.3, 0.7) + (xx - w / 2) * rng.uniform(-0.3, 0.3)
    label[:] = np.where(yy < horizon, top, bottom)
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        mask = np.zeros((h, w), np.uint8)
        random_shape(mask, rng)
        label[mask.astype(bool)] = rng.integers(0, n_classes)
    image = np.zeros((h, w, 3), np.float32)
    for c in np.unique(label):
        region = label == c
        # Per-image jitter of the class colour: the same class must be
        # recognised despite lighting changes.
        colour = _class_colour(int(c) + class_offset) * rng.uniform(0.85, 1.15)
        tex = _texture(int(c) + class_offset, (h, w), rng)[region]
        image[region] = colour + 40.0 * tex[:, None]
    image += rng.normal(0.0, noise, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if ignore_width > 0:
        edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        if ignore_width > 1:
            edges = cv2.dilate(edges.astype(np.uint8),
                               np.ones((ignore_width, ignore_width), np.uint8)) > 0
        label[edges] = 255
    return image, label


def save_png(array: np.ndarray, path: Path) -> None:
    # Atomic: a reader (or a crashed run) never sees a half-written file.
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def write_custom_dataset(
    root: str | os.PathLike,
    names: list[str],
    n_train: int,
    n_val: int,
    render: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
    stem: str,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write a labelled set in the ``custom`` layout from a per-image renderer.

    Args:
        root: output folder (created; existing files of the same names are replaced).
        names: class names, written to ``classes.txt``.
        n_train, n_val: images per split (a split with 0 images is not created).
        render: ``render(split, index) -> (image H×W×3 uint8, label H×W uint8)``.
        stem: file names are ``{stem}_{index:05d}.png``.
        progress: optional iterable wrapper (e.g. ``tqdm``) over the images.

    Returns:
        ``root`` as a Path.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"image counts must be >= 0, got {n_train}, {n_val}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
    for split in {s for s, _ in jobs}:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for split, i in progress(jobs) if progress is not None else jobs:
        image, label = render(split, i)
        name = f"{stem}_{i:05d}.png"
        save_png(image, root / "images" / split / name)
        save_png(label, root / "annotations" / split / name)
    return root


def make_synthetic_dataset(
    root: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 8,
    size: int | tuple[int, int] = 96,
    n_classes: int = 6,
    seed: int = 0,
    *,
    size_jitter: float = 0.0,
    ignore_width: int = 0,
    class_offset: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write a synthetic dataset in the ``custom`` layout (see module docstring).

    Args:
        root: output folder (created; existing files of the same names are replaced).
        n_train, n_val: images per split (a split with 0 images is not created).
        size: ``(H, W)`` or ``S`` for ``S×S``.
        n_classes: number of classes C, 2 ≤ C ≤ 255.
        seed: everything is a deterministic function of the seed.
        size_jitter: each side is scaled by a random factor in
            ``[1 − size_jitter, 1 + size_jitter]`` (varied sizes, e.g. for the
            ``native`` protocol).
        ignore_width, class_offset: see :func:`render_sample`.
        progress: optional iterable wrapper (e.g. ``tqdm``) over the images.

    Returns:
        ``root`` as a Path.
    """
    if not 2 <= n_classes <= 255:
        raise ValueError(f"n_classes must be in [2, 255], got {n_classes}")
    height, width = (size, size) if isinstance(size, int) else size

    def render(split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        # One generator per image, seeded by (seed, split, index): any image can
        # be regenerated alone and splits do not depend on each other's sizes.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        scale = rng.uniform(1 - size_jitter, 1 + size_jitter, 2) if size_jitter else (1, 1)
        shape = (max(8, round(height * scale[0])), max(8, round(width * scale[1])))
        return render_sample(rng, shape, n_classes, ignore_width=ignore_width,
                             class_offset=class_offset)

    root = write_custom_dataset(root, class_names(n_classes, class_offset), n_train, n_val,
                                render, "synth", progress)
    logger.info("wrote %d train and %d val synthetic images (%d classes) to %s",
                n_train, n_val, n_classes, root)
    return root
