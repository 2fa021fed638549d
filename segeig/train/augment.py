"""Training augmentation (albumentations), mmseg-style.

Pipeline: random rescale of the image by a factor in ``scale`` (relative to
the image's own size, not to the crop) -> pad bottom/right to at least
crop x crop (image with ``fill``, the backbone's mean colour, which is what
inference pads with; mask with 255) -> random crop -> horizontal flip
(p = 0.5) -> photometric distortion modelled on mmseg's PhotoMetricDistortion:
brightness +-32 (p 0.5), contrast x[0.5, 1.5] (p 0.5, randomly before or after
the colour steps), saturation x[0.5, 1.5] (p 0.5), hue +-18 of OpenCV's 0..180
(p 0.5).

Training-only: evaluation resizing/cropping lives with the evaluation code.
"""

from __future__ import annotations

import os
from typing import overload

import albumentations as A
import cv2
import numpy as np
from torch.utils.data import get_worker_info

__all__ = ["TrainTransform", "train_transform"]


def _photometric() -> A.BasicTransform:
    contrast = A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5, p=0.5)
    colour = [
        A.ColorJitter(brightness=0.0, contrast=0.0, saturation=(0.5, 1.5), hue=0.0, p=0.5),
        A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=0, val_shift_limit=0, p=0.5),
    ]
    return A.Sequential([
        # Additive brightness: brightness_by_max makes the shift a fraction of 255.
        A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.0,
                                   brightness_by_max=True, p=0.5),
        A.OneOf([A.Sequential([contrast, *colour]), A.Sequential([*colour, contrast])], p=1.0),
    ])


class TrainTransform:
    """Callable training augmentation; see :func:`train_transform`.

    ``t(image)`` -> image; ``t(image, mask)`` -> (image, mask).

    Args of ``__call__``:
        image: [H, W, 3] uint8 RGB.
        mask: optional [H, W] uint8; padding is filled with 255 (ignore). Passing
            ``np.zeros(image.shape[:2], np.uint8)`` yields a validity map whose
            255 pixels mark padding — useful without labels.

    Returns:
        image [crop, crop, 3] uint8 (and mask [crop, crop] uint8), C-contiguous.
    """

    def __init__(
        self,
        crop: int,
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        photometric: bool = True,
        seed: int | None = None,
        fill: tuple[int, int, int] = (0, 0, 0),
    ):
        if crop <= 0:
            raise ValueError(f"crop must be positive, got {crop}")
        lo, hi = scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
        self.crop, self.scale, self.hflip, self.photometric = crop, (lo, hi), hflip, photometric
        steps: list[A.BasicTransform] = []
        if (lo, hi) != (1.0, 1.0):
            # RandomScale draws factor = 1 + U(lo - 1, hi - 1) and keeps the aspect ratio.
            steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0),
                                       interpolation=cv2.INTER_LINEAR,
                                       mask_interpolation=cv2.INTER_NEAREST, p=1.0))
        steps += [
            A.PadIfNeeded(min_height=crop, min_width=crop, position="top_left",
                          border_mode=cv2.BORDER_CONSTANT, fill=tuple(fill), fill_mask=255),
            A.RandomCrop(height=crop, width=crop),
        ]
        if hflip:
            steps.append(A.HorizontalFlip(p=0.5))
        if photometric:
            steps.append(_photometric())
        self._pipeline = A.Compose(steps, seed=seed)
        self._seeded_pid = os.getpid()

    def _reseed_in_worker(self) -> None:
        # albumentations seeds its generator once, at construction. DataLoader
        # workers are forked copies, so without reseeding every worker would
        # replay the same random crops. Use torch's per-worker seed (derived from
        # torch's base seed, so runs stay reproducible under torch.manual_seed).
        pid = os.getpid()
        if pid == self._seeded_pid:
            return
        info = get_worker_info()
        seed = None if info is None else int(info.seed % 2**32)
        self._pipeline.set_random_seed(seed)
        self._seeded_pid = pid

    def reseed(self, seed: int) -> None:
        """Make the next call's random draws a function of ``seed`` alone.

        Training seeds every sample from (run seed, epoch, position), so the
        augmentation does not depend on which process or DataLoader worker
        draws it, and a resumed run replays exactly the crops it would have
        seen.
        """
        self._pipeline.set_random_seed(int(seed))
        self._seeded_pid = os.getpid()  # a worker must not override this seed

    @overload
    def __call__(self, image: np.ndarray, mask: None = None) -> np.ndarray: ...

    @overload
    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
        self._reseed_in_worker()
        if mask is None:
            return np.ascontiguousarray(self._pipeline(image=image)["image"])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape[:2]}")
        out = self._pipeline(image=image, mask=mask)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])

    def __repr__(self) -> str:
        return (f"TrainTransform(crop={self.crop}, scale={self.scale}, hflip={self.hflip}, "
                f"photometric={self.photometric})")


def train_transform(
    crop: int,
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = True,
    seed: int | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> TrainTransform:
    """Build the training augmentation.

    Args:
        crop: output side length in pixels (480 for Pascal Context, 512 for ADE20K).
        scale: range of the random rescale factor, relative to the input image.
        hflip: random horizontal flip with p = 0.5.
        photometric: mmseg-style brightness/contrast/saturation/hue jitter.
        seed: seed for the main process (DataLoader workers reseed from torch).
        fill: RGB 0..255 of the padding (training passes the backbone's mean
            colour, which is what the backbone pads inference inputs with).

    Returns:
        A :class:`TrainTransform`: ``f(image [H,W,3] uint8) -> [crop,crop,3] uint8``,
        or ``f(image, mask) -> (image, mask)`` with mask padding 255.
    """
    return TrainTransform(crop, scale=scale, hflip=hflip, photometric=photometric, seed=seed,
                          fill=fill)
