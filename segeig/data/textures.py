"""Texture-statistics synthetic datasets: the quality proxy that colour cannot solve.

Each class is a *texture*, defined only by statistics of its brightness pattern:
family (grating, crosshatch, dot lattice, random dots, blobs, streaks), orientation,
scale (period in pixels), regularity (a regular lattice or a randomly warped /
scattered one) and contrast structure (hard two-level or smooth). Colour
carries no class information: every region draws its two colours ("ink" and
"paper") from one palette shared by all classes, so two regions of one class
rarely look alike in colour and two classes often share colours. Objects come
at varied scales (radius from a twelfth to about half the image side, log-uniform)
while a class keeps its texture scale (±10 %), so scale stays a class property.

Appearance ids: evaluation sets draw label ``c`` with the hand-set texture
:data:`EVAL_TEXTURES` ``[c]`` (8 classes); the proxy backbone
(``scripts/make_proxy_backbone.py --family texture``) is pretrained on ids from
:data:`PRETRAIN_TEXTURE_OFFSET` on, random textures of the same families that are
rejected when close to any evaluation texture (same family with orientation
within 20° and period within a factor 1.3), so the backbone never sees an
evaluation class.

The layout written is the ``custom`` one (see :mod:`segeig.data.synthetic`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segeig.data.synthetic import random_shape, write_custom_dataset

logger = logging.getLogger(__name__)

__all__ = ["EVAL_TEXTURES", "PRETRAIN_TEXTURE_OFFSET", "TextureClass", "make_texture_dataset",
           "render_texture_sample", "texture_class", "texture_names"]

FAMILIES = ("grating", "crosshatch", "lattice", "scatter", "blobs", "streaks")

#: One palette shared by every class (RGB, 0–255): colour never identifies a class.
PALETTE = np.array([
    (200, 60, 50), (230, 150, 40), (220, 210, 90), (90, 170, 70), (50, 120, 90),
    (60, 160, 190), (50, 80, 170), (120, 70, 160), (190, 100, 150), (140, 100, 60),
    (235, 230, 220), (40, 40, 45),
], dtype=np.float32)

#: First appearance id of the proxy backbone's pretraining textures.
PRETRAIN_TEXTURE_OFFSET = 64


@dataclass(frozen=True)
class TextureClass:
    """The statistics that define one class.

    Attributes:
        family: one of :data:`FAMILIES`.
        angle: orientation in degrees, [0, 180) (unused by isotropic families).
        period: characteristic scale in pixels at the rendered size.
        irregular: randomly warped (gratings) or scattered (dots) instead of regular.
        hard: two-level contrast instead of smooth.
        duty: fraction of "ink" in two-level patterns, (0, 1).
    """

    family: str
    angle: float
    period: float
    irregular: bool
    hard: bool
    duty: float = 0.5

    @property
    def name(self) -> str:
        """``"grating-a45-p8-reg-hard"`` etc."""
        return (f"{self.family}-a{round(self.angle)}-p{round(self.period)}-"
                f"{'irr' if self.irregular else 'reg'}-{'hard' if self.hard else 'soft'}")


#: The evaluation classes: pairs differ in one statistic (orientation, scale,
#: regularity or contrast structure), so telling them apart takes texture.
EVAL_TEXTURES = (
    TextureClass("grating", 0.0, 9.0, False, True),
    TextureClass("grating", 60.0, 9.0, False, True),
    TextureClass("grating", 120.0, 18.0, True, False),
    TextureClass("lattice", 0.0, 11.0, False, True, 0.3),
    TextureClass("scatter", 0.0, 11.0, True, True, 0.3),
    TextureClass("blobs", 0.0, 7.0, True, True),
    TextureClass("streaks", 90.0, 14.0, True, True),
    TextureClass("crosshatch", 30.0, 12.0, False, True, 0.35),
)


def _too_close(a: TextureClass, b: TextureClass) -> bool:
    if a.family != b.family:
        return False
    isotropic = a.family in ("scatter", "blobs")
    turn = abs(a.angle - b.angle) % 180.0
    near_angle = isotropic or min(turn, 180.0 - turn) < 20.0
    return near_angle and max(a.period, b.period) / min(a.period, b.period) < 1.3


def texture_class(appearance_id: int) -> TextureClass:
    """The texture of an appearance id (:data:`EVAL_TEXTURES` below the offset)."""
    if appearance_id < PRETRAIN_TEXTURE_OFFSET:
        return EVAL_TEXTURES[appearance_id % len(EVAL_TEXTURES)]
    rng = np.random.default_rng([7919, appearance_id])
    while True:  # rejection: never a texture close to an evaluation class
        candidate = TextureClass(
            family=FAMILIES[int(rng.integers(len(FAMILIES)))],
            angle=float(rng.integers(0, 12) * 15.0),
            period=float(np.exp(rng.uniform(np.log(5.0), np.log(22.0)))),
            irregular=bool(rng.integers(2)), hard=bool(rng.integers(2)),
            duty=float(rng.uniform(0.25, 0.6)))
        if not any(_too_close(candidate, e) for e in EVAL_TEXTURES):
            return candidate


def texture_names(n_classes: int, class_offset: int = 0) -> list[str]:
    """Names for classes.txt: ``"t03-lattice-a0-p11-reg-hard"`` etc."""
    return [f"t{c:02d}-{texture_class(c + class_offset).name}"
            for c in range(class_offset, class_offset + n_classes)]


def _warp(shape: tuple[int, int], period: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement field (pixels, about ±period/2), ``H×W`` float32."""
    noise = rng.normal(0.0, 1.0, shape).astype(np.float32)
    sigma = 2.0 * period
    field = cv2.GaussianBlur(noise, (0, 0), sigma)
    return field / max(float(field.std()), 1e-6) * period * 0.35


