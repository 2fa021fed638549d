"""Evaluate a checkpoint on a labelled dataset: mIoU and pixel accuracy, with and without CRF.

One pass over the images fills two cluster×class confusion matrices (raw
argmax predictions and CRF-refined ones); each gets its own cluster→class
mapping (:mod:`segeig.evaluation.metrics`), fitted on its own predictions, so a single run
reports both rows. The CRF runs at its working size (``crf_side``) in worker
processes (:class:`segeig.crf.CRFPool`) while the model moves on to the next
images, or inline for the torch backend on an accelerator.

Time is booked per stage (``data``, ``forward``, ``upsample``, ``metrics``,
``crf_inputs``, ``crf``) so a run shows where it went; ``crf`` is the time the
main loop spent on the CRF (running it inline, or waiting for workers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from segeig.checkpoint import UNASSIGNED
from segeig.config import WorkingResolution, to_dict
from segeig.crf import CRFParams, CRFPool, resolve_backend
from segeig.data import SegDataset
from segeig.evaluation.metrics import PER_IMAGE
from segeig.evaluation.protocols import Prepared, Protocol, prepare, resolve_protocol
from segeig.evaluation.scoring import (
    EvaluationResult,
    GridScorer,
    StageTimer,
)
from segeig.predictor import Segmenter
from segeig.transforms import to_tensor
from segeig.workers import ordered_map

logger = logging.getLogger(__name__)

__all__ = ["MATCHES", "check_crf_available", "check_dataset", "check_segments",
           "default_method", "evaluate", "prepared_samples", "stored_mapping"]

#: ``auto``: hungarian when segments equal classes, else majority
#: (:func:`segeig.evaluation.metrics.resolve_match`); ``hungarian-per-image``: one
#: matching per image (zero-shot papers; inflated); ``fixed``: the checkpoint's stored map.
MATCHES = ("auto", "hungarian", "majority", PER_IMAGE, "fixed")

#: Under ``stego``, the first of these methods that predicts exactly as many
#: segments as there are classes is the default: the head's output clustered
#: by k-means (fitted on the train split, no labels) into the class count.
_STEGO_PREFERENCE = ("eigen+kmeans", "kmeans", "spectral", "eigen")


class _PreparedView:
    # Reads with SegDataset.load (a Sample, whatever transform the dataset
    # carries) and sizes it for the protocol, inside DataLoader workers if any.
    def __init__(self, dataset: SegDataset, protocol: Protocol, n: int,
                 resolution: WorkingResolution | None) -> None:
        self.dataset, self.protocol, self.n = dataset, protocol, n
        self.resolution = resolution

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Prepared:
        return prepare(self.dataset.load(index), self.protocol, self.resolution)


def prepared_samples(dataset: SegDataset, protocol: Protocol, n: int, workers: int,
                     resolution: WorkingResolution | None = None) -> Iterable[Prepared]:
    """The first ``n`` samples sized for ``protocol`` (and the working
    ``resolution``), read in ``workers`` processes.

    Samples are numpy arrays sent back through a pipe (never ``/dev/shm``); a
    worker that dies or cannot send its sample raises
    :class:`segeig.workers.WorkerError` at once instead of hanging.
    """
    view = _PreparedView(dataset, protocol, n, resolution)
    return ordered_map(view.__getitem__, range(n), max(workers, 0), what="data worker")


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


def check_dataset(dataset: SegDataset, protocol: Protocol, match: str) -> int:
    """Validate a labelled dataset against a protocol and matching; return its class count."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
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
            "segeig.evaluation.protocols.load_eval_dataset(protocol, root, split)")
    return n_classes


def check_crf_available(crf: bool, backend: str = "auto", device: object = None) -> None:
    """Fail before any work when CRF scores are asked for but the backend cannot run."""
    if crf:
        try:
            resolve_backend(backend, device)
        except ImportError as err:
            raise RuntimeError(f"{err}; or evaluate without CRF (--no-crf)") from err


def check_segments(method: str, n_segments: int, n_classes: int, match: str) -> None:
    """Hungarian matching needs at least one segment per class."""
    if match == "hungarian" and n_segments < n_classes:
        raise ValueError(
            f"hungarian matching needs at least as many segments as classes, but method "
            f"{method!r} predicts {n_segments} segments for {n_classes} classes; use "
            f"--match majority (or auto) or more segments (K >= {n_classes})")


def default_method(segmenter: Segmenter, protocol: Protocol, n_classes: int) -> str:
    """The method evaluated when none is named.

    Under ``stego``: the first of ``eigen+kmeans``, ``kmeans``, ``spectral``,
    ``eigen`` that the checkpoint has with exactly ``n_classes`` segments (the
    protocol's one-to-one setting); else, and under other protocols, the
    checkpoint's default method.
    """
    if protocol.name == "stego":
        for method in _STEGO_PREFERENCE:
            if method in segmenter.methods and segmenter.num_segments(method) == n_classes:
                return method
        logger.warning("no method of this checkpoint predicts %d segments (the stego "
                       "protocol's setting: the class count); evaluating its default method. "
                       "Fit class-count centroids (train --kmeans-k %d) for the protocol's "
                       "numbers", n_classes, n_classes)
    return segmenter.methods[0]


