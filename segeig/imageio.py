"""Images in from files: safe opening and bounded-memory decoding to RGB.

Every photo that enters segeig from disk goes through :func:`read_image` (any
common format and mode -> ``uint8`` RGB). Failures raise :class:`ImageReadError`,
a ``ValueError`` whose message names the file, what was wrong and what to do.
The array conversions after decoding (orientation, alpha, deep colour) are
:mod:`segeig.pixels`.
Label maps (dataset annotations, segment maps segeig writes) are
:mod:`segeig.labelmaps`; which *files* count as images is :mod:`segeig.data.files`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segeig.pixels import (
    BAND_PIXELS,
    bgr_to_rgb8,
    composite_over_white,
    orient,
    scale_to_unit,
    unit_to_uint8,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "image_size",
    "open_decoded",
    "read_image",
]

#: Default decompression-bomb guard: 2**27 pixels (about 11585 x 11585). Far above
#: any photo a ViT would see, small enough to decode (384 MiB as RGB), and below
#: PIL's own hard limit so that segeig's check, with its clearer error, fires first.
DEFAULT_MAX_PIXELS: int = 2**27

#: The formats PIL may open (recognised by content, not by name). PIL knows many
#: more; some run external programs (EPS calls Ghostscript) or rarely used
#: decoders, so anything else is refused before its decoder runs. ("JPEG" also
#: admits the multi-picture JPEGs of phone cameras, which PIL reports as "MPO".)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(ValueError):
    """An image or label file could not be read.

    Attributes:
        path: the offending file.
        reason: what was wrong (human readable, also part of the message).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, hint: str | None = None):
        self.path = Path(path)
        self.reason = reason
        self.hint = hint
        hint = hint or "check the file (open it in an image viewer) or remove it from the dataset"
        super().__init__(f"cannot read image file '{self.path}': {reason}; {hint}")

    def __reduce__(self):  # keep the exception picklable across worker processes
        return (type(self), (self.path, self.reason, self.hint))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist", "check the path and the dataset root")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file", "pass an image file, not a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)", "re-download or re-export it")


