"""Reading uploaded images for the web demo, within a decoding budget shared by all requests.

Uploads are checked from their header (at most :data:`MAX_PIXELS` pixels),
then decoded straight to the demo's ``--max-side`` while holding their pixels
of :data:`DECODE_BUDGET`, so concurrent requests bound the server's memory
together. Errors meant for the user are raised as
:class:`segeig.app.logic.UserError` naming the upload by its own name only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from segeig.app.logic import UserError, display_name, safe_message

from segeig.imageio import ImageReadError, image_size, read_image

#: Refuse uploads with more pixels than this before decoding them (~67 MP).
MAX_PIXELS = 1 << 26


class PixelBudget:
    """Bounds the pixels that the demo's request threads decode at once.

    Decoding needs memory in proportion to the pixels decoded (about 7 bytes
    per pixel at the peak of :func:`segeig.imageio.read_image`), so the server
    bounds its memory with one budget shared by all requests.
    A single image larger than the whole budget still gets decoded, alone.

    Args:
        max_pixels: pixels that may be in decoding at once (>= 1).

    Example::

        budget = PixelBudget(2**27)
        with budget.hold(width * height, timeout=30):
            image = read_image(path)
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block.

        Raises:
            TimeoutError: the pixels did not become free within ``timeout`` seconds.
        """
        want = min(max(int(pixels), 1), self.max_pixels)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + want <= self.max_pixels, timeout):
                raise TimeoutError(f"{want} pixels of decoding budget not free within "
                                   f"{timeout} s ({self.in_use} of {self.max_pixels} in use)")
            self.in_use += want
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= want
                self._cond.notify_all()


#: Pixels decoded at once by all requests together. Decoding holds ~7 bytes per
#: pixel until the image is downscaled, so two 67 MP PNG bombs arriving together
#: take turns instead of needing ~1 GB at once; JPEGs decode at reduced size.
DECODE_BUDGET = PixelBudget(MAX_PIXELS)
#: A request waiting longer than this for the decoding budget is turned away.
DECODE_WAIT_S = 60.0


def read_upload(path: str | Path, max_side: int,
                budget: PixelBudget | None = None) -> tuple[np.ndarray, str | None]:
    """Read an uploaded image, downscaled so its longer side is at most ``max_side``.

    The image is decoded straight to that size where the format allows (JPEG)
    and otherwise reduced right after decoding, while holding its pixels of
    ``budget`` (default :data:`DECODE_BUDGET`, shared by all requests).

    Returns:
        ``(image H×W×3 uint8, notice)``; ``notice`` says how the image was
        downscaled, or is None when it was not.

    Raises:
        UserError: the file is not a readable image (the message names the
            upload by its own name only), or the server is too busy decoding.
    """
    name = display_name(path)
    budget = budget or DECODE_BUDGET
    try:
        width, height = image_size(path)
        if width * height > MAX_PIXELS:  # refused from the header, before any decoding
            raise UserError(f"{name}: {width}×{height} pixels is more than this demo reads "
                            f"({MAX_PIXELS} pixels); downscale it first")
        with budget.hold(width * height, timeout=DECODE_WAIT_S):
            image = read_image(path, max_pixels=MAX_PIXELS, max_side=max_side)
    except ImageReadError as err:
        raise UserError(f"{name}: {safe_message(err.reason)}") from err
    except TimeoutError:
        raise UserError(f"{name}: the server is busy reading other images; try again in a "
                        "minute.") from None
    small_h, small_w = image.shape[:2]
    if (small_w > small_h) != (width > height) and width != height:
        width, height = height, width  # EXIF orientation turned it
    if max(height, width) <= max_side:
        return image, None
    notice = (f"{name} was downscaled from {width}×{height} to "
              f"{small_w}×{small_h} (max side {max_side} px)")
    return image, notice
