"""A batch run's settings, and the method and labels they resolve to for a checkpoint.

:class:`SegmentOptions` is what :func:`segeig.batch.pipeline.segment_files`
segments and writes; :func:`uses_classes` and :func:`resolve_method` turn it
and a loaded :class:`~segeig.predictor.Segmenter` into what the run actually
does (class indices or cluster ids; which scoring method), the same way for
the engine and for the summary of :mod:`segeig.batch.run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from segeig.config import DEFAULT_MAX_SIDE

if TYPE_CHECKING:  # only annotations: the settings import without torch
    from segeig.predictor import Segmenter

__all__ = ["SegmentOptions", "resolve_method", "uses_classes"]


@dataclass
class SegmentOptions:
    """How :func:`segeig.batch.pipeline.segment_files` segments and what it writes.

    Attributes:
        method: ``eigen``, ``eigen+kmeans`` or ``kmeans``; None picks the
            checkpoint's default, ``eigen`` when it has a head (with class
            maps: among the methods that have one, see :func:`resolve_method`).
        clusters: write cluster ids even when the checkpoint has a class map
            (default: a labelled checkpoint writes class indices).
        crf: refine with a dense CRF.
        overlay: also write a colour overlay.
        overlay_format: ``"jpg"`` (quality 90) or ``"png"``.
        overlay_alpha: colour weight of the overlay in ``[0, 1]``.
        save_probs: also write patch-grid scores (:func:`segeig.batch.outputs.save_scores`).
        batch_size: same-size images scored together on the device (1 = one by one).
        workers: decode and CRF worker processes each (0 = all in this process).
        overwrite: redo images whose outputs exist.
        max_side: images with a longer side (at the working resolution) are
            scored in sliding windows of this size; None never slides.
        resolution: override the checkpoint's working resolution (``None``:
            the checkpoint's; ``0``: each image at its own size).
        crf_max_labels: segments kept per image for the CRF (chosen on the patch grid).
        crf_side: the CRF runs on a copy of each image with at most this short
            side (:func:`segeig.crf.crf_working_size`; marginals resampled
            bilinearly to the full size), bounding its time and memory; None:
            the segmenter's ``crf_side`` (its working resolution).
        crf_backend: ``auto``, ``torch`` or ``densecrf`` (:func:`segeig.crf.resolve_backend`).
    """

    method: str | None = None
    clusters: bool = False
    crf: bool = False
    overlay: bool = False
    overlay_format: str = "jpg"
    overlay_alpha: float = 0.5
    save_probs: bool = False
    batch_size: int = 1
    workers: int = 0
    overwrite: bool = False
    max_side: int | None = DEFAULT_MAX_SIDE
    crf_max_labels: int = 32
    resolution: int | None = None
    crf_side: int | None = None
    crf_backend: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def uses_classes(segmenter: Segmenter, options: SegmentOptions) -> bool:
    """Whether a run writes class indices: a labelled checkpoint, unless ``options.clusters``."""
    return segmenter.class_map is not None and not options.clusters


def resolve_method(segmenter: Segmenter, method: str | None, classes: bool = False) -> str:
    """The method a run uses.

    ``method`` if the checkpoint has it; None → the checkpoint's default
    (``eigen``, the head's argmax, when it has a head: on the texture proxy it
    beat ``eigen+kmeans`` on ``fit`` checkpoints and tied on ``custom`` ones,
    docs/method.md). With ``classes`` (the run writes class indices) only
    methods with a class map qualify: None picks the default if it has one,
    else the first mapped method; a method without one is an error naming
    those that have one.
    """
    methods = segmenter.methods
    if method is not None and method not in methods:
        raise ValueError(f"method {method!r} is not in this checkpoint; it has {methods}")
    if classes and segmenter.class_map is not None:
        mapped = segmenter.class_map.methods
        if method is None:
            default = segmenter.model.default_method
            return default if default in mapped else mapped[0]
        segmenter.class_map.lookup(method)  # raises, naming the methods with a map
        return method
    return method or segmenter.model.default_method