def _open_lazy(path: Path) -> Image.Image:
    """``Image.open`` restricted to :data:`ALLOWED_FORMATS`: reads the header only."""
    _check_file(path)
    try:
        # PIL only warns between its soft and hard limits; segeig enforces its
        # own limit from the header size, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.init()  # registers every plugin, so each allowed name is known (MPO, WEBP)
            return Image.open(path, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            path, f"PIL refused it as a decompression bomb ({e})",
            "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is legitimate",
        ) from e
    except UnidentifiedImageError as e:
        raise ImageReadError(
            path, "not a recognised image format (corrupt, not an image, or a format segeig "
            f"does not open: it reads {', '.join(ALLOWED_FORMATS)})",
            "re-download it or convert it to PNG/JPEG",
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(path, f"decoding failed ({e})", "the file is probably "
                             "truncated or corrupt; re-download or re-export it") from e


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` as stored in the file's header; no pixel is decoded.

    Raises:
        ImageReadError: missing, empty or unrecognised file.
    """
    path = Path(path)
    with _open_lazy(path) as im:
        return im.size


def open_decoded(path: Path, max_pixels: int | None,
                 scale: Callable[[int, int], float] | None = None) -> Image.Image:
    """Open and fully decode ``path`` with PIL, mapping every failure to ImageReadError.

    The caller owns (and closes) the returned image; ``max_pixels`` is the
    decompression-bomb guard of :func:`read_image`.

    ``scale(width, height)``, when given, is called with the stored size and
    returns the factor (<= 1) the caller will shrink the image by; JPEGs are
    then decoded at a reduced size (DCT scaling by 1/2, 1/4 or 1/8) that is
    still at least the final size.
    """
    im = _open_lazy(path)
    try:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageReadError(
                path,
                f"{im.width}x{im.height} = {im.width * im.height} pixels exceeds "
                f"max_pixels={max_pixels} (decompression-bomb guard)",
                "downscale the image or pass a larger max_pixels",
            )
        factor = 1.0 if scale is None else scale(im.width, im.height)
        if im.format in ("JPEG", "MPO") and factor < 0.5:
            im.draft(None, (max(1, math.ceil(im.width * factor)),
                            max(1, math.ceil(im.height * factor))))
        # Image.open is lazy: without load() a truncated file "opens" fine
        # and only fails (or is silently padded) much later.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except ImageReadError:
        im.close()
        raise
    except BaseException as e:
        im.close()  # don't leak the file handle of a rejected image
        if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)):
            # OSError covers "image file is truncated" and decoder errors.
            raise ImageReadError(path, f"decoding failed ({e})", "the file is probably "
                                 "truncated or corrupt; re-download or re-export it") from e
        raise
    return im


def _is_16bit_colour(path: Path, im: Image.Image) -> bool:
    """True for a 16-bit RGB/RGBA PNG or TIFF, which PIL silently truncates to 8 bit."""
    if im.format == "PNG":
        # IHDR chunk: bytes 24 (bit depth) and 25 (colour type).
        with open(path, "rb") as f:
            head = f.read(26)
        return (len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR"
                and head[24] == 16 and head[25] in (2, 6))
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample, one entry per channel
        return im.mode in ("RGB", "RGBA") and isinstance(bits, tuple) and max(bits) > 8
    return False


def _read_16bit_colour(path: Path) -> np.ndarray:
    """Full-depth read of a 16-bit colour PNG/TIFF through OpenCV, scaled to uint8 RGB.

    Converted in bands of rows (:func:`segeig.pixels.bgr_to_rgb8`), so the peak
    is the 16-bit array plus the result.
    """
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR(A), no EXIF handling
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageReadError(path, "OpenCV could not decode the 16-bit colour image")
    return bgr_to_rgb8(arr)


def _target_scale(width: int, height: int, max_side: int | None,
                  short_side: int | None) -> float:
    """The factor (<= 1) that brings ``width×height`` within ``max_side`` / ``short_side``."""
    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if short_side is not None:
        scale = min(scale, short_side / min(width, height))
    return scale


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_exif: bool = True,
    max_side: int | None = None,
    short_side: int | None = None,
) -> np.ndarray:
    """Read any common image file as RGB.

    Handles JPEG/PNG/WebP/BMP/TIFF/GIF (:data:`ALLOWED_FORMATS`, recognised by
    content, whatever the file's name; any other format is refused before its
    decoder runs); greyscale ("1", "L", 16/32-bit "I;16"/"I", float "F"),
    palette ("P", with or without transparency), RGBA/LA/PA, CMYK,
    YCbCr/LAB/HSV; 16-bit colour PNG/TIFF are read at full depth with OpenCV and
    scaled (``round(v / 257)``, so 65535 -> 255), never clipped or truncated.
    Transparent images are composited **over white**: transparent pixels often
    hold arbitrary colour, and white is what a viewer shows for them. Multi-frame
    files (GIF-like TIFF) yield their first frame.

    Memory: at most about 7 bytes per decoded pixel at the peak (the decoder's
    buffer plus the result; conversions run in bands of rows, in integers).
    With ``max_side``/``short_side``, JPEGs are decoded directly at a reduced
    size (DCT scaling) and other formats are reduced right after decoding, so
    a caller that works at a smaller size never holds the full-size RGB array.

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (checked from
            the header before decoding); ``None`` disables segeig's check (PIL's
            own hard limit, ``PIL.Image.MAX_IMAGE_PIXELS * 2``, still applies).
        apply_exif: rotate/flip according to the EXIF orientation tag, as a
            photo viewer would. Set False to get the stored pixel grid.
        max_side: downscale (area interpolation, never upscale) so that the
            longer side is at most this many pixels.
        short_side: downscale (never upscale) so that the shorter side is at
            most this many pixels. With both, the smaller result wins.

    Returns:
        ``np.ndarray`` of shape [H, W, 3], dtype uint8, values 0..255, RGB order,
        C-contiguous and writable. H, W are after EXIF orientation and any
        downscaling: ``round(H0·s)``, ``round(W0·s)`` for the full size
        ``H0×W0`` and ``s = min(1, max_side / max(H0, W0), short_side / min(H0, W0))``.

    Raises:
        ImageReadError: missing, empty, unreadable, truncated, too large file,
            or a format outside :data:`ALLOWED_FORMATS`.
    """
    path = Path(path)
    for name, value in (("max_side", max_side), ("short_side", short_side)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    sized = max_side is not None or short_side is not None
    full: tuple[int, int] | None = None

    def scale(width: int, height: int) -> float:
        nonlocal full
        full = (width, height)
        return _target_scale(width, height, max_side, short_side)

    im = open_decoded(path, max_pixels, scale if sized else None)
    target = None  # final size in the stored orientation, (width, height)
    reduce = 1
    if full is not None:
        factor = _target_scale(*full, max_side, short_side)
        if factor < 1.0:
            target = (max(1, round(full[0] * factor)), max(1, round(full[1] * factor)))
            # Box-average by a whole factor while converting, band by band, so the
            # full-size RGB array never exists; the exact size comes after.
            reduce = max(1, min(im.width // target[0], im.height // target[1]))
    try:
        out, turned = _decode_rgb(path, im, apply_exif, reduce)
    except (ValueError, OSError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(path, f"conversion to RGB failed ({e})",
                             "convert it to an 8-bit RGB PNG or JPEG") from e
    finally:
        im.close()  # frees the decoder's buffer before the final copies below
    if target is not None:
        size = target[::-1] if turned else target
        if (out.shape[1], out.shape[0]) != size:
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
    return np.require(out, np.uint8, ["C", "W"])


def _decode_rgb(path: Path, im: Image.Image, apply_exif: bool,
                reduce: int = 1) -> tuple[np.ndarray, bool]:
    """The loaded ``im`` as an oriented uint8 RGB array (see :func:`read_image`), and
    whether the orientation swapped its axes. ``reduce`` > 1 box-averages by that
    factor on the way (16-bit colour files excepted: the caller resizes them)."""
    orientation = 1
    if apply_exif:
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # broken EXIF must not cost the pixels
            logger.warning("ignoring unreadable EXIF data in %s", path)
        if orientation not in range(1, 9):
            logger.warning("ignoring EXIF orientation %d of %s", orientation, path)
            orientation = 1

    if _is_16bit_colour(path, im):
        out = _read_16bit_colour(path)
    else:
        out = _pil_to_rgb(path, im, reduce)
    if orientation != 1:
        out = np.ascontiguousarray(orient(out, orientation))
    return out, orientation >= 5


def _pil_to_rgb(path: Path, im: Image.Image, reduce: int = 1) -> np.ndarray:
    """Convert a decoded PIL image to uint8 RGB, band by band (no full-size temporaries).

    With ``reduce`` > 1 each band is also box-averaged by that factor (PIL's
    ``reduce``; transparent pixels weighted by their alpha), giving
    ``ceil(H / reduce) × ceil(W / reduce)``.
    """
    mode = im.mode
    width, height = im.size
    f = max(1, int(reduce))
    out = np.empty((-(-height // f), -(-width // f), 3), np.uint8)
    # Bands of whole reduction blocks, so each output row comes from one band.
    rows = max(f, BAND_PIXELS // max(width, 1) // f * f)
    bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]

    def shrink(band: Image.Image) -> np.ndarray:
        return np.asarray(band.reduce(f) if f > 1 else band)

    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16S, I, F
        lo, hi = im.getextrema()
        integral = mode != "F" or all(
            np.array_equal(b, np.floor(b))
            for b in (np.asarray(im.crop((0, t, width, u))) for t, u in bands))
        for top, bottom in bands:
            band = np.asarray(im.crop((0, top, width, bottom)))
            grey = unit_to_uint8(scale_to_unit(band, float(lo), float(hi), integral))
            out[top // f : -(-bottom // f)] = shrink(Image.fromarray(grey, "L"))[..., None]
        return out
    if mode not in ("RGB", "1", "L", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA",
                    "PA", "RGBa", "La", "P"):
        raise ImageReadError(path, f"unsupported image mode {mode!r}", "convert it to RGB PNG")
    for top, bottom in bands:
        band = im.crop((0, top, width, bottom))
        rows_out = slice(top // f, -(-bottom // f))
        if mode == "RGB":
            out[rows_out] = shrink(band)
        elif mode in ("1", "L", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            out[rows_out] = shrink(band.convert("RGB"))
        else:
            # Anything that may carry transparency: RGBA, LA, PA, RGBa, La, P (tRNS).
            rgba = shrink(band.convert("RGBA"))
            out[rows_out] = composite_over_white(rgba[..., :3], rgba[..., 3])
    return out
