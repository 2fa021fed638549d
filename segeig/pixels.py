"""Pixel arrays to 8-bit RGB: EXIF orientation, alpha over white, deep colour, in bands.

Pure numpy, no file is opened: :mod:`segeig.imageio` decodes files and hands
the arrays here. Every conversion is exact where integers allow it and runs
in bands of rows (:data:`BAND_PIXELS`), so its temporaries stay small
whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "BAND_PIXELS",
    "bgr_to_rgb8",
    "composite_over_white",
    "orient",
    "scale_to_unit",
    "unit_to_uint8",
]

#: Conversions to RGB run in bands of about this many pixels, bounding their
#: temporaries (integer compositing: ~10 MB) whatever the image size.
BAND_PIXELS = 1 << 18


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxWxC array, like ImageOps.exif_transpose."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return np.swapaxes(arr, 0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return np.rot90(arr, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _row_bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about :data:`BAND_PIXELS` pixels covering ``height`` rows."""
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def composite_over_white(rgb: np.ndarray, alpha: np.ndarray, scale: int = 255) -> np.ndarray:
    """Integer RGB [...,3] in [0, scale] over white with alpha [...] in [0, scale] -> uint8.

    ``round((c·a + scale·(scale − a)) / scale)`` rescaled to 0..255, in exact
    integer arithmetic (the same values as compositing in float, without a
    float copy of the image).
    """
    # int32 holds 255·255·2; 16-bit data needs int64.
    wide = np.int32 if scale == 255 else np.int64
    a = alpha.astype(wide)[..., None]
    n = rgb.astype(wide) * a + scale * (scale - a)
    if scale == 255:
        return ((n + 127) // 255).astype(np.uint8)
    # 16-bit: value / scale in [0, scale], then to 8 bit: x * 255 / scale**2.
    den = scale * scale
    return ((n * 255 + den // 2) // den).astype(np.uint8)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any float dtype) -> uint8 ``round(x · 255)``, clipped to 0..255."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def bgr_to_rgb8(arr: np.ndarray) -> np.ndarray:
    """A deep-colour BGR(A) array, as OpenCV decodes it, as uint8 RGB.

    ``arr``: HxWx3 or HxWx4, unsigned integers (e.g. 16 bit: ``round(v / 257)``,
    so 65535 -> 255) or floats in [0, 1]; alpha is composited over white.
    Converted in bands of rows, so the peak is ``arr`` plus the HxWx3 result.
    """
    height, width = arr.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    integer = arr.dtype.kind in "ui"
    top_value = int(np.iinfo(arr.dtype).max) if integer else 1
    for top, bottom in _row_bands(height, width):
        band = arr[top:bottom]
        rgb = band[..., 2::-1]
        if integer:
            if arr.shape[2] == 4:
                out[top:bottom] = composite_over_white(rgb, band[..., 3], top_value)
            else:  # round(v * 255 / max), e.g. v / 257 for 16 bit
                scaled = (rgb.astype(np.int64) * 255 + top_value // 2) // top_value
                out[top:bottom] = scaled.astype(np.uint8)
        else:  # float data in [0, 1]
            x = rgb.astype(np.float32)
            if arr.shape[2] == 4:
                a = band[..., 3:4].astype(np.float32)
                x = x * a + (1.0 - a)
            out[top:bottom] = unit_to_uint8(x)
    return out


def scale_to_unit(a: np.ndarray, lo: float, hi: float, integral: bool) -> np.ndarray:
    """Scale a single-channel int/float band to float [0,1], given whole-image statistics.

    Integer data that fits 16 bit is treated as 16-bit (0..65535 -> 0..1), the
    overwhelmingly common case (16-bit PNG/TIFF); floats already in [0,1] are
    kept; anything else is min-max stretched, since it has no defined range.

    Args:
        a: the band.
        lo, hi: minimum and maximum over the whole image.
        integral: every value of the whole image is a whole number.

    Returns:
        float64, the shape of ``a``.
    """
    is_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    if is_float and lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0 and hi <= 65535 and (not is_float or integral):
        return a / 65535.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
