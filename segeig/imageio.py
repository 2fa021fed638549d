"""Images and label maps in and out of files.

Everything that enters segeig from disk goes through :func:`read_image` (photos,
any common format and mode -> ``uint8`` RGB) or :func:`read_label` (a dataset's
annotation PNGs -> raw ``uint8`` class indices). Failures raise :class:`ImageReadError`,
a ``ValueError`` whose message names the file, what was wrong and what to do.

Segment maps that segeig writes go through :func:`save_segments` (palette PNG up
to 256 ids, 16-bit greyscale PNG above, written atomically) and come back with
:func:`read_segments`. Which *files* count as images is :mod:`segeig.data.files`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segeig.atomic import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PALETTE_SEGMENTS",
    "MAX_SEGMENTS",
    "ImageReadError",
    "read_image",
    "read_label",
    "read_segments",
    "save_segments",
]

#: Up to this many segment ids, segment maps are palette ("P") PNGs.
MAX_PALETTE_SEGMENTS = 256
#: Above MAX_PALETTE_SEGMENTS, 16-bit greyscale PNGs hold up to this many ids.
MAX_SEGMENTS = 65536

#: Default decompression-bomb guard: 2**27 pixels (about 11585 x 11585). Far above
#: any photo a ViT would see, small enough to decode (384 MiB as RGB), and below
#: PIL's own hard limit so that segeig's check, with its clearer error, fires first.
DEFAULT_MAX_PIXELS: int = 2**27

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

    def __reduce__(self):  # keep the exception picklable across DataLoader workers
        return (type(self), (self.path, self.reason, self.hint))


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """Open and fully decode ``path`` with PIL, mapping every failure to ImageReadError."""
    if not path.exists():
        raise ImageReadError(path, "file does not exist", "check the path and the dataset root")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file", "pass an image file, not a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)", "re-download or re-export it")
    try:
        # PIL only warns between its soft and hard limits; we enforce our own
        # limit below from the header size, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            try:
                if max_pixels is not None and im.width * im.height > max_pixels:
                    raise ImageReadError(
                        path,
                        f"{im.width}x{im.height} = {im.width * im.height} pixels exceeds "
                        f"max_pixels={max_pixels} (decompression-bomb guard)",
                        "downscale the image or pass a larger max_pixels",
                    )
                # Image.open is lazy: without load() a truncated file "opens" fine
                # and only fails (or is silently padded) much later.
                im.load()
            except BaseException:
                im.close()  # don't leak the file handle of a rejected image
                raise
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            path, f"PIL refused it as a decompression bomb ({e})",
            "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is legitimate",
        ) from e
    except UnidentifiedImageError as e:
        raise ImageReadError(
            path, "not a recognised image format (corrupt, or not an image)",
            "re-download it or convert it to PNG/JPEG",
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # OSError covers "image file is truncated" and decoder errors.
        raise ImageReadError(path, f"decoding failed ({e})", "the file is probably truncated "
                             "or corrupt; re-download or re-export it") from e
    return im


def _png_is_16bit_colour(path: Path) -> bool:
    """True for a 16-bit RGB/RGBA PNG, which PIL silently truncates to 8 bit.

    Reads only the IHDR chunk: bytes 24 (bit depth) and 25 (colour type).
    """
    with open(path, "rb") as f:
        head = f.read(26)
    return (
        len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR"
        and head[24] == 16 and head[25] in (2, 6)
    )


def _tiff_is_16bit_colour(im: Image.Image) -> bool:
    bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample, one entry per channel
    return im.mode in ("RGB", "RGBA") and isinstance(bits, tuple) and max(bits) > 8


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite float RGB [...,3] in [0,1] over white with alpha [...] in [0,1] -> same."""
    a = alpha[..., None]
    return rgb * a + (1.0 - a)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _read_16bit_colour(path: Path, orientation: int) -> np.ndarray:
    """Full-depth read of a 16-bit colour PNG/TIFF through OpenCV, scaled to uint8."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR(A), no EXIF handling
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageReadError(path, "OpenCV could not decode the 16-bit colour image")
    scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    x = arr.astype(np.float32) / scale
    rgb = x[..., 2::-1]
    if arr.shape[2] == 4:
        rgb = _on_white(rgb, x[..., 3])
    return np.ascontiguousarray(_orient(_to_uint8(rgb), orientation))


def _int_to_unit(a: np.ndarray) -> np.ndarray:
    """Scale a single-channel int/float array to float [0,1].

    Integer data that fits 16 bit is treated as 16-bit (0..65535 -> 0..1), the
    overwhelmingly common case (16-bit PNG/TIFF); floats already in [0,1] are
    kept; anything else is min-max stretched, since it has no defined range.
    """
    is_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if is_float and lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0 and hi <= 65535 and (not is_float or np.all(a == np.floor(a))):
        return a / 65535.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_exif: bool = True,
) -> np.ndarray:
    """Read any common image file as RGB.

    Handles JPEG/PNG/WebP/BMP/TIFF; greyscale ("1", "L", 16/32-bit "I;16"/"I",
    float "F"), palette ("P", with or without transparency), RGBA/LA/PA, CMYK,
    YCbCr/LAB/HSV; 16-bit colour PNG/TIFF are read at full depth with OpenCV and
    scaled (``round(v / 257)``, so 65535 -> 255), never clipped or truncated.
    Transparent images are composited **over white**: transparent pixels often
    hold arbitrary colour, and white is what a viewer shows for them. Multi-frame
    files (GIF-like TIFF) yield their first frame.

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (checked from
            the header before decoding); ``None`` disables segeig's check (PIL's
            own hard limit, ``PIL.Image.MAX_IMAGE_PIXELS * 2``, still applies).
        apply_exif: rotate/flip according to the EXIF orientation tag, as a
            photo viewer would. Set False to get the stored pixel grid.

    Returns:
        ``np.ndarray`` of shape [H, W, 3], dtype uint8, values 0..255, RGB order,
        C-contiguous. H, W are after EXIF orientation.

    Raises:
        ImageReadError: missing, empty, unreadable, truncated or too large file.
    """
    path = Path(path)
    # Context manager: multi-frame files keep their handle open after load().
    with _open(path, max_pixels) as im:
        try:
            return _to_rgb(path, im, apply_exif)
        except (ValueError, OSError) as e:
            if isinstance(e, ImageReadError):
                raise
            raise ImageReadError(path, f"conversion to RGB failed ({e})",
                                 "convert it to an 8-bit RGB PNG or JPEG") from e


def _to_rgb(path: Path, im: Image.Image, apply_exif: bool) -> np.ndarray:
    orientation = 1
    if apply_exif:
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # broken EXIF must not cost the pixels
            logger.warning("ignoring unreadable EXIF data in %s", path)

    suffix = path.suffix.lower()
    if (suffix == ".png" and _png_is_16bit_colour(path)) or (
        suffix in (".tif", ".tiff") and _tiff_is_16bit_colour(im)
    ):
        return _read_16bit_colour(path, orientation)

    if orientation != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:
            logger.warning("could not apply EXIF orientation %d to %s", orientation, path)

    mode = im.mode
    if mode == "RGB":
        out = np.asarray(im)
    elif mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16S, I, ...
        out = np.repeat(_to_uint8(_int_to_unit(np.asarray(im)))[..., None], 3, axis=2)
    elif mode in ("1", "L", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        out = np.asarray(im.convert("RGB"))
    else:
        # Anything that may carry transparency: RGBA, LA, PA, RGBa, La, P (tRNS).
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        out = _to_uint8(_on_white(rgba[..., :3], rgba[..., 3]))
    if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:
        raise ImageReadError(path, f"unsupported image mode {mode!r}", "convert it to RGB PNG")
    return np.ascontiguousarray(out)


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a segmentation label image as raw class indices.

    Palette ("P") PNGs yield their palette **indices** (never colours); "L"
    yields its grey values; "1" yields 0/1; 16/32-bit greyscale is accepted if
    every value fits in 0..255; an RGB file is accepted only if its three
    channels are equal (greyscale saved as RGB). No EXIF orientation is applied:
    label maps are pixel grids, not photos.

    Returns:
        ``np.ndarray`` of shape [H, W], dtype uint8, raw ids exactly as stored
        (dataset classes map them to training ids / 255 ignore).

    Raises:
        ImageReadError: unreadable file, or colour-coded / out-of-range labels.
    """
    path = Path(path)
    with _open(path, DEFAULT_MAX_PIXELS) as im:
        return _label_indices(path, im)


