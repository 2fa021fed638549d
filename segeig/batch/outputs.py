"""Files a batch run writes: label maps, overlays, scores — safely placed, atomic.

Layout under the output directory ``DIR`` for an input with output key ``KEY``
(:attr:`segeig.batch.inputs.InputFile.key`, e.g. ``trip/beach``)::

    DIR/labels/KEY.png      segment ids, same size as the input (see segeig.labelmaps.save_segments)
    DIR/overlays/KEY.jpg    colour overlay (optional; .png with overlay_format="png"),
                            with a legend of class names below it for class label maps
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
from segeig.viz import overlay, with_legend

logger = logging.getLogger(__name__)

__all__ = [
    "OutputPathError",
    "output_folders",
    "output_paths",
    "read_scores",
    "safe_output_path",
    "save_overlay",
    "save_scores",
]

SUBDIRS = {"labels": "labels", "overlay": "overlays", "probs": "probs"}

#: Pixels of an overlay blended at once (bounds its temporaries to ~40 MB).
_OVERLAY_BAND_PIXELS = 1 << 20


def output_folders() -> list[str]:
    """The subfolders of an output directory that segeig writes images into."""
    return sorted(set(SUBDIRS.values()))


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
        key: :attr:`segeig.batch.inputs.InputFile.key`.
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


def save_overlay(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike[str],
                 palette: np.ndarray, alpha: float = 0.5, ignore_index: int | None = None,
                 legend: np.ndarray | None = None) -> None:
    """Write the image blended with segment colours and boundaries (JPEG q90 or PNG by suffix).

    Args:
        image: uint8 ``H×W×3`` RGB.
        labels: integer ``H×W`` ids, indices into ``palette``.
        path: ``.jpg``/``.jpeg`` or ``.png`` destination.
        palette: uint8 ``S×3`` RGB.
        alpha: colour weight in ``[0, 1]``.
        ignore_index: id left uncoloured (e.g. 255 = unassigned in class maps);
            None colours every id.
        legend: uint8 ``h×w×3`` picture drawn below the overlay (the file is
            then taller than the input), or None.
    """
    height = image.shape[0]
    blended_rows = np.empty_like(image)
    # In bands of rows (plus one row below, which the boundary test reads):
    # overlay's float temporaries cost ~40 bytes per pixel of what it is given.
    step = max(1, _OVERLAY_BAND_PIXELS // max(image.shape[1], 1))
    for top in range(0, height, step):
        bottom = min(top + step, height)
        part = overlay(image[top : bottom + 1], labels[top : bottom + 1], palette, alpha=alpha,
                       ignore_index=ignore_index)
        blended_rows[top:bottom] = part[: bottom - top]
    blended = Image.fromarray(blended_rows if legend is None
                              else with_legend(blended_rows, legend))
    del blended_rows
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
