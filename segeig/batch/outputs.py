"""Files a batch run writes: label maps, overlays, scores — safely placed, atomic.

Layout under the output directory ``DIR`` for an input with output key ``KEY``
(:attr:`segeig.inputs.InputFile.key`, e.g. ``trip/beach``)::

    DIR/labels/KEY.png      segment ids, same size as the input (see save_segments)
    DIR/overlays/KEY.jpg    colour overlay (optional; .png with overlay_format="png")
    DIR/probs/KEY.npz       patch-grid scores (optional; see save_scores)

Every file goes through :func:`segeig.atomic.atomic_write` (temp name + rename),
and every path through :func:`safe_output_path`, which refuses anything that
would land outside ``DIR``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from segeig.atomic import atomic_write
from segeig.viz import make_palette, overlay, save_palette_png

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_PALETTE_SEGMENTS",
    "MAX_SEGMENTS",
    "OutputPathError",
    "output_paths",
    "read_scores",
    "read_segments",
    "safe_output_path",
    "save_overlay",
    "save_scores",
    "save_segments",
]

#: Up to this many segment ids, label maps are palette ("P") PNGs.
MAX_PALETTE_SEGMENTS = 256
#: Above MAX_PALETTE_SEGMENTS, 16-bit greyscale PNGs hold up to this many ids.
MAX_SEGMENTS = 65536
SUBDIRS = {"labels": "labels", "overlay": "overlays", "probs": "probs"}


class OutputPathError(ValueError):
    """An output path would escape the output directory."""


def safe_output_path(root: str | os.PathLike[str], rel: str) -> Path:
    """``root/rel``, refusing any ``rel`` that could place the file outside ``root``.

    Refused: absolute paths (POSIX or Windows, drive letters included), ``..``
    components, NUL bytes, a destination that is itself a symlink, and any
    existing directory on the way that resolves outside ``root`` (a symlinked
    subfolder pointing elsewhere).

    Args:
        root: output directory (need not exist yet).
        rel: POSIX-style relative path.

    Returns:
        The absolute destination inside ``root.resolve()``.

    Raises:
        OutputPathError: with the offending path and the reason.
    """
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    if not rel or "\0" in rel:
        raise OutputPathError(f"refusing output path {rel!r}: empty or contains NUL")
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise OutputPathError(f"refusing absolute output path {rel!r}")
    if any(part in ("..", "") for part in posix.parts) or ".." in windows.parts:
        raise OutputPathError(f"refusing output path {rel!r}: '..' would leave the output folder")
    base = Path(root).resolve()
    target = base.joinpath(*posix.parts)
    if target.is_symlink():
        raise OutputPathError(f"refusing to write through symlink {target}")
    # resolve() follows any symlinked directory already on the way.
    if not target.parent.resolve().is_relative_to(base):
        raise OutputPathError(
            f"refusing output path {rel!r}: {target.parent} resolves outside {base} "
            "(a symlinked folder inside the output directory?)")
    return target


def output_paths(
    root: str | os.PathLike[str],
    key: str,
    overlay_format: str | None = None,
    probs: bool = False,
) -> dict[str, Path]:
    """Where the outputs of the input with output key ``key`` go.

    Args:
        root: output directory.
        key: :attr:`segeig.inputs.InputFile.key`.
        overlay_format: ``"jpg"`` or ``"png"`` to include the overlay, None to omit it.
        probs: include the scores file.

    Returns:
        ``{"labels": Path, ["overlay": Path], ["probs": Path]}``, all checked by
        :func:`safe_output_path`.
    """
    if overlay_format not in (None, "jpg", "png"):
        raise ValueError(f"overlay_format must be 'jpg' or 'png', got {overlay_format!r}")
    names = {"labels": f"{key}.png"}
    if overlay_format:
        names["overlay"] = f"{key}.{overlay_format}"
    if probs:
        names["probs"] = f"{key}.npz"
    return {kind: safe_output_path(root, f"{SUBDIRS[kind]}/{name}")
            for kind, name in names.items()}


def save_segments(labels: np.ndarray, path: str | os.PathLike[str], num_segments: int,
                  palette: np.ndarray | None = None) -> None:
    """Write a segment-id map as a PNG, atomically; :func:`read_segments` reads it back.

    With ``num_segments <= 256`` the file is a palette ("P") PNG: pixel values
    are ids, shown in the colours of ``palette`` (default :func:`make_palette`).
    With more segments (e.g. K = 512) it is a 16-bit greyscale PNG whose pixel
    values are the ids — image viewers show it nearly black; use the overlay to
    look at it and :func:`read_segments` (or any 16-bit PNG reader) to use it.

    Args:
        labels: integer ``H×W`` ids in ``[0, num_segments)``.
        path: destination ``.png``.
        num_segments: S, the number of ids the method can produce (decides the format).
        palette: uint8 ``S×3`` colours for the palette PNG.

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
    if num_segments <= MAX_PALETTE_SEGMENTS:
        colours = make_palette(num_segments) if palette is None else palette
        # Every id is a segment here: none is "ignore", so 255 keeps its colour.
        save_palette_png(labels.astype(np.uint8), colours, path, ignore_index=None)
        return
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16))
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def read_segments(path: str | os.PathLike[str]) -> np.ndarray:
    """Segment ids of a label map written by :func:`save_segments`, ``H×W`` int32.

    Accepts palette/greyscale 8-bit PNGs (palette ignored) and 16-bit greyscale PNGs.
    """
    with Image.open(path) as image:
        if image.mode in ("P", "L") or image.mode.startswith("I"):
            return np.asarray(image).astype(np.int32)
        raise ValueError(f"{path}: expected a palette, 8-bit or 16-bit greyscale label PNG, "
                         f"got mode {image.mode!r}")


