"""Evaluate a checkpoint on a labelled dataset: mIoU and pixel accuracy, with and without CRF.

One pass over the images fills two cluster×class confusion matrices (raw
argmax predictions and CRF-refined ones); each gets its own cluster→class
mapping (:mod:`segeig.metrics`), fitted on its own predictions, so a single run
reports both rows. The CRF runs in worker processes (:class:`segeig.crf.CRFPool`)
while the model moves on to the next images.

Time is booked per stage (``data``, ``forward``, ``upsample``, ``metrics``,
``crf_inputs``, ``crf``) so a run shows where it went; ``crf`` is the time the
main loop spent on the CRF (running it inline, or waiting for workers).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segeig.crf import CRFParams, CRFPool
from segeig.data import SegDataset
from segeig.metrics import ConfusionAccumulator, class_confusion, evaluate_confusion
from segeig.predictor import Segmenter
from segeig.protocols import Prepared, Protocol, prepare, resolve_protocol
from segeig.resample import pixel_argmax, pixel_probs
from segeig.transforms import to_tensor
from segeig.viz import make_palette

logger = logging.getLogger(__name__)

__all__ = ["MATCHES", "TIMING_KEYS", "EvaluationResult", "Example", "Scores", "evaluate"]

MATCHES = ("hungarian", "majority")
#: Most bytes of CRF probabilities waiting for workers at once (full-resolution
#: Cityscapes with 32 labels is 256 MiB per image).
MAX_PENDING_BYTES = 2 << 30
#: Stages of the main loop whose seconds are recorded (plus ``other`` and ``total``).
TIMING_KEYS = ("data", "forward", "upsample", "metrics", "crf_inputs", "crf")


@dataclass
class Scores:
    """Scores of one confusion matrix under one matching.

    Attributes:
        miou: mean IoU in [0, 100] over classes with a non-empty union.
        pixel_acc: pixel accuracy in [0, 100].
        per_class_iou: ``C`` IoUs in [0, 100], NaN for classes never present
            nor predicted.
        mapping: ``S`` ints, cluster → class (``-1`` = unmatched, always wrong).
        confusion: int64 ``S×C`` cluster × class pixel counts.
    """

    miou: float
    pixel_acc: float
    per_class_iou: list[float]
    mapping: list[int]
    confusion: np.ndarray

    @classmethod
    def from_confusion(cls, confusion: np.ndarray, match: str) -> Scores:
        found = evaluate_confusion(confusion, match)  # type: ignore[arg-type]
        return cls(found["miou"], found["pixel_acc"], found["per_class_iou"],
                   found["mapping"], np.array(confusion, dtype=np.int64))

    @property
    def class_confusion(self) -> np.ndarray:
        """int64 ``C×(C+1)`` class confusion (rows ground truth, last column unmatched)."""
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
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    pred_crf: np.ndarray | None = None


@dataclass
class EvaluationResult:
    """Everything one evaluation produced. :meth:`to_dict` is the JSON form."""

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN → None); see docs/evaluation.md for the schema."""
        names = unique_names(self.class_names)
        crf = self.scores_crf
        return {
            "dataset": self.protocol.dataset,
            "split": self.split,
            "protocol": self.protocol.name,
            "protocol_settings": self.protocol.to_dict(),
            "method": self.method,
            "match": self.match,
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
            "mapping": list(self.scores.mapping),
            "mapping_crf": list(crf.mapping) if crf else None,
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


class _Timer:
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


class _PreparedView(Dataset):
    # Reads with SegDataset.load (a Sample, whatever transform the dataset
    # carries) and sizes it for the protocol, inside DataLoader workers if any.
    def __init__(self, dataset: SegDataset, protocol: Protocol, n: int) -> None:
        self.dataset, self.protocol, self.n = dataset, protocol, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Prepared:
        return prepare(self.dataset.load(index), self.protocol)


def _identity(item: Any) -> Any:
    return item


def _samples(dataset: SegDataset, protocol: Protocol, n: int, workers: int) -> Iterable[Prepared]:
    view = _PreparedView(dataset, protocol, n)
    if workers <= 0:
        return (view[i] for i in range(n))
    return DataLoader(view, batch_size=None, shuffle=False, num_workers=workers,
                      collate_fn=_identity, prefetch_factor=2)


def _batched(samples: Iterable[Prepared], size: int, single_pass: Callable[[Prepared], bool]
             ) -> Iterator[list[Prepared]]:
    """Consecutive samples of the same input size that need one forward pass each."""
    batch: list[Prepared] = []
    for s in samples:
        if batch and (len(batch) >= size or s.in_size != batch[0].in_size
                      or not single_pass(s) or not single_pass(batch[0])):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def _check_inputs(segmenter: Segmenter, dataset: SegDataset, protocol: Protocol,
                  method: str, match: str) -> int:
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    if method not in segmenter.methods:
        raise ValueError(f"method {method!r} is not in this checkpoint; it has "
                         f"{', '.join(segmenter.methods)}")
    if not dataset.with_labels:
        raise ValueError("evaluation needs labels: build the dataset with with_labels=True")
    if dataset.name != protocol.dataset:
        raise ValueError(f"protocol {protocol.name!r} is defined for {protocol.dataset}, "
                         f"but the dataset is {dataset.name}")
    n_classes = dataset.num_classes
    if n_classes is None:
        raise ValueError(f"{dataset!r} does not know its number of classes")
    if protocol.num_classes is not None and n_classes != protocol.num_classes:
        raise ValueError(
            f"protocol {protocol.name!r} scores {protocol.num_classes} classes on "
            f"{protocol.dataset} but the dataset was built with {n_classes}; build it with "
            "segeig.protocols.load_eval_dataset(protocol, root, split)")
    n_segments = segmenter.num_segments(method)
    if match == "hungarian" and n_segments < n_classes:
        raise ValueError(
            f"hungarian matching needs at least as many segments as classes, but method "
            f"{method!r} of this checkpoint predicts {n_segments} segments for {n_classes} "
            f"classes; use --match majority or a checkpoint with K >= {n_classes}")
    return n_classes


def evaluate(
    segmenter: Segmenter,
    dataset: SegDataset,
    protocol: Protocol | str | None = None,
    method: str | None = None,
    match: str = "hungarian",
    crf: bool = True,
    max_images: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    crf_workers: int = 0,
    *,
    batch_size: int = 1,
    loader_workers: int = 0,
    n_examples: int = 8,
    crf_params: CRFParams | None = None,
    crf_max_labels: int = 32,
) -> EvaluationResult:
    """Score a segmenter on a labelled dataset.

    Args:
        segmenter: the model (:func:`segeig.load`).
        dataset: labelled dataset with the protocol's classes
            (:func:`segeig.protocols.load_eval_dataset` builds the right one).
        protocol: a :class:`Protocol`, a protocol name, or None for the
            dataset's default (see :mod:`segeig.protocols`).
        method: ``eigen``, ``eigen+kmeans`` or ``kmeans``; default: the
            checkpoint's default (``kmeans`` for a head-less checkpoint).
        match: ``hungarian`` (one-to-one) or ``majority`` (many-to-one).
        crf: also score CRF-refined predictions (needs pydensecrf).
        max_images: evaluate only the first N images.
        progress: optional wrapper ``progress(iterable, total=N)`` (e.g. tqdm)
            over the images, in model order.
        crf_workers: CRF processes (0 = inline in this process).
        batch_size: images per forward pass when they share a size and need
            no sliding window (all of ``stego``); helps on GPU.
        loader_workers: DataLoader processes reading and resizing images.
        n_examples: keep the first N images (with predictions) for pictures.
        crf_params: CRF hyper-parameters (default: the paper's).
        crf_max_labels: segments per image passed to the CRF (top by area on
            the patch grid).

    Returns:
        :class:`EvaluationResult`.

    Raises:
        ValueError: unknown method/match, dataset without labels or with the
            wrong class count, too few segments for hungarian matching, no images.
        RuntimeError: CRF requested but pydensecrf is not installed.
    """
    start = time.perf_counter()
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    method = method or segmenter.methods[0]
    n_classes = _check_inputs(segmenter, dataset, protocol, method, match)
    n_segments = segmenter.num_segments(method)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {dataset!r} has {len(dataset)} images "
                         f"(max_images={max_images})")
    if crf:
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError as err:
            raise RuntimeError("CRF scores need pydensecrf (`pip install pydensecrf2`); "
                               "install it or evaluate without CRF (--no-crf)") from err
    logger.info("evaluating %d images: %s; method %s, %s matching, %d segments%s",
                n, protocol.describe(), method, match, n_segments, ", with CRF" if crf else "")

    timer = _Timer()
    acc = ConfusionAccumulator(n_segments, n_classes)
    acc_crf = ConfusionAccumulator(n_segments, n_classes) if crf else None
    examples: list[Example] = []
    pending: deque = deque()
    patch = segmenter.patch_size
    sync = segmenter.device.type == "cuda"

    def single_pass(s: Prepared) -> bool:
        return protocol.window is None and (protocol.max_side is None
                                            or max(s.in_size) <= protocol.max_side)

    def drain(limit: int) -> None:
        while pending and (len(pending) > limit or pending[0][0].done()
                           or sum(p[3] for p in pending) > MAX_PENDING_BYTES):
            future, label, example, _ = pending.popleft()
            with timer("crf"):
                refined = future.result()  # segment ids (the pool maps planes back)
            with timer("metrics"):
                acc_crf.update(refined, label)
            if example is not None:
                example.pred_crf = refined.astype(np.int32)

    samples: Iterable[Prepared] = _samples(dataset, protocol, n, loader_workers)
    if progress is not None:
        samples = progress(samples, total=n)
    with CRFPool(crf_workers if crf else 0, crf_params, max_labels=None) as pool:
        for batch in _batched(timer.timed(samples, "data"), batch_size, single_pass):
            with timer("forward"):
                if len(batch) == 1:
                    grids = [segmenter.patch_scores(batch[0].image, method,
                                                    window=protocol.window,
                                                    stride=protocol.stride,
                                                    max_side=protocol.max_side)]
                else:
                    images = torch.stack([to_tensor(s.image) for s in batch])
                    grids = list(segmenter.forward(images, method).scores)
                if sync:
                    torch.cuda.synchronize()
            for s, grid in zip(batch, grids, strict=True):
                with timer("upsample"):
                    pred = pixel_argmax(grid, patch, s.in_size, s.out_size).cpu().numpy()
                with timer("metrics"):
                    acc.update(pred, s.label)
                example = None
                if len(examples) < n_examples:
                    example = Example(s.name, s.eval_image, s.label, pred.astype(np.int32))
                    examples.append(example)
                if acc_crf is not None:
                    with timer("crf_inputs"):
                        probs, ids = pixel_probs(grid, patch, s.in_size, s.out_size,
                                                 crf_max_labels)
                    with timer("crf"):
                        pending.append((pool.submit(s.eval_image, probs, ids), s.label,
                                        example, probs.nbytes))
                    # Bounded queue: keep workers busy without holding every image.
                    drain(2 * max(crf_workers, 1))
        drain(0)

    seconds = time.perf_counter() - start
    timing = dict(timer.seconds)
    timing["other"] = max(0.0, seconds - sum(timing.values()))
    timing["total"] = seconds
    names = list(dataset.class_names or [f"class {i}" for i in range(n_classes)])
    palette = dataset.palette if dataset.palette is not None else make_palette(n_classes)
    return EvaluationResult(
        protocol=protocol, split=dataset.split, method=method, match=match,
        class_names=names, palette=np.asarray(palette, dtype=np.uint8),
        n_images=n, n_segments=n_segments,
        scores=Scores.from_confusion(acc.matrix.copy(), match),
        scores_crf=Scores.from_confusion(acc_crf.matrix.copy(), match) if acc_crf else None,
        timing=timing, seconds=seconds, examples=examples,
    )
