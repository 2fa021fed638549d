"""Scoring saved label maps of any method (``segeig evaluate --predictions DIR``).

``DIR`` holds one PNG of segment ids per image, named ``KEY.png`` where ``KEY``
is :meth:`segeig.data.SegDataset.key` (the image's path relative to the split's
image folder, without extension; subfolders allowed). A ``segeig segment``
output folder works as is: when ``DIR/labels/`` exists, the maps are read from
there. Only the listed images of the split are scored, each through exactly the
code of a checkpoint evaluation: the protocol sizes the map as it sizes labels
(:func:`segeig.evaluation.protocols.size_label`), and
:meth:`segeig.evaluation.scoring.GridScorer.add_labels` fills the confusion
matrices that every matching and report reads.

Every file is untrusted: PNG only, single channel (8-bit, 16-bit or palette,
whose indices are the ids), the decode bounded by the expected size, no
symbolic links, nothing outside ``DIR``. Each problem is a
:class:`PredictionError` naming the file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from segeig.data import SegDataset
from segeig.evaluation.evaluator import check_dataset, check_segments
from segeig.evaluation.metrics import PER_IMAGE
from segeig.evaluation.protocols import Protocol, prepare, resolve_protocol, size_label
from segeig.evaluation.scoring import EvaluationResult, GridScorer, StageTimer
from segeig.imageio import ImageReadError, image_size, open_decoded

logger = logging.getLogger(__name__)

__all__ = ["MAX_SEGMENTS", "PredictionError", "evaluate_predictions", "prediction_dir",
           "prediction_path", "read_prediction"]

#: Most segment ids a prediction may declare (16-bit PNGs).
MAX_SEGMENTS = 65536
#: PIL modes of single-channel maps: 8-bit grey, palette (indices), 16/32-bit grey.
_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_HINT = ("save one PNG per image of segment ids: single channel, uint8 or uint16 "
         "(or a palette PNG), at the image's size")


class PredictionError(ValueError):
    """A saved prediction is missing, unsafe or unusable; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str, hint: str = _HINT) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"prediction '{self.path}': {reason}; {hint}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def prediction_dir(path: str | os.PathLike[str]) -> Path:
    """The folder the maps are read from: ``DIR/labels`` when it exists (a ``segeig
    segment`` output), else ``DIR``.

    Raises:
        PredictionError: ``DIR`` is not a folder, or ``DIR/labels`` is a symbolic link.
    """
    root = Path(path)
    if not root.is_dir():
        raise PredictionError(root, "not a folder", "pass the folder holding KEY.png files or "
                              "a `segeig segment` output folder")
    labels = root / "labels"
    if labels.is_symlink():
        raise PredictionError(labels, "is a symbolic link (it could lead outside the folder)",
                              "copy the maps into the folder")
    return labels if labels.is_dir() else root


def prediction_path(folder: Path, key: str) -> Path:
    """``folder/KEY.png``, refusing keys that leave the folder and symbolic links on the way.

    Raises:
        PredictionError: absolute key, ``..``, NUL, a symlinked file or subfolder.
    """
    rel = PurePosixPath(f"{key}.png")
    if "\0" in key or "\\" in key or rel.is_absolute() or any(
            part in ("", ".", "..") for part in rel.parts[:-1]):
        raise PredictionError(folder / key, "the image key would leave the predictions folder",
                              "rename the dataset's files")
    path = folder
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise PredictionError(path, "is a symbolic link; predictions must be regular files "
                                  "inside the predictions folder", "copy the file instead")
    if path.exists() and not path.resolve().is_relative_to(folder.resolve()):
        raise PredictionError(path, "resolves outside the predictions folder",
                              "copy the file instead")
    return path


def read_prediction(path: Path, sizes: Iterable[tuple[int, int]]) -> np.ndarray:
    """Segment ids of one saved map, decoded only when its size is one of ``sizes``.

    Args:
        path: the PNG.
        sizes: accepted ``(H, W)`` sizes (the image's; the protocol's prepared one).

    Returns:
        ``H×W`` uint8, uint16 or int32 ids (palette PNGs: their indices).

    Raises:
        PredictionError: unreadable, corrupt or not a PNG, several channels, or
            a size that is none of ``sizes``.
    """
    sizes = list(dict.fromkeys(sizes))
    try:
        width, height = image_size(path)
        if (height, width) not in sizes:
            shown = " or ".join(f"{w}x{h}" for h, w in sizes)
            raise PredictionError(path, f"is {width}x{height} but the image needs {shown} "
                                  "(width x height)")
        with open_decoded(path, width * height) as im:
            if im.format != "PNG":
                raise PredictionError(path, f"is a {im.format} file, not a PNG")
            if im.mode not in _MODES:
                raise PredictionError(path, f"has image mode {im.mode!r}, not a single channel "
                                      "of segment ids")
            return np.asarray(im)
    except ImageReadError as err:
        raise PredictionError(path, f"cannot be read ({err.reason})") from err


