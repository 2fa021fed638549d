"""Evaluation metrics: confusion accumulation, cluster->class matching, mIoU.

Unsupervised segmentation predicts *cluster ids* that carry no class meaning, so
every score is computed in two steps (docs/evaluation.md, "Matching clusters
to classes"):

1. accumulate one ``(n_clusters, n_classes)`` count matrix over all valid
   pixels of the evaluation set (:class:`ConfusionAccumulator`);
2. fit a cluster->class mapping on that matrix (:func:`hungarian_match` or
   :func:`majority_match`), fold it into a class-level confusion matrix
   (:func:`class_confusion`) and read the scores off it (:func:`scores`).

Conventions used throughout:

* ``conf[c, k]`` = number of pixels predicted as cluster ``c`` whose ground
  truth is class ``k``.
* A mapping is an int64 array ``mapping[c] in {-1, 0, ..., n_classes - 1}``;
  ``-1`` means "cluster predicts no class" and its pixels are always wrong.
* The class confusion matrix has shape ``(n_classes, n_classes + 1)``:
  rows are ground-truth classes, columns ``0..n_classes-1`` are predicted
  classes, and the extra last column counts pixels of unmatched clusters.
  That column is what lets unmatched pixels be false negatives of their
  ground-truth class without being anyone's false positive; a square matrix
  cannot express this without silently dropping them.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from segeig.config import IGNORE_INDEX

logger = logging.getLogger(__name__)

"""Ground-truth value of pixels excluded from every score."""

__all__ = [
    "FITTED_MATCHES",
    "PER_IMAGE",
    "ConfusionAccumulator",
    "PerImageHungarian",
    "class_confusion",
    "evaluate_confusion",
    "hungarian_match",
    "majority_match",
    "per_image_hungarian_match",
    "resolve_match",
    "scores",
]

#: Matchings fitted on a confusion matrix; ``auto`` picks one of them (:func:`resolve_match`).
FITTED_MATCHES = ("hungarian", "majority")
#: One Hungarian matching per image (the zero-shot papers' protocol: DiffSeg,
#: DiffCut). Each image gets the best one-to-one map for itself, so scores are
#: higher than under one dataset-level matching; never compare the two.
PER_IMAGE = "hungarian-per-image"


def _check_integer(name: str, arr: np.ndarray) -> None:
    # Float labels would be silently truncated by astype; refuse them instead.
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")


class ConfusionAccumulator:
    """Running ``(n_clusters, n_classes)`` pixel count matrix.

    Args:
        n_clusters: number of predicted cluster ids (valid ids ``0..n_clusters-1``).
        n_classes: number of ground-truth classes (valid ids ``0..n_classes-1``;
            :data:`IGNORE_INDEX` marks pixels to skip).

    Example::

        acc = ConfusionAccumulator(256, 150)
        for pred, gt in pairs:
            acc.update(pred, gt)
        result = evaluate_confusion(acc.matrix, "hungarian")
    """

    def __init__(self, n_clusters: int, n_classes: int) -> None:
        if n_clusters < 1 or n_classes < 1:
            raise ValueError(
                f"n_clusters and n_classes must be >= 1, got {n_clusters}, {n_classes}"
            )
        self.n_clusters = int(n_clusters)
        self.n_classes = int(n_classes)
        self._matrix = np.zeros((self.n_clusters, self.n_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """The accumulated counts, int64 ``(n_clusters, n_classes)`` (a view; do not mutate)."""
        return self._matrix

    def reset(self) -> None:
        """Zero all counts."""
        self._matrix[...] = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or any batch of pixels) to the counts.

        Args:
            pred: integer cluster ids, any shape (typically ``(H, W)``), values in
                ``[0, n_clusters)`` wherever ``gt`` is not ignored (values at
                ignored pixels are not inspected).
            gt: integer ground truth of the same shape (typically uint8), values
                in ``[0, n_classes)`` or :data:`IGNORE_INDEX`.

        Raises:
            ValueError: on shape mismatch, non-integer dtypes, or out-of-range
                ids (the message names the offending value).
        """
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        _check_integer("pred", pred)
        _check_integer("gt", gt)

        g = gt.reshape(-1)
        p = pred.reshape(-1)
        valid = g != IGNORE_INDEX
        if not valid.all():
            g = g[valid]
            p = p[valid]
        if g.size == 0:
            return

        # Range checks cost two reductions each; cheap next to silently
        # corrupting a shared bincount with out-of-range ids.
        g_min, g_max = int(g.min()), int(g.max())
        if g_min < 0 or g_max >= self.n_classes:
            bad = g_min if g_min < 0 else g_max
            raise ValueError(
                f"ground-truth value {bad} is outside [0, {self.n_classes}) and is not "
                f"the ignore index {IGNORE_INDEX}"
            )
        p_min, p_max = int(p.min()), int(p.max())
        if p_min < 0 or p_max >= self.n_clusters:
            bad = p_min if p_min < 0 else p_max
            raise ValueError(f"predicted cluster id {bad} is outside [0, {self.n_clusters})")

        # One flat bincount over joint ids is the fastest numpy route
        # (~ms for 512x512); it must never be the evaluation bottleneck.
        joint = p.astype(np.int64) * self.n_classes + g.astype(np.int64)
        counts = np.bincount(joint, minlength=self.n_clusters * self.n_classes)
        self._matrix += counts.reshape(self.n_clusters, self.n_classes)

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add another accumulator's counts into this one (e.g. from worker processes).

        Returns ``self`` so calls can be chained.
        """
        if (other.n_clusters, other.n_classes) != (self.n_clusters, self.n_classes):
            raise ValueError(
                f"cannot merge a {other.n_clusters}x{other.n_classes} accumulator into "
                f"a {self.n_clusters}x{self.n_classes} one"
            )
        self._matrix += other.matrix
        return self


def _as_conf(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise ValueError(f"confusion matrix must be 2-D, got shape {conf.shape}")
    if np.any(conf < 0):
        raise ValueError("confusion matrix has negative counts")
    return conf


def hungarian_match(conf: np.ndarray) -> np.ndarray:
    """One-to-one cluster->class mapping maximising the matched pixel count.

    Args:
        conf: ``(n_clusters, n_classes)`` non-negative counts, ``n_clusters >= n_classes``.

    Returns:
        int64 ``(n_clusters,)``: ``mapping[c]`` is the class of cluster ``c``;
        exactly ``n_classes`` clusters are matched, the rest map to ``-1``
        (their pixels count as wrong).

    Raises:
        ValueError: if there are fewer clusters than classes (some class could
            never be predicted, so the protocol is undefined).
    """
    conf = _as_conf(conf)
    n_clusters, n_classes = conf.shape
    if n_clusters < n_classes:
        raise ValueError(
            f"hungarian matching needs n_clusters >= n_classes, got {n_clusters} clusters "
            f"for {n_classes} classes (use majority matching or more clusters)"
        )
    rows, cols = linear_sum_assignment(conf.astype(np.float64), maximize=True)
    mapping = np.full(n_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def majority_match(conf: np.ndarray) -> np.ndarray:
    """Many-to-one mapping: each cluster -> the class with highest IoU with it.

    IoU of cluster ``c`` and class ``k`` is
    ``conf[c,k] / (sum_k' conf[c,k'] + sum_c' conf[c',k] - conf[c,k])``, i.e. the
    IoU of the cluster's pixel mask and the class's pixel mask. IoU (rather than
    raw count) keeps large classes from absorbing every mixed cluster. Ties go
    to the lowest class id.

    Args:
        conf: ``(n_clusters, n_classes)`` non-negative counts.

    Returns:
        int64 ``(n_clusters,)`` with values in ``[0, n_classes)``, or ``-1`` for
        clusters that own no valid pixel.
    """
    conf = _as_conf(conf).astype(np.float64)
    cluster_tot = conf.sum(axis=1, keepdims=True)
    class_tot = conf.sum(axis=0, keepdims=True)
    union = cluster_tot + class_tot - conf
    iou = np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)
    mapping = iou.argmax(axis=1).astype(np.int64)
    mapping[cluster_tot[:, 0] == 0] = -1
    return mapping


def per_image_hungarian_match(conf: np.ndarray) -> np.ndarray:
    """One-to-one mapping for **one image**: the clusters it predicts to the classes it shows.

    Only clusters predicted on the image's valid pixels and classes present in
    its ground truth take part (any numbers of each: the smaller side is
    matched completely); the matching maximises the matched pixel count
    (``linear_sum_assignment``). Other clusters map to ``-1`` (wrong).

    Args:
        conf: ``(n_clusters, n_classes)`` counts of a single image.

    Returns:
        int64 ``(n_clusters,)`` mapping, ``-1`` = unmatched.
    """
    conf = _as_conf(conf)
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    rows = np.flatnonzero(conf.sum(axis=1))
    cols = np.flatnonzero(conf.sum(axis=0))
    if rows.size and cols.size:
        r, c = linear_sum_assignment(conf[np.ix_(rows, cols)].astype(np.float64), maximize=True)
        mapping[rows[r]] = cols[c]
    return mapping


class PerImageHungarian:
    """Class confusion under per-image Hungarian matching (:data:`PER_IMAGE`).

    Each :meth:`update` matches one image's clusters to its classes
    (:func:`per_image_hungarian_match`) and adds the image's class confusion
    to a dataset total, from which :func:`scores` reads mIoU as usual.

    Args:
        n_clusters, n_classes: as :class:`ConfusionAccumulator`.
    """

    def __init__(self, n_clusters: int, n_classes: int) -> None:
        self.n_clusters, self.n_classes = int(n_clusters), int(n_classes)
        #: int64 ``(n_classes, n_classes + 1)``, as :func:`class_confusion`.
        self.class_conf = np.zeros((self.n_classes, self.n_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one image (``pred``/``gt`` as :meth:`ConfusionAccumulator.update`);
        returns the image's int64 ``(n_clusters,)`` mapping."""
        image = ConfusionAccumulator(self.n_clusters, self.n_classes)
        image.update(pred, gt)
        mapping = per_image_hungarian_match(image.matrix)
        self.class_conf += class_confusion(image.matrix, mapping)
        return mapping