def _label_indices(path: Path, im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "L"):
        return np.array(im, dtype=np.uint8)
    if mode == "1":
        return np.array(im, dtype=np.uint8)
    if mode in ("LA", "PA"):
        return np.array(im.getchannel(0), dtype=np.uint8)
    if mode.startswith("I"):
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageReadError(
                path, f"label values span {a.min()}..{a.max()}, outside uint8 0..255",
                "segeig labels are uint8 class ids with 255 = ignore; re-encode the labels",
            )
        return a.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        a = np.asarray(im)
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            return np.ascontiguousarray(a[..., 0])
        raise ImageReadError(
            path, "label is a colour-coded RGB image, not class indices",
            "convert colours to class ids (uint8 'L' or palette PNG, 255 = ignore)",
        )
    raise ImageReadError(path, f"unsupported label image mode {mode!r}",
                         "save labels as 8-bit 'L' or palette PNG")


def save_segments(labels: np.ndarray, path: str | os.PathLike[str], num_segments: int,
                  palette: np.ndarray | None = None) -> None:
    """Write a segment-id map as a PNG, atomically; :func:`read_segments` reads it back.

    With ``num_segments <= 256`` the file is a palette ("P") PNG: pixel values
    are ids, shown in the colours of ``palette`` (default
    :func:`segeig.viz.make_palette`). Every id is a segment, so none is drawn
    as "ignore": id 255 keeps its colour. With more segments (e.g. K = 512) it
    is a 16-bit greyscale PNG whose pixel values are the ids — image viewers
    show it nearly black; look at the overlay instead.

    Args:
        labels: integer ``H×W`` ids in ``[0, num_segments)``.
        path: destination ``.png`` (parent directories are created).
        num_segments: S, the number of ids the method can produce (decides the format).
        palette: uint8 ``S×3`` RGB colours for the palette PNG (first 256 used;
            missing entries black).

    Raises:
        ValueError: ids outside ``[0, num_segments)`` or ``num_segments`` above 65536.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer H×W array, got {labels.dtype} "
                         f"{labels.shape}")
    if not 1 <= num_segments <= MAX_SEGMENTS:
        raise ValueError(f"num_segments must be in [1, {MAX_SEGMENTS}], got {num_segments}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_segments):
        raise ValueError(f"segment ids span {labels.min()}..{labels.max()}, outside "
                         f"[0, {num_segments})")
    if num_segments > MAX_PALETTE_SEGMENTS:
        image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16))
        atomic_write(path, lambda f: image.save(f, format="PNG"))
        return
    if palette is None:
        from segeig.viz import make_palette  # matplotlib; only needed for the default colours

        palette = make_palette(num_segments)
    colours = np.zeros((256, 3), dtype=np.uint8)
    given = np.asarray(palette, dtype=np.uint8)[:256]
    colours[: len(given)] = given
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(colours.tobytes(), rawmode="RGB")  # turns the "L" image into "P"
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def read_segments(path: str | os.PathLike[str]) -> np.ndarray:
    """Segment ids of a map written by :func:`save_segments`, ``H×W`` int32.

    Accepts palette/greyscale 8-bit PNGs (the palette is not applied: values
    are ids) and 16-bit greyscale PNGs. Other modes (e.g. RGB) raise
    ``ValueError``: their colours cannot be turned back into ids unambiguously.
    """
    with Image.open(path) as image:
        if image.mode in ("P", "L") or image.mode.startswith("I"):
            return np.asarray(image).astype(np.int32)
        raise ValueError(f"{path}: expected a palette, 8-bit or 16-bit greyscale label PNG, "
                         f"got mode {image.mode!r}")
