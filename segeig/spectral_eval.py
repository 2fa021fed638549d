"""Evaluate exact dataset-level spectral clustering (``spectral-dataset``).

The ground truth that the learned eigenfunctions approximate: the training
kernel is built over *all* patches of the evaluated images as one graph (the
feature graph across every image, the pixel graph within each), its top
eigenvectors are computed exactly (Lanczos) and their rows are clustered into
S clusters. It is transductive — the images being scored define the graph — so
it runs in two passes: (1) backbone features of every image, (2) after one
decomposition, the scores of each image go through the same matching, CRF and
report code as :func:`segeig.evaluation.evaluate`.

Cost grows as O(N²·D) time for the feature graph and O(N·k_feat) memory for
N tokens, so it is refused above ``max_tokens`` (default
:data:`DEFAULT_MAX_TOKENS`; ~10 GiB at k_feat = 256): a few hundred images,
not a benchmark's full validation set. Each image gets one forward pass at
its protocol size (no sliding window), whatever the protocol says.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from segeig.config import KernelConfig, from_dict
from segeig.crf import CRFParams, CRFPool
from segeig.data import SegDataset
from segeig.evaluation import (
    MATCHES,
    EvaluationResult,
    Example,
    Scores,
    _samples,
    _Timer,
)
from segeig.metrics import ConfusionAccumulator
from segeig.model import CENTROID_TEMPERATURE
from segeig.predictor import Segmenter
from segeig.protocols import Protocol, resolve_protocol
from segeig.resample import pixel_argmax, pixel_probs
from segeig.spectral import exact_spectral_bytes, spectral_cluster_set
from segeig.transforms import to_tensor
from segeig.viz import make_palette

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_TOKENS", "METHOD", "SpectralSetTooLargeError",
           "evaluate_spectral_dataset", "kernel_config_of"]

METHOD = "spectral-dataset"
#: Most patches one exact decomposition may hold (estimated peak ≈ 10 GiB at
#: k_feat = 256, see :func:`segeig.spectral.exact_spectral_bytes`).
DEFAULT_MAX_TOKENS = 200_000


class SpectralSetTooLargeError(ValueError):
    """The evaluated set has more patches than one exact decomposition may hold."""


def kernel_config_of(segmenter: Segmenter) -> KernelConfig:
    """The checkpoint's training kernel (its ``kernel`` section), else the default."""
    section = segmenter.config.get("kernel")
    return from_dict(KernelConfig, section) if section else KernelConfig()


def _too_large(n_seen: int, tokens: int, n_total: int, limit: int, k_feat: int) -> str:
    estimate = tokens * n_total // max(n_seen, 1)
    gib = exact_spectral_bytes(estimate, k_feat) / 2**30
    return (f"spectral-dataset builds one graph over all patches: {n_seen} of {n_total} images "
            f"already hold {tokens} patches, over the limit of {limit} (all {n_total} would "
            f"hold ~{estimate}, needing ~{gib:.1f} GiB for the exact decomposition at "
            f"k_feat={k_feat}). Evaluate fewer images (--max-images), raise the limit "
            "(--max-tokens) if the memory is there, or use a learned method (eigen).")