def resolve_match(match: str, n_clusters: int, n_classes: int) -> str:
    """The matching ``match`` stands for with ``n_clusters`` clusters and ``n_classes`` classes.

    ``auto`` is one-to-one (``hungarian``) when there are exactly as many
    clusters as classes and many-to-one (``majority``) otherwise: with more
    clusters, one-to-one leaves all but ``n_classes`` of them unmatched and
    scores their pixels wrong (the paper's over-clustering tables use
    majority voting); with fewer, one-to-one is undefined. Other values are
    returned unchanged.
    """
    if match == "auto":
        return "hungarian" if n_clusters == n_classes else "majority"
    return match


def class_confusion(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Fold cluster counts into class counts through a mapping.

    Args:
        conf: ``(n_clusters, n_classes)`` non-negative counts.
        mapping: int ``(n_clusters,)`` with values in ``[-1, n_classes)``.

    Returns:
        int64 ``(n_classes, n_classes + 1)``: ``out[g, p]`` counts pixels of
        ground-truth class ``g`` (rows) predicted as class ``p`` (columns);
        the last column counts pixels of clusters mapped to ``-1``, which are
        false negatives of their ground-truth class and nobody's TP or FP.
    """
    conf = _as_conf(conf)
    mapping = np.asarray(mapping)
    n_clusters, n_classes = conf.shape
    if mapping.shape != (n_clusters,):
        raise ValueError(f"mapping shape {mapping.shape} != ({n_clusters},)")
    _check_integer("mapping", mapping)
    if mapping.size and (mapping.min() < -1 or mapping.max() >= n_classes):
        raise ValueError(f"mapping values must lie in [-1, {n_classes})")
    # Column index n_classes collects the unmatched clusters.
    cols = np.where(mapping < 0, n_classes, mapping)
    onehot = np.zeros((n_clusters, n_classes + 1), dtype=np.int64)
    onehot[np.arange(n_clusters), cols] = 1
    return conf.astype(np.int64).T @ onehot


def scores(class_conf: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of a class confusion matrix.

    Args:
        class_conf: ``(C, C + 1)`` from :func:`class_confusion` (rows = ground
            truth, last column = unmatched pixels), or a plain square ``(C, C)``
            matrix with the same row/column meaning and no unmatched pixels.

    Returns:
        dict with

        * ``miou``: float in ``[0, 100]``, mean IoU over classes whose union is
          non-empty, i.e. present in the ground truth **or** predicted at least
          once (mmseg convention: classes with union 0 are NaN and skipped by
          the mean; a class predicted but absent from ground truth scores 0).
          NaN if no class has any pixel.
        * ``pixel_acc``: float in ``[0, 100]``, correct / all valid pixels (NaN if none).
        * ``per_class_iou``: list of ``C`` floats in ``[0, 100]``, NaN for
          classes with empty union.
    """
    cc = np.asarray(class_conf, dtype=np.float64)
    if cc.ndim != 2 or cc.shape[1] not in (cc.shape[0], cc.shape[0] + 1):
        raise ValueError(f"class confusion must be (C, C) or (C, C+1), got {cc.shape}")
    n = cc.shape[0]
    square = cc[:, :n]
    tp = np.diag(square)
    gt_tot = cc.sum(axis=1)  # includes unmatched pixels -> they are FN
    pred_tot = square.sum(axis=0)  # excludes unmatched pixels -> never FP
    union = gt_tot + pred_tot - tp
    iou = np.full(n, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    present = ~np.isnan(iou)
    # Explicit guard instead of np.nanmean to avoid its empty-slice warning.
    miou = float(iou[present].mean() * 100.0) if present.any() else float("nan")
    total = cc.sum()
    pixel_acc = float(tp.sum() / total * 100.0) if total > 0 else float("nan")
    return {
        "miou": miou,
        "pixel_acc": pixel_acc,
        "per_class_iou": [float(v * 100.0) for v in iou],
    }


def evaluate_confusion(
    conf: np.ndarray, match: Literal["auto", "hungarian", "majority"] = "hungarian"
) -> dict[str, Any]:
    """Match clusters to classes and score, in one call.

    Args:
        conf: ``(n_clusters, n_classes)`` counts, e.g. ``ConfusionAccumulator.matrix``.
        match: ``"hungarian"`` (one-to-one), ``"majority"`` (many-to-one by IoU)
            or ``"auto"`` (:func:`resolve_match`).

    Returns:
        The :func:`scores` dict plus ``match`` (str, the matching used: never
        ``auto``) and ``mapping`` (list of ``n_clusters`` ints, ``-1`` =
        unmatched); all JSON-serialisable.
    """
    if match == "auto":
        match = resolve_match(match, *_as_conf(conf).shape)
    if match == "hungarian":
        mapping = hungarian_match(conf)
    elif match == "majority":
        mapping = majority_match(conf)
    else:
        raise ValueError(f"match must be 'auto', 'hungarian' or 'majority', got {match!r}")
    result = scores(class_confusion(conf, mapping))
    result["match"] = match
    result["mapping"] = [int(m) for m in mapping]
    return result