def _band_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator,
                angle: float | None = None) -> np.ndarray:
    """Zero-mean, unit-variance noise with structure at ``scale`` px; along ``angle`` if given."""
    noise = rng.normal(0.0, 1.0, shape).astype(np.float32)
    if angle is None:
        out = cv2.GaussianBlur(noise, (0, 0), scale / 2.5) - cv2.GaussianBlur(noise, (0, 0), scale)
    else:  # streaks: a line kernel of length ~2·scale at the orientation
        length = max(3, int(round(2.0 * scale)) | 1)
        kernel = np.zeros((length, length), np.float32)
        c = length // 2
        dx, dy = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        cv2.line(kernel, (int(round(c - dx * c)), int(round(c - dy * c))),
                 (int(round(c + dx * c)), int(round(c + dy * c))), 1.0, 1)
        out = cv2.filter2D(cv2.GaussianBlur(noise, (0, 0), 1.0), -1, kernel / kernel.sum())
    return out / max(float(out.std()), 1e-6)


def _two_level(signal: np.ndarray, duty: float, hard: bool) -> np.ndarray:
    """Map a signal to [0, 1] ink coverage: a quantile threshold (hard) or a soft ramp."""
    level = float(np.quantile(signal, 1.0 - duty))
    if hard:
        return (signal >= level).astype(np.float32)
    spread = max(float(signal.std()), 1e-6)
    return (1.0 / (1.0 + np.exp(-(signal - level) / (0.35 * spread)))).astype(np.float32)


