"""Label maps in and out of files: dataset annotations and segeig's segment maps.

A dataset's annotation PNGs come in through :func:`read_label` (raw ``uint8``
class indices; failures raise :class:`segeig.imageio.ImageReadError`, like any
image). Segment maps that segeig writes go through :func:`save_segments`
(palette PNG up to 256 ids, 16-bit greyscale PNG above, written atomically) and
come back with :func:`read_segments`. Photos are :mod:`segeig.imageio`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from segeig.atomic import atomic_write
from segeig.imageio import DEFAULT_MAX_PIXELS, ImageReadError, open_decoded

__all__ = [
    "MAX_PALETTE_SEGMENTS",
    "MAX_SEGMENTS",
    "read_label",
    "read_segments",
    "save_segments",
]

#: Up to this many segment ids, segment maps are palette ("P") PNGs.
MAX_PALETTE_SEGMENTS = 256
#: Above MAX_PALETTE_SEGMENTS, 16-bit greyscale PNGs hold up to this many ids.
MAX_SEGMENTS = 65536


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
    with open_decoded(path, DEFAULT_MAX_PIXELS) as im:
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