def _unlisted_pngs(folder: Path, listed: set[str]) -> int:
    """PNG files under ``folder`` (links not followed) that are no listed image's map."""
    count = 0
    for dirpath, _, files in os.walk(folder, followlinks=False):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        for name in files:
            if name.lower().endswith(".png"):
                key = name[:-4] if rel_dir == "." else f"{rel_dir}/{name[:-4]}"
                count += key not in listed
    return count


def _check_values(pred: np.ndarray, path: Path, n_segments: int) -> None:
    if pred.size == 0:
        return
    low, high = int(pred.min()), int(pred.max())
    if low < 0 or high >= n_segments:
        bad = low if low < 0 else high
        raise PredictionError(path, f"holds segment id {bad}, outside 0..{n_segments - 1} "
                              f"({n_segments} declared segments)",
                              "declare how many segment ids the method predicts (--segments N, "
                              "at least the largest id + 1)")


def evaluate_predictions(
    dataset: SegDataset,
    protocol: Protocol | str | None,
    predictions: str | os.PathLike[str],
    match: str = "auto",
    segments: int | None = None,
    max_images: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    n_examples: int = 8,
) -> EvaluationResult:
    """Score saved label maps of the dataset's listed images (see module docstring).

    Args:
        dataset: labelled dataset with the protocol's classes
            (:func:`segeig.evaluation.protocols.load_eval_dataset`).
        protocol: a :class:`Protocol`, its name, or None for the dataset's default.
        predictions: ``DIR`` (``KEY.png`` files, or a ``segeig segment`` output).
        match: ``auto``, ``hungarian``, ``majority`` or ``hungarian-per-image``.
        segments: segment ids the method predicts (ids ``0..segments-1``);
            default: the number of classes.
        max_images: score only the first N listed images.
        progress: optional ``progress(iterable, total=N)`` wrapper.
        n_examples: keep the first N images for pictures.

    Each map is either at the image's original size or, for protocols scored
    on a crop (``stego``), already at the protocol's size (e.g. the 320×320
    crop that STEGO saves); the first is resized and cropped like the label.

    Returns:
        :class:`EvaluationResult` with method ``"predictions"``, no CRF scores,
        and ``predictions`` = ``{"dir", "original_size", "prepared_size", "ignored"}``.

    Raises:
        PredictionError: a listed image without a map, or a bad map (named).
        ValueError: bad match or segments, wrong dataset for the protocol, no images.
    """
    start = time.perf_counter()
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    if match == "fixed":
        raise ValueError("--match fixed uses a checkpoint's stored class map; saved predictions "
                         "are matched with auto, hungarian, majority or hungarian-per-image")
    n_classes = check_dataset(dataset, protocol, match)
    n_segments = n_classes if segments is None else int(segments)
    if not 1 <= n_segments <= MAX_SEGMENTS:
        raise ValueError(f"segments must be in 1..{MAX_SEGMENTS}, got {n_segments}")
    check_segments("predictions", n_segments, n_classes, match)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {dataset!r} has {len(dataset)} images "
                         f"(max_images={max_images})")
    folder = prediction_dir(predictions)
    keys = [dataset.key(i) for i in range(n)]
    paths = [prediction_path(folder, key) for key in keys]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PredictionError(missing[0], f"missing: {len(missing)} of the {n} listed images "
                              f"have no prediction ({shown}{more})",
                              "name each map KEY.png, KEY = the image's path relative to the "
                              "split's image folder without extension")
    ignored = _unlisted_pngs(folder, set(keys))
    logger.info("scoring %d saved predictions from %s (%d other PNGs ignored): %s, %s matching, "
                "%d segments", n, folder, ignored, protocol.describe(), match, n_segments)

    timer = StageTimer()
    scorer = GridScorer(n_segments, n_classes, 1, timer, None, 0, 0, n_examples, None,
                        per_image=match == PER_IMAGE)
    counts = {"original_size": 0, "prepared_size": 0}
    indices: Iterable[int] = range(n)
    if progress is not None:
        indices = progress(indices, total=n)
    for i in indices:
        with timer("data"):
            sample = dataset.load(i)
            prepared = prepare(sample, protocol)
            original = sample.label.shape[:2]
            pred = read_prediction(paths[i], [original, prepared.out_size])
        _check_values(pred, paths[i], n_segments)
        at_original = pred.shape == original
        counts["original_size" if at_original else "prepared_size"] += 1
        with timer("upsample"):
            pred = size_label(pred, protocol) if at_original else pred
        scorer.add_labels(prepared, pred)
    result = scorer.result(dataset, protocol, "predictions", match, n, start)
    result.predictions = {"dir": str(folder), **counts, "ignored": ignored}
    return result