def stored_mapping(segmenter: Segmenter, method: str, class_names: list[str]
                   ) -> tuple[list[int], dict[str, Any]]:
    """The checkpoint's stored cluster → class map of ``method``, in the dataset's class order.

    Returns:
        ``(mapping, description)``: ``S`` ints (index into ``class_names``,
        ``-1`` = unassigned) and what to report about the map (its classes and
        how it was made).

    Raises:
        ValueError: no class map, none for ``method``, or classes the dataset lacks.
    """
    class_map = segmenter.class_map
    if class_map is None:
        raise ValueError("--match fixed scores with the checkpoint's stored class map, but "
                         "this checkpoint has none; fit one with `segeig label` first, or "
                         "use --match auto|hungarian|majority")
    table = class_map.lookup(method)
    stored = list(class_map.names)
    if stored == list(class_names):
        index = list(range(len(stored)))
    else:
        # A map named by hand, or fitted with another class set: match classes by name.
        where = {name: i for i, name in enumerate(class_names)}
        used = sorted({stored[c] for c in table.tolist() if c != UNASSIGNED})
        missing = [name for name in used if name not in where]
        if missing:
            raise ValueError(f"the stored class map names classes that are not among the "
                             f"dataset's: {', '.join(map(repr, missing[:10]))}")
        if len(where) != len(class_names):
            raise ValueError("the dataset's class names repeat, so a stored map cannot be "
                             "matched to them by name")
        index = [where.get(name, -1) for name in stored]
    mapping = [-1 if c == UNASSIGNED else index[c] for c in table.tolist()]
    return mapping, {"names": stored, "source": dict(class_map.source)}


def evaluate(
    segmenter: Segmenter,
    dataset: SegDataset,
    protocol: Protocol | str | None = None,
    method: str | None = None,
    match: str = "auto",
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
    resolution: int | None = None,
    crf_backend: str = "auto",
    crf_side: int | None = None,
) -> EvaluationResult:
    """Score a segmenter on a labelled dataset.

    Args:
        segmenter: the model (:func:`segeig.load`).
        dataset: labelled dataset with the protocol's classes
            (:func:`segeig.evaluation.protocols.load_eval_dataset` builds the right one).
        protocol: a :class:`Protocol`, a protocol name, or None for the
            dataset's default (see :mod:`segeig.evaluation.protocols`).
        method: ``eigen``, ``eigen+kmeans`` or ``kmeans``; default:
            :func:`default_method` (under ``stego`` a method with one segment
            per class, else the checkpoint's default).
        match: ``auto`` (default: ``hungarian`` when the method predicts as
            many segments as there are classes, else ``majority``),
            ``hungarian`` (one-to-one), ``majority`` (many-to-one),
            ``hungarian-per-image`` (one matching per image: inflated), or
            ``fixed``: the checkpoint's stored class map (:func:`stored_mapping`)
            instead of one fitted on these predictions.
        crf: also score CRF-refined predictions.
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
        resolution: override the checkpoint's working resolution (``native``
            and ``full`` use it; see :meth:`Segmenter.working_resolution`).
        crf_backend: ``auto``, ``torch`` or ``densecrf`` (:func:`segeig.crf.resolve_backend`).
        crf_side: short side the CRF runs at (marginals resampled to the label
            resolution); None: the segmenter's (its working resolution).

    Returns:
        :class:`EvaluationResult`.

    Raises:
        ValueError: unknown method/match, dataset without labels or with the
            wrong class count, too few segments for hungarian matching, no images,
            ``fixed`` without a stored map for the method.
        RuntimeError: CRF requested but its backend cannot run (pydensecrf missing).
    """
    start = time.perf_counter()
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    n_classes = check_dataset(dataset, protocol, match)
    method = method or default_method(segmenter, protocol, n_classes)
    if method not in segmenter.methods:
        raise ValueError(f"method {method!r} is not in this checkpoint; it has "
                         f"{', '.join(segmenter.methods)}")
    n_segments = segmenter.num_segments(method)
    check_segments(method, n_segments, n_classes, match)
    mapping, class_map = (stored_mapping(segmenter, method, dataset.class_names
                                         or [f"class {i}" for i in range(n_classes)])
                          if match == "fixed" else (None, None))
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {dataset!r} has {len(dataset)} images "
                         f"(max_images={max_images})")
    check_crf_available(crf, crf_backend, segmenter.device)
    crf_side = crf_side or segmenter.crf_side
    working = segmenter.working_resolution(resolution)
    logger.info("evaluating %d images: %s (working resolution: %s); method %s, %s matching, "
                "%d segments%s", n, protocol.describe(), working.describe(), method, match,
                n_segments, ", with CRF" if crf else "")

    timer = StageTimer()
    patch = segmenter.patch_size
    sync = segmenter.device.type == "cuda"

    def single_pass(s: Prepared) -> bool:
        return protocol.window is None and (protocol.max_side is None
                                            or max(s.in_size) <= protocol.max_side)

    samples: Iterable[Prepared] = prepared_samples(dataset, protocol, n, loader_workers,
                                                   working)
    if progress is not None:
        samples = progress(samples, total=n)
    with CRFPool(crf_workers if crf else 0, crf_params, max_labels=None, backend=crf_backend,
                 device=segmenter.device) as pool:
        scorer = GridScorer(n_segments, n_classes, patch, timer, pool if crf else None,
                            crf_workers, crf_max_labels, n_examples, crf_side,
                            per_image=match == PER_IMAGE)
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
                scorer.add(s, grid)
        scorer.drain(0)
    result = scorer.result(dataset, protocol, method, match, n, start, mapping, class_map)
    result.resolution = to_dict(working) if protocol.working_resolution else None
    return result
