"""Scoring patch-grid predictions against labels, and the evaluation result types.

:class:`GridScorer` turns each labelled sample's ``S×h×w`` grid scores into
full-resolution predictions and fills two cluster×class confusion matrices —
raw argmax and CRF-refined (the CRF runs on a worker pool while the caller
moves on) — then packages an :class:`EvaluationResult`. Both
:func:`segeig.evaluation.evaluator.evaluate` and
:func:`segeig.evaluation.spectral_dataset.evaluate_spectral_dataset` use it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segeig.crf import CRF_SIDE, CRFPool, prepare_crf
from segeig.data import SegDataset
from segeig.evaluation.metrics import (
    FITTED_MATCHES,
    PER_IMAGE,
    ConfusionAccumulator,
    PerImageHungarian,
    class_confusion,
    evaluate_confusion,
    scores,
)
from segeig.evaluation.protocols import Prepared, Protocol
from segeig.evaluation.statement import report_fields
from segeig.resample import pixel_argmax
from segeig.viz import make_palette

#: Stages of the main loop whose seconds are recorded (plus ``other`` and ``total``).
TIMING_KEYS = ("data", "forward", "upsample", "metrics", "crf_inputs", "crf")


#: Most bytes of CRF probabilities waiting for workers at once (full-resolution
#: Cityscapes with 32 labels is 256 MiB per image).
MAX_PENDING_BYTES = 2 << 30


@dataclass
class Scores:
    """Scores of one confusion matrix under one matching.

    Attributes:
        miou: mean IoU in [0, 100] over classes with a non-empty union.
        pixel_acc: pixel accuracy in [0, 100].
        per_class_iou: ``C`` IoUs in [0, 100], NaN for classes never present
            nor predicted.
        mapping: ``S`` ints, cluster → class (``-1`` = unmatched, always wrong);
            empty under ``hungarian-per-image`` (each image has its own).
        confusion: int64 ``S×C`` cluster × class pixel counts.
        match: the matching that gave ``mapping``: ``hungarian``, ``majority``
            (fitted on ``confusion``), ``fixed`` (given, e.g. a checkpoint's map)
            or ``hungarian-per-image``.
        per_image_confusion: int64 ``C×(C+1)`` class confusion summed over
            images matched one by one (``hungarian-per-image`` only), else None.
    """

    miou: float
    pixel_acc: float
    per_class_iou: list[float]
    mapping: list[int]
    confusion: np.ndarray
    match: str = ""
    per_image_confusion: np.ndarray | None = None

    @classmethod
    def from_confusion(cls, confusion: np.ndarray, match: str) -> Scores:
        """Fit ``match`` (``auto``, ``hungarian`` or ``majority``) on the counts and score."""
        found = evaluate_confusion(confusion, match)  # type: ignore[arg-type]
        return cls(found["miou"], found["pixel_acc"], found["per_class_iou"],
                   found["mapping"], np.array(confusion, dtype=np.int64), found["match"])

    @classmethod
    def from_mapping(cls, confusion: np.ndarray, mapping: Sequence[int],
                     match: str = "fixed") -> Scores:
        """Score the counts through a given ``S`` cluster → class mapping (``-1`` = none)."""
        mapping = np.asarray(mapping, dtype=np.int64)
        found = scores(class_confusion(confusion, mapping))
        return cls(found["miou"], found["pixel_acc"], found["per_class_iou"],
                   [int(m) for m in mapping], np.array(confusion, dtype=np.int64), match)

    @classmethod
    def per_image(cls, confusion: np.ndarray, per_image_confusion: np.ndarray) -> Scores:
        """Scores under ``hungarian-per-image`` (:class:`PerImageHungarian`'s totals)."""
        found = scores(per_image_confusion)
        return cls(found["miou"], found["pixel_acc"], found["per_class_iou"], [],
                   np.array(confusion, dtype=np.int64), PER_IMAGE,
                   np.array(per_image_confusion, dtype=np.int64))

    @property
    def class_confusion(self) -> np.ndarray:
        """int64 ``C×(C+1)`` class confusion (rows ground truth, last column unmatched)."""
        if self.per_image_confusion is not None:
            return self.per_image_confusion
        return class_confusion(self.confusion, np.asarray(self.mapping, dtype=np.int64))

    def map(self, clusters: np.ndarray) -> np.ndarray:
        """Cluster ids → class ids (``-1`` for unmatched clusters), same shape."""
        return np.asarray(self.mapping, dtype=np.int64)[clusters]


@dataclass
class Example:
    """One evaluated image kept for pictures (arrays at the label's resolution).

    Attributes:
        name: sample name.
        image: ``H×W×3`` uint8 RGB.
        label: ``H×W`` uint8 ground truth (255 ignore).
        pred: ``H×W`` int32 cluster ids.
        pred_crf: ``H×W`` int32 CRF-refined cluster ids, or None without CRF.
        mapping, mapping_crf: int64 ``S`` cluster → class maps of this image alone
            (``hungarian-per-image``), else None (the result's mapping applies).
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    pred_crf: np.ndarray | None = None
    mapping: np.ndarray | None = None
    mapping_crf: np.ndarray | None = None


@dataclass
class EvaluationResult:
    """Everything one evaluation produced. :meth:`to_dict` is the JSON form.

    ``match`` is the matching asked for (``auto``, ``hungarian``, ``majority``,
    ``hungarian-per-image`` or ``fixed``), ``match_used`` the one that gave the
    scores (``auto`` resolved); ``class_map`` describes the stored map a
    ``fixed`` evaluation used (its ``source``), else None; ``predictions``
    describes the saved predictions an ``evaluate --predictions`` run scored
    (folder, counts), else None.
    """

    protocol: Protocol
    split: str
    method: str
    match: str
    class_names: list[str]
    palette: np.ndarray
    n_images: int
    n_segments: int
    scores: Scores
    scores_crf: Scores | None
    timing: dict[str, float]
    seconds: float
    examples: list[Example] = field(default_factory=list)
    #: The working resolution images were predicted at (``short``, ``max_long``).
    resolution: dict[str, int] | None = None
    match_used: str = ""
    class_map: dict[str, Any] | None = None
    predictions: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def report_fields(self) -> dict[str, Any]:
        """The protocol statement (:func:`segeig.evaluation.statement.report_fields`)."""
        return report_fields(self.protocol, self.n_segments, self.match_used or self.match,
                             self.scores_crf is not None,
                             working_resolution=self.resolution,
                             predictions=self.predictions is not None)

    def by_match(self) -> dict[str, tuple[Scores, Scores | None] | None]:
        """The same confusion matrices scored under every fitted matching.

        Returns:
            ``{"hungarian": (scores, CRF scores or None), "majority": (...)}``;
            ``hungarian`` is None when there are fewer segments than classes.
            A ``hungarian-per-image`` evaluation adds its own scores under that
            key (they cannot be recomputed from the dataset-level counts).
        """
        out: dict[str, tuple[Scores, Scores | None] | None] = {}
        if self.scores.match == PER_IMAGE:
            out[PER_IMAGE] = (self.scores, self.scores_crf)
        for match in FITTED_MATCHES:
            if match == "hungarian" and self.n_segments < self.num_classes:
                out[match] = None
                continue
            crf = self.scores_crf
            out[match] = (Scores.from_confusion(self.scores.confusion, match),
                          Scores.from_confusion(crf.confusion, match) if crf else None)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN → None); see docs/evaluation.md for the schema."""
        names = unique_names(self.class_names)
        crf = self.scores_crf
        by_match = {
            match: None if pair is None else {
                "miou": _num(pair[0].miou), "pixel_acc": _num(pair[0].pixel_acc),
                "miou_crf": _num(pair[1].miou) if pair[1] else None,
                "pixel_acc_crf": _num(pair[1].pixel_acc) if pair[1] else None}
            for match, pair in self.by_match().items()}
        per_image = self.scores.match == PER_IMAGE
        return {
            "dataset": self.protocol.dataset,
            "split": self.split,
            **self.report_fields(),
            "protocol_settings": self.protocol.to_dict(),
            "working_resolution": self.resolution,
            "method": self.method,
            "match": self.match,
            "match_used": self.match_used or self.match,
            "class_map": self.class_map,
            "predictions": self.predictions,
            "n_images": self.n_images,
            "n_segments": self.n_segments,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "miou": _num(self.scores.miou),
            "pixel_acc": _num(self.scores.pixel_acc),
            "per_class_iou": dict(zip(names, map(_num, self.scores.per_class_iou), strict=True)),
            "miou_crf": _num(crf.miou) if crf else None,
            "pixel_acc_crf": _num(crf.pixel_acc) if crf else None,
            "per_class_iou_crf": (dict(zip(names, map(_num, crf.per_class_iou), strict=True))
                                  if crf else None),
            "by_match": by_match,
            "mapping": None if per_image else list(self.scores.mapping),
            "mapping_crf": list(crf.mapping) if crf and not per_image else None,
            "confusion": self.scores.confusion.tolist(),
            "confusion_crf": crf.confusion.tolist() if crf else None,
            "timing": {k: round(v, 4) for k, v in self.timing.items()},
            "seconds": round(self.seconds, 3),
        }


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def unique_names(names: list[str]) -> list[str]:
    """Class names made unique (``"3:wall"`` for repeats) so they can key a JSON object."""
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{i}:{n}" for i, n in enumerate(names)]


class StageTimer:
    """Seconds spent per named stage (``with timer("forward"): ...``)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(TIMING_KEYS, 0.0)

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] += time.perf_counter() - start

    def timed(self, iterable: Iterable, key: str) -> Iterator:
        iterator, end = iter(iterable), object()
        while True:
            with self(key):
                item = next(iterator, end)
            if item is end:
                return
            yield item


class GridScorer:
    """Patch-grid scores of labelled samples → raw and CRF confusion matrices.

    For each sample: full-resolution argmax (:func:`segeig.resample.pixel_argmax`)
    into one confusion matrix; optionally the CRF on a worker pool, whose
    results fill a second matrix as they arrive (a bounded queue keeps workers
    busy without holding every image's probabilities).

    Args:
        n_segments, n_classes: confusion matrix shape.
        patch: patch size of the grids.
        timer: where stage seconds are booked.
        pool: CRF workers, or ``None`` for no CRF scores.
        crf_workers: the pool's size (bounds the queue).
        crf_max_labels: segments per image passed to the CRF.
        n_examples: keep the first N samples (with predictions) for pictures.
        crf_side: the CRF's working short side (None: the label resolution).
        per_image: also match every image on its own (``hungarian-per-image``).
    """

    def __init__(self, n_segments: int, n_classes: int, patch: int, timer: StageTimer,
                 pool: CRFPool | None, crf_workers: int, crf_max_labels: int,
                 n_examples: int, crf_side: int | None = CRF_SIDE,
                 per_image: bool = False) -> None:
        self.acc = ConfusionAccumulator(n_segments, n_classes)
        self.acc_crf = ConfusionAccumulator(n_segments, n_classes) if pool else None
        self.per = PerImageHungarian(n_segments, n_classes) if per_image else None
        self.per_crf = PerImageHungarian(n_segments, n_classes) if per_image and pool else None
        self.patch, self.timer, self.pool = patch, timer, pool
        self.queue_limit = 2 * max(crf_workers, 1)
        self.crf_max_labels, self.n_examples = crf_max_labels, n_examples
        self.crf_side = crf_side
        self.examples: list[Example] = []
        self.pending: deque = deque()

    def add(self, sample: Prepared, grid: torch.Tensor) -> None:
        """Score one sample from its ``S×h×w`` grid scores."""
        timer = self.timer
        with timer("upsample"):
            pred = pixel_argmax(grid, self.patch, sample.in_size, sample.out_size).cpu().numpy()
        example = self.add_labels(sample, pred)
        if self.pool is not None:
            with timer("crf_inputs"):
                image, probs, ids = prepare_crf(sample.eval_image, grid, self.patch,
                                                sample.in_size, self.crf_side,
                                                self.crf_max_labels)
            with timer("crf"):
                future = self.pool.submit(image, probs, ids, out_size=sample.out_size)
            self.pending.append((future, sample.label, example, probs.nbytes))
            self.drain(self.queue_limit)

    def add_labels(self, sample: Prepared, pred: np.ndarray) -> Example | None:
        """Score one sample's predicted cluster ids (``H×W`` integers at the label's
        size); returns its :class:`Example` when it is kept for pictures."""
        with self.timer("metrics"):
            self.acc.update(pred, sample.label)
            mapping = self.per.update(pred, sample.label) if self.per else None
        if len(self.examples) >= self.n_examples:
            return None
        example = Example(sample.name, sample.eval_image, sample.label, pred.astype(np.int32),
                          mapping=mapping)
        self.examples.append(example)
        return example

    def drain(self, limit: int = 0) -> None:
        """Collect finished CRF results; wait until at most ``limit`` are pending."""
        pending = self.pending
        while pending and (len(pending) > limit or pending[0][0].done()
                           or sum(p[3] for p in pending) > MAX_PENDING_BYTES):
            future, label, example, _ = pending.popleft()
            with self.timer("crf"):
                refined = future.result()  # segment ids (the pool maps planes back)
            with self.timer("metrics"):
                self.acc_crf.update(refined, label)
                mapping = self.per_crf.update(refined, label) if self.per_crf else None
            if example is not None:
                example.pred_crf = refined.astype(np.int32)
                example.mapping_crf = mapping

    def result(self, dataset: SegDataset, protocol: Protocol, method: str, match: str,
               n_images: int, start: float, mapping: Sequence[int] | None = None,
               class_map: dict[str, Any] | None = None) -> EvaluationResult:
        """Match clusters to classes and package everything (call after :meth:`drain`).

        ``match`` ``fixed`` scores through ``mapping`` (``S`` ints, ``-1`` = no
        class) instead of fitting one; ``class_map`` says where it came from.
        """
        seconds = time.perf_counter() - start
        timing = dict(self.timer.seconds)
        timing["other"] = max(0.0, seconds - sum(timing.values()))
        timing["total"] = seconds
        n_classes = self.acc.matrix.shape[1]
        names = list(dataset.class_names or [f"class {i}" for i in range(n_classes)])
        palette = dataset.palette if dataset.palette is not None else make_palette(n_classes)
        crf = self.acc_crf

        def score(confusion: np.ndarray, per: PerImageHungarian | None) -> Scores:
            if match == PER_IMAGE:
                if per is None:
                    raise ValueError("per-image scores need a GridScorer built with "
                                     "per_image=True")
                return Scores.per_image(confusion, per.class_conf)
            if match == "fixed":
                if mapping is None:
                    raise ValueError("match 'fixed' needs the mapping to score with")
                return Scores.from_mapping(confusion, mapping)
            return Scores.from_confusion(confusion, match)

        raw = score(self.acc.matrix.copy(), self.per)
        return EvaluationResult(
            protocol=protocol, split=dataset.split, method=method, match=match,
            class_names=names, palette=np.asarray(palette, dtype=np.uint8),
            n_images=n_images, n_segments=self.acc.matrix.shape[0],
            scores=raw, scores_crf=score(crf.matrix.copy(), self.per_crf) if crf else None,
            timing=timing, seconds=seconds, examples=self.examples,
            match_used=raw.match, class_map=class_map,
        )
