"""Deterministic image transforms shared by inference and evaluation.

Images are ``H×W×3`` uint8 RGB numpy arrays; label maps ``H×W`` uint8 with 255
meaning "ignore". Training augmentation lives in :mod:`segeig.train.augment`.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from segeig.config import WorkingResolution


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 RGB → ``3×H×W`` float32 in [0, 1]."""
    # np.require copies read-only arrays (e.g. from PIL) that torch would warn about.
    array = np.require(image, requirements=["C", "W"])
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def resize_image(image: np.ndarray, size: tuple[int, int], label: bool = False) -> np.ndarray:
    """Resize to ``size = (H, W)``; the input itself when it already has that size.

    Images use area interpolation when shrinking and bilinear when enlarging;
    label maps (``label=True``) use nearest neighbour so ids are never blended.
    """
    height, width = image.shape[:2]
    if (height, width) == tuple(size):
        return image
    if label:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if size[0] * size[1] < height * width else cv2.INTER_LINEAR
    return cv2.resize(image, (int(size[1]), int(size[0])), interpolation=interp)


def resize_short_side(image: np.ndarray, short: int, label: bool = False) -> np.ndarray:
    """Resize so the shorter side is ``short`` pixels, keeping the aspect ratio
    (interpolation as :func:`resize_image`)."""
    height, width = image.shape[:2]
    scale = short / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_image(image, size, label)


def to_working_resolution(image: np.ndarray, resolution: WorkingResolution | None,
                          label: bool = False) -> np.ndarray:
    """``image`` resized to the size ``resolution`` gives it (itself when already there)."""
    if resolution is None or resolution.short <= 0:
        return image
    return resize_image(image, resolution.size_for(*image.shape[:2]), label)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central ``size×size`` crop (sides shorter than ``size`` are kept whole)."""
    height, width = image.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[top : top + size, left : left + size]


def limit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (area interpolation) so neither side exceeds ``max_side``."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