def render_texture(t: TextureClass, shape: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Ink coverage of texture ``t`` over an ``H×W`` canvas, float32 in [0, 1]."""
    h, w = shape
    period = t.period * rng.uniform(0.9, 1.1)
    angle = np.deg2rad(t.angle + rng.uniform(-4.0, 4.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if t.family in ("grating", "crosshatch"):
        phase = rng.uniform(0, 2 * np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        if t.irregular:
            u = u + _warp(shape, period, rng)
        wave = np.sin(2 * np.pi * u / period + phase)
        if t.family == "crosshatch":
            v = -xx * np.sin(angle) + yy * np.cos(angle)
            wave = np.maximum(wave, np.sin(2 * np.pi * v / period + rng.uniform(0, 2 * np.pi)))
        return _two_level(wave, t.duty, t.hard)
    if t.family in ("lattice", "scatter"):
        canvas = np.zeros(shape, np.float32)
        radius = max(1.0, period * np.sqrt(t.duty / np.pi))
        if t.family == "lattice":
            ox, oy = rng.uniform(0, period, 2)
            cy, cx = np.mgrid[oy - period:h + period:period, ox - period:w + period:period]
            centres = np.stack([cx.ravel(), cy.ravel()], 1)
        else:  # Poisson dots at the same mean density
            n = rng.poisson((h + 2 * period) * (w + 2 * period) / period ** 2)
            centres = rng.uniform((-period, -period), (w + period, h + period), (n, 2))
        for x, y in centres:
            cv2.circle(canvas, (int(round(x)), int(round(y))), int(round(radius)), 1.0, -1)
        if not t.hard:
            canvas = cv2.GaussianBlur(canvas, (0, 0), radius / 2)
            canvas = canvas / max(float(canvas.max()), 1e-6)
        return canvas
    signal = _band_noise(shape, period, rng,
                         angle=np.rad2deg(angle) if t.family == "streaks" else None)
    return _two_level(signal, t.duty, t.hard)


def _region_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ink, paper = rng.choice(len(PALETTE), 2, replace=False)
    gain = rng.uniform(0.85, 1.15)  # lighting
    return PALETTE[ink] * gain, PALETTE[paper] * gain


def render_texture_sample(rng: np.random.Generator, size: tuple[int, int], n_classes: int,
                          n_objects: tuple[int, int] = (2, 5), noise: float = 6.0,
                          class_offset: int = 0, nuisance: float = 0.0,
                          background: tuple[int, int] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Render one image and its label map.

    A two-region background split by a slanted horizon, then ``n_objects``
    ellipses, rectangles or triangles of random classes at varied scales; every
    region (background part or object) gets its own palette colours.

    Args:
        rng: random generator (the sample is a deterministic function of it).
        size: ``(H, W)``.
        n_classes: number of classes C ≥ 2.
        n_objects: inclusive range of foreground objects.
        noise: std of the per-pixel Gaussian noise (0–255 units).
        class_offset: label ``c`` is drawn as appearance id ``c + class_offset``.
        nuisance: in [0, 1], how much appearance varies within a class: each
            region's contrast drops by up to 65 %·nuisance and it is blurred by
            up to 1.5·nuisance px, a shading gradient of ±30 %·nuisance crosses
            the image, and pixel noise grows by 8·nuisance.
        background: the classes above and below the horizon (default: two
            distinct random classes).

    Returns:
        ``(image H×W×3 uint8 RGB, label H×W uint8 in [0, C))``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = h * rng.uniform(0.3, 0.7) + (xx - w / 2) * rng.uniform(-0.4, 0.4)
    top, bottom = rng.choice(n_classes, 2, replace=False) if background is None else background
    regions = [(yy < horizon, int(top)), (yy >= horizon, int(bottom))]
    label = np.where(regions[0][0], top, bottom).astype(np.uint8)
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        mask = np.zeros((h, w), np.uint8)
        side = min(h, w)
        radius = float(np.exp(rng.uniform(np.log(side / 12), np.log(side / 2.2))))
        random_shape(mask, rng, radius=(radius, radius * rng.uniform(0.6, 1.4)))
        cls = int(rng.integers(0, n_classes))
        regions.append((mask.astype(bool), cls))
        label[mask.astype(bool)] = cls
    image = np.zeros((h, w, 3), np.float32)
    painted = np.zeros((h, w), bool)
    for mask, cls in reversed(regions):  # top-most first; later (lower) regions fill the rest
        visible = mask & ~painted
        if not visible.any():
            continue
        ink, paper = _region_colours(rng)
        coverage = render_texture(texture_class(cls + class_offset), (h, w), rng)
        if nuisance > 0:
            ink = paper + (ink - paper) * rng.uniform(1.0 - 0.65 * nuisance, 1.0)
            blur = rng.uniform(0.0, 1.5 * nuisance)
            if blur > 0.3:
                coverage = cv2.GaussianBlur(coverage, (0, 0), blur)
        image[visible] = paper + (ink - paper) * coverage[visible][:, None]
        painted |= visible
    if nuisance > 0:  # lighting: a linear shading ramp in a random direction
        direction = rng.uniform(0, 2 * np.pi)
        ramp = ((xx - w / 2) * np.cos(direction) + (yy - h / 2) * np.sin(direction)) / max(h, w)
        image *= (1.0 + 0.6 * nuisance * ramp)[..., None]
    image += rng.normal(0.0, noise + 8.0 * nuisance, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _balanced_pairs(n_classes: int, n_images: int, seed: list[int]) -> list[tuple[int, int]]:
    """Background (top, bottom) class pairs for a split: every ordered pair once per
    cycle, in a random order, so each class covers about the same area in every
    set (the set-to-set spread of a score then reflects the method, not which
    classes a draw happened to favour)."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for a in range(n_classes) for b in range(n_classes) if a != b]
    out: list[tuple[int, int]] = []
    while len(out) < n_images:
        out += [pairs[j] for j in rng.permutation(len(pairs))]
    return out[:n_images]


def make_texture_dataset(
    root: str | os.PathLike,
    n_train: int = 120,
    n_val: int = 40,
    size: int | tuple[int, int] = 320,
    n_classes: int = 8,
    seed: int = 0,
    *,
    class_offset: int = 0,
    nuisance: float = 1.0,
    val_seed: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write a texture dataset in the ``custom`` layout.

    Args:
        root: output folder (created; files of the same names are replaced).
        n_train, n_val: images per split (a split with 0 images is not created).
        size: ``(H, W)`` or ``S`` for ``S×S``.
        n_classes: number of classes C, 2 ≤ C ≤ len(EVAL_TEXTURES) with offset 0.
        seed: everything is a deterministic function of the seed.
        class_offset: appearance id of label 0 (see module docstring).
        nuisance: within-class appearance variation (:func:`render_texture_sample`);
            the proxy's sets use 1, the proxy backbone was pretrained on 0.
        val_seed: seed of the validation split (default ``seed``): the quality
            proxy keeps one validation set and varies the training set and run
            with ``seed``, so every method is scored on the same images.
        progress: optional iterable wrapper (e.g. ``tqdm``) over the images.

    Returns:
        ``root`` as a Path.
    """
    limit = len(EVAL_TEXTURES) if class_offset < PRETRAIN_TEXTURE_OFFSET else 255
    if not 2 <= n_classes <= limit:
        raise ValueError(f"n_classes must be in [2, {limit}], got {n_classes}")
    height, width = (size, size) if isinstance(size, int) else size
    val_seed = seed if val_seed is None else val_seed
    seeds = {"train": seed, "val": val_seed}
    backgrounds = {"train": _balanced_pairs(n_classes, n_train, [seed, 0, 23]),
                   "val": _balanced_pairs(n_classes, n_val, [val_seed, 1, 23])}

    def render(split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seeds[split], 0 if split == "train" else 1, i, 17])
        return render_texture_sample(rng, (height, width), n_classes,
                                     class_offset=class_offset, nuisance=nuisance,
                                     background=backgrounds[split][i])

    root = write_custom_dataset(root, texture_names(n_classes, class_offset), n_train, n_val,
                                render, "tex", progress)
    logger.info("wrote %d train and %d val texture images (%d classes) to %s",
                n_train, n_val, n_classes, root)
    return root