def evaluate_spectral_dataset(
    segmenter: Segmenter,
    dataset: SegDataset,
    protocol: Protocol | str | None = None,
    n_clusters: int | None = None,
    match: str = "hungarian",
    crf: bool = True,
    max_images: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    crf_workers: int = 0,
    *,
    n_eigenvectors: int | None = None,
    kernel_config: KernelConfig | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    loader_workers: int = 0,
    n_examples: int = 8,
    crf_params: CRFParams | None = None,
    crf_max_labels: int = 32,
    seed: int = 0,
) -> EvaluationResult:
    """Score exact spectral clustering of the whole evaluated set.

    Args:
        segmenter: gives the backbone (any checkpoint; its head is unused).
        dataset, protocol, match, crf, max_images, crf_workers,
            loader_workers, n_examples, crf_params, crf_max_labels: as in
            :func:`segeig.evaluation.evaluate`.
        progress: wrapper ``progress(iterable, total=N)`` over the images;
            called twice (features, then scoring).
        n_clusters: clusters S (default: the number of classes).
        n_eigenvectors: eigenvectors embedded (default S).
        kernel_config: graph settings (default: the checkpoint's training kernel).
        max_tokens: refuse sets with more patches than this.
        seed: Lanczos start vector and k-means seed.

    Returns:
        :class:`~segeig.evaluation.EvaluationResult` with method
        ``"spectral-dataset"``; ``timing`` adds ``spectral`` (graph,
        eigenvectors, clustering).

    Raises:
        SpectralSetTooLargeError: more than ``max_tokens`` patches.
        ValueError: bad match, unlabelled dataset, wrong class count, too few
            clusters for hungarian matching, no images.
    """
    start = time.perf_counter()
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    if not dataset.with_labels or dataset.num_classes is None:
        raise ValueError("evaluation needs labels: build the dataset with "
                         "segeig.protocols.load_eval_dataset(protocol, root, split)")
    if dataset.name != protocol.dataset:
        raise ValueError(f"protocol {protocol.name!r} is defined for {protocol.dataset}, "
                         f"but the dataset is {dataset.name}")
    n_classes = dataset.num_classes
    if protocol.num_classes is not None and n_classes != protocol.num_classes:
        raise ValueError(f"protocol {protocol.name!r} scores {protocol.num_classes} classes but "
                         f"the dataset has {n_classes}")
    n_clusters = n_clusters or n_classes
    if match == "hungarian" and n_clusters < n_classes:
        raise ValueError(f"hungarian matching needs at least {n_classes} clusters (one per "
                         f"class), got {n_clusters}; use majority matching or more clusters")
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {dataset!r} has {len(dataset)} images")
    kernel_config = kernel_config or kernel_config_of(segmenter)
    backbone, patch, device = segmenter.model.backbone, segmenter.patch_size, segmenter.device
    timer = _Timer()
    timer.seconds["spectral"] = 0.0

    def images() -> Iterable:
        samples = timer.timed(_samples(dataset, protocol, n, loader_workers), "data")
        return progress(samples, total=n) if progress is not None else samples

    # Pass 1: kernel features and the image at grid resolution (all the pixel
    # graph reads), kept on the CPU.
    features: list[torch.Tensor] = []
    smalls: list[torch.Tensor] = []
    tokens = 0
    for i, s in enumerate(images()):
        with timer("forward"), torch.no_grad():
            image = to_tensor(s.image)[None].to(device)
            kernel = backbone(image).kernel.float()[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
        h, w = kernel.shape[-2:]
        tokens += h * w
        if tokens > max_tokens:
            raise SpectralSetTooLargeError(_too_large(i + 1, tokens, n, max_tokens,
                                                      kernel_config.k_feat))
        features.append(kernel.cpu())
        smalls.append(F.interpolate(image.float(), size=(h, w), mode="bilinear",
                                    align_corners=False)[0].cpu())
    if tokens < n_clusters:
        raise ValueError(f"{n} images hold only {tokens} patches, fewer than the {n_clusters} "
                         "clusters asked for")
    logger.info("spectral-dataset: one graph over %d patches of %d images, %d clusters "
                "(estimated peak %.2f GiB)", tokens, n, n_clusters,
                exact_spectral_bytes(tokens, kernel_config.k_feat) / 2**30)
    with timer("spectral"):
        grids, _ = spectral_cluster_set(features, smalls, kernel_config, n_clusters,
                                        n_eigenvectors, seed)
    del features, smalls

    # Pass 2: score like any method (centroid-style temperature for the CRF unary).
    acc = ConfusionAccumulator(n_clusters, n_classes)
    acc_crf = ConfusionAccumulator(n_clusters, n_classes) if crf else None
    examples: list[Example] = []
    pending: deque = deque()

    def drain(limit: int) -> None:
        while pending and (len(pending) > limit or pending[0][0].done()):
            future, label, example = pending.popleft()
            with timer("crf"):
                refined = future.result()
            with timer("metrics"):
                acc_crf.update(refined, label)
            if example is not None:
                example.pred_crf = refined.astype(np.int32)

    with CRFPool(crf_workers if crf else 0, crf_params, max_labels=None) as pool:
        for s, grid in zip(images(), grids, strict=True):
            grid = grid / CENTROID_TEMPERATURE
            with timer("upsample"):
                pred = pixel_argmax(grid, patch, s.in_size, s.out_size).numpy()
            with timer("metrics"):
                acc.update(pred, s.label)
            example = None
            if len(examples) < n_examples:
                example = Example(s.name, s.eval_image, s.label, pred.astype(np.int32))
                examples.append(example)
            if acc_crf is not None:
                with timer("crf_inputs"):
                    probs, ids = pixel_probs(grid, patch, s.in_size, s.out_size, crf_max_labels)
                with timer("crf"):
                    pending.append((pool.submit(s.eval_image, probs, ids), s.label, example))
                drain(2 * max(crf_workers, 1))
        drain(0)

    seconds = time.perf_counter() - start
    timing = dict(timer.seconds)
    timing["other"] = max(0.0, seconds - sum(timing.values()))
    timing["total"] = seconds
    names = list(dataset.class_names or [f"class {i}" for i in range(n_classes)])
    palette = dataset.palette if dataset.palette is not None else make_palette(n_classes)
    return EvaluationResult(
        protocol=protocol, split=dataset.split, method=METHOD, match=match,
        class_names=names, palette=np.asarray(palette, dtype=np.uint8), n_images=n,
        n_segments=n_clusters, scores=Scores.from_confusion(acc.matrix.copy(), match),
        scores_crf=Scores.from_confusion(acc_crf.matrix.copy(), match) if acc_crf else None,
        timing=timing, seconds=seconds, examples=examples,
    )
