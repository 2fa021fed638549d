"""What the feature cache is filled from: images (:class:`ImageSource`) and the
renderings of each that it caches (:class:`View`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

__all__ = ["ImageSource", "View"]


@dataclass(frozen=True)
class View:
    """One cached rendering of an image.

    Attributes:
        scale: factor applied to the image at the working resolution.
        flip: mirrored left-right (after rescaling).
    """

    scale: float = 1.0
    flip: bool = False

    def size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size of this view of an ``height×width`` base image."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def render(self, image: np.ndarray) -> np.ndarray:
        """``H×W×3`` uint8 base image → this view (bilinear, as the training rescale)."""
        h, w = self.size(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.flip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


class ImageSource(Protocol):
    """What the cache is filled from: images at their base scale, and who they are."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """``H×W×3`` uint8 RGB image ``index`` at the base scale (the working resolution)."""

    def size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of :meth:`image` (cheap: used to estimate the cache size)."""

    def identity(self, index: int) -> str:
        """A string that changes when image ``index`` changes (name, file size, mtime).

        Part of each part's index: a changed identity makes that part be rebuilt.
        """