def save_overlay(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike[str],
                 palette: np.ndarray, alpha: float = 0.5) -> None:
    """Write the image blended with segment colours and boundaries (JPEG q90 or PNG by suffix).

    Args:
        image: uint8 ``H×W×3`` RGB.
        labels: integer ``H×W`` ids, indices into ``palette``.
        path: ``.jpg``/``.jpeg`` or ``.png`` destination.
        palette: uint8 ``S×3`` RGB.
        alpha: colour weight in ``[0, 1]``.
    """
    blended = Image.fromarray(overlay(image, labels, palette, alpha=alpha, ignore_index=None))
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        atomic_write(path, lambda f: blended.save(f, format="JPEG", quality=90))
    elif suffix == ".png":
        atomic_write(path, lambda f: blended.save(f, format="PNG"))
    else:
        raise ValueError(f"overlay path must end in .jpg or .png, got {path}")


def save_scores(path: str | os.PathLike[str], scores: np.ndarray, *, patch_size: int,
                image_size: tuple[int, int], method: str) -> None:
    """Write patch-grid scores as a compressed ``.npz``, atomically.

    Stored arrays: ``scores`` float16 ``S×h×w`` (``softmax`` over axis 0 gives
    the segment probabilities of each patch; bilinear upsampling by
    ``patch_size`` and cropping to ``image_size`` then ``argmax`` reproduces the
    label map without CRF, up to float16 rounding), ``patch_size`` int,
    ``image_size`` int ``(H, W)``, ``method`` str. Size: ``2·S·h·w`` bytes before
    compression (0.5 MiB for S = 256 on a 512×512 image at patch 16).
    """
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"scores must be S×h×w, got shape {scores.shape}")
    arrays: dict[str, Any] = {
        "scores": scores.astype(np.float16),
        "patch_size": np.int32(patch_size),
        "image_size": np.asarray(image_size, dtype=np.int32),
        "method": np.str_(method),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_scores(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a :func:`save_scores` file (no pickle).

    Returns:
        ``{"scores": float16 S×h×w, "patch_size": int, "image_size": (H, W), "method": str}``.
    """
    with np.load(path, allow_pickle=False) as data:
        return {
            "scores": data["scores"],
            "patch_size": int(data["patch_size"]),
            "image_size": tuple(int(v) for v in data["image_size"]),
            "method": str(data["method"]),
        }
