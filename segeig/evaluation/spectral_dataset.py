"""Evaluate exact dataset-level spectral clustering (``spectral-dataset``).

The ground truth that the learned eigenfunctions approximate: the training
kernel is built over *all* patches of the evaluated images as one graph (the
feature graph across every image, the pixel graph within each), its top
eigenvectors are computed exactly (Lanczos) and their rows are clustered into
S clusters. It is transductive — the images being scored define the graph — so
it runs in two passes: (1) backbone features of every image, (2) after one
decomposition, the scores of each image go through the same matching, CRF and
report code as :func:`segeig.evaluation.evaluator.evaluate`.

Cost grows as O(N²·D) time for the feature graph and O(N·k_feat) memory for
N tokens, so it is refused above ``max_tokens`` (default
:data:`DEFAULT_MAX_TOKENS`; ~10 GiB at k_feat = 256): a few hundred images,
not a benchmark's full validation set. Each image gets one forward pass at
its protocol size (no sliding window), whatever the protocol says.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from segeig.config import KernelConfig, WorkingResolution, from_dict, to_dict
from segeig.crf import CRF_SIDE, CRFParams, CRFPool
from segeig.data import SegDataset
from segeig.evaluation.evaluator import (
    _PreparedView,
    check_crf_available,
    check_dataset,
    check_segments,
    prepared_samples,
)
from segeig.evaluation.metrics import PER_IMAGE
from segeig.evaluation.protocols import Protocol, resolve_protocol
from segeig.evaluation.scoring import EvaluationResult, GridScorer, StageTimer
from segeig.feature_cache import View, prepare_feature_cache
from segeig.kernel import pad_to_grid
from segeig.model import CENTROID_TEMPERATURE
from segeig.predictor import Segmenter
from segeig.spectral import exact_spectral_bytes, spectral_cluster_set
from segeig.transforms import to_tensor

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
    match: str = "auto",
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
    crf_backend: str = "auto",
    crf_side: int | None = CRF_SIDE,
    seed: int = 0,
    feature_cache: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Score exact spectral clustering of the whole evaluated set.

    Args:
        segmenter: gives the backbone (any checkpoint; its head is unused).
        dataset, protocol, match, crf, max_images, crf_workers,
            loader_workers, n_examples, crf_params, crf_max_labels, crf_backend,
            crf_side: as in
            :func:`segeig.evaluation.evaluator.evaluate`.
        progress: wrapper ``progress(iterable, total=N)`` over the images;
            called twice (features, then scoring).
        n_clusters: clusters S (default: the number of classes).
        n_eigenvectors: eigenvectors embedded (default S).
        kernel_config: graph settings (default: the checkpoint's training kernel).
        max_tokens: refuse sets with more patches than this.
        seed: Lanczos start vector and k-means seed.
        feature_cache: keep the first pass's backbone features in a feature
            cache under this folder (:mod:`segeig.feature_cache`; keyed by the
            backbone, the protocol and the working resolution) and reuse them
            when the same images are evaluated again (other ``n_clusters``,
            matching or CRF settings). ``None``: no cache.

    Returns:
        :class:`~segeig.evaluation.EvaluationResult` with method
        ``"spectral-dataset"``; ``timing`` adds ``spectral`` (graph,
        eigenvectors, clustering).

    Raises:
        SpectralSetTooLargeError: more than ``max_tokens`` patches.
        RuntimeError: CRF requested but its backend cannot run (pydensecrf missing).
        ValueError: bad match, unlabelled dataset, wrong class count, too few
            clusters for hungarian matching, no images.
    """
    start = time.perf_counter()
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    n_classes = check_dataset(dataset, protocol, match)
    if match == "fixed":
        raise ValueError("spectral-dataset clusters are made afresh for every evaluated set, so "
                         "no stored class map fits them; use --match auto|hungarian|majority")
    n_clusters = n_clusters or n_classes
    check_segments(METHOD, n_clusters, n_classes, match)
    check_crf_available(crf, crf_backend, segmenter.device)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {dataset!r} has {len(dataset)} images")
    kernel_config = kernel_config or kernel_config_of(segmenter)
    working = segmenter.working_resolution()
    backbone, patch, device = segmenter.model.backbone, segmenter.patch_size, segmenter.device
    timer = StageTimer()
    timer.seconds["spectral"] = 0.0

    def images() -> Iterable:
        samples = timer.timed(prepared_samples(dataset, protocol, n, loader_workers, working),
                              "data")
        return progress(samples, total=n) if progress is not None else samples

    # Pass 1: kernel features and the image at grid resolution (all the pixel
    # graph reads), kept on the CPU.
    features: list[torch.Tensor] = []
    smalls: list[torch.Tensor] = []
    tokens = 0
    if feature_cache is not None:
        with timer("forward"):
            features, smalls = _cached_pass(segmenter, dataset, protocol, n, working,
                                            feature_cache, max_tokens, kernel_config.k_feat)
        tokens = sum(f.shape[-2] * f.shape[-1] for f in features)
    for i, s in enumerate(images() if feature_cache is None else ()):
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
        # Colours on the padded patch grid the backbone saw.
        padded = pad_to_grid(image.float(), (h, w), backbone.patch_size, tuple(backbone.mean))
        smalls.append(F.interpolate(padded, size=(h, w), mode="bilinear",
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
    with CRFPool(crf_workers if crf else 0, crf_params, max_labels=None, backend=crf_backend,
                 device=device) as pool:
        scorer = GridScorer(n_clusters, n_classes, patch, timer, pool if crf else None,
                            crf_workers, crf_max_labels, n_examples, crf_side,
                            per_image=match == PER_IMAGE)
        for s, grid in zip(images(), grids, strict=True):
            scorer.add(s, grid / CENTROID_TEMPERATURE)
        scorer.drain(0)
    result = scorer.result(dataset, protocol, METHOD, match, n, start)
    result.resolution = to_dict(working) if protocol.working_resolution else None
    return result


class _PreparedImages:
    """The evaluated images as the protocol sizes them (a
    :class:`~segeig.feature_cache.ImageSource`)."""

    def __init__(self, dataset: SegDataset, protocol: Protocol, n: int,
                 working: WorkingResolution | None) -> None:
        self.view = _PreparedView(dataset, protocol, n, working)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.view)

    def image(self, index: int) -> np.ndarray:
        return self.view[index].image

    def size(self, index: int) -> tuple[int, int]:
        return self.image(index).shape[:2]  # evaluated sets are small: decode

    def identity(self, index: int) -> str:
        return self.dataset.file_identity(index)


def _cached_pass(segmenter: Segmenter, dataset: SegDataset, protocol: Protocol, n: int,
                 working: WorkingResolution | None, root: str | os.PathLike, max_tokens: int,
                 k_feat: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pass 1 through a feature cache: ``(kernel features Dk×h×w, grid colours 3×h×w)``
    float32 CPU per image, filled on first use."""
    source = _PreparedImages(dataset, protocol, n, working)
    patch = segmenter.patch_size
    sizes = [source.size(i) for i in range(n)]
    grids = [math.ceil(h / patch) * math.ceil(w / patch) for h, w in sizes]
    if sum(grids) > max_tokens:  # refused before anything is computed or written
        raise SpectralSetTooLargeError(_too_large(n, sum(grids), n, max_tokens, k_feat))
    cache = prepare_feature_cache(
        root, segmenter.model.backbone, source, (View(),), working,
        device=segmenter.device,
        extra={"purpose": METHOD, "protocol": asdict(protocol), "dataset": dataset.name,
               "split": dataset.split})
    features, smalls = [], []
    for i in range(n):
        tokens = torch.from_numpy(np.array(cache.tokens(i, 0))).permute(2, 0, 1)[None]
        _, kernel, colours = cache.split(tokens.float())
        features.append(kernel[0].contiguous())
        smalls.append(colours[0].contiguous())
    return features, smalls
