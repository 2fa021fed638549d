"""The k-means pass after training: centroids for ``eigen+kmeans``, ``kmeans`` and ``spectral``.

One pass over the training images (deterministic views: short side → crop,
centre crop) collects per-patch features — the head's hidden features for
``eigen+kmeans``, the raw final backbone features for the ``kmeans`` baseline —
into a uniform reservoir sample of at most ``kmeans_tokens`` tokens per
method (:class:`segeig.cluster.TokenReservoir`), then fits spherical k-means on
the training device. The reservoir bounds memory at ``kmeans_tokens × D``
whatever the dataset size (ADE20K: 20k images × 1024 patches = 20M tokens →
262k kept by default, ≥ 500 per centroid), and a uniform sample of that size
estimates the centroids of the full token set well.

The ``spectral`` baseline samples segments rather than patches: each view is
cut into per-image spectral segments (exact eigenvectors of its own kernel,
:func:`segeig.spectral.segment_features`, settings from ``model.spectral``)
and the mean final backbone feature of each segment joins its reservoir.

With several processes each rank samples its shard of the images into a
reservoir of ``kmeans_tokens / world_size``; rank 0 gathers them and fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset

from segeig.cluster import TokenReservoir, fit_kmeans
from segeig.data import SegDataset
from segeig.model import SegEigModel
from segeig.spectral import segment_features
from segeig.train.loader import CenterViews
from segeig.train.runtime import DistContext, autocast

logger = logging.getLogger(__name__)


def centroid_methods(model: SegEigModel, baseline: bool, spectral: bool = False,
                     method: str | None = None) -> list[str]:
    """Which centroid sets the pass fits.

    Args:
        model: the model (``eigen+kmeans`` needs its head).
        baseline: also fit ``kmeans`` (always fitted for ``method="kmeans"``).
        spectral: also fit ``spectral`` (always fitted for ``method="spectral"``).
        method: the training method; default ``eigen`` with a head, else ``kmeans``.
    """
    method = method or ("eigen" if model.head is not None else "kmeans")
    out = ["eigen+kmeans"] if method == "eigen" and model.head is not None else []
    if baseline or method == "kmeans":
        out.append("kmeans")
    if spectral or method == "spectral":
        out.append("spectral")
    return out


def _gather_tokens(tokens: torch.Tensor, dist: DistContext, device: torch.device) -> torch.Tensor:
    """Concatenate variable-length ``M×D`` token sets from all ranks (padded transfer)."""
    if not dist.active:
        return tokens
    count = torch.tensor([len(tokens)], device=device)
    counts = dist.all_gather(count).tolist()
    padded = torch.zeros(max(counts), tokens.shape[1], device=device)
    padded[: len(tokens)] = tokens.to(device, torch.float32)
    gathered = dist.all_gather(padded).split(max(counts))
    return torch.cat([part[:c] for part, c in zip(gathered, counts, strict=True)]).cpu()


@torch.no_grad()
def fit_centroids(
    model: SegEigModel,
    dataset: SegDataset,
    *,
    k: int,
    crop: int,
    batch_size: int,
    max_tokens: int,
    iters: int,
    seed: int,
    device: torch.device,
    methods: list[str],
    workers: int = 0,
    max_images: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    dist: DistContext | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Fit ``k`` centroids per method on the training images.

    Args:
        model: trained model (head in eval mode is used as is).
        dataset: label-free training dataset.
        k: centroids per method.
        crop: side of the centre views (pixels).
        max_tokens: reservoir capacity per method (over all ranks).
        methods: subset of ``["eigen+kmeans", "kmeans", "spectral"]``
            (``spectral`` uses ``model.spectral`` and samples segments, not patches).
        max_images: visit only the first this many images (``None``: all).
        autocast_dtype: run backbone and head under autocast with this dtype.
        progress: ``progress(batch, total_batches, {"phase": "kmeans"})``.

    Returns:
        ``{method: k×C float32 CPU}`` on rank 0; ``{}`` on other ranks.

    Raises:
        ValueError: fewer tokens than ``k``.
    """
    dist = dist or DistContext()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    views = Subset(CenterViews(dataset, crop), range(dist.rank, n, dist.world_size))
    loader = DataLoader(views, batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    dims = {"eigen+kmeans": model.head.hidden_dim if model.head is not None else 0,
            "kmeans": model.backbone.embed_dim, "spectral": model.backbone.embed_dim}
    capacity = max(1, max_tokens // dist.world_size)
    reservoirs = {m: TokenReservoir(capacity, dims[m], seed=seed + 7919 * dist.rank)
                  for m in methods}
    model.eval()
    for i, batch in enumerate(loader):
        images = batch.to(device, non_blocking=True).float().div_(255)
        with autocast(device, autocast_dtype):
            features = model.backbone(images)
            hidden = model.head(features.stacked)[1] if "eigen+kmeans" in methods else None
        if hidden is not None:
            reservoirs["eigen+kmeans"].add(hidden.float().permute(0, 2, 3, 1).flatten(0, 2))
        if "kmeans" in methods:
            reservoirs["kmeans"].add(features.layers[2].permute(0, 2, 3, 1).flatten(0, 2))
        if "spectral" in methods:
            reservoirs["spectral"].add(segment_features(
                features.kernel.float(), features.layers[2].float(), images,
                *model.spectral, seed=seed))
        if progress is not None and dist.is_main:
            progress(i + 1, len(loader), {"phase": "kmeans"})
    out: dict[str, torch.Tensor] = {}
    for method, reservoir in reservoirs.items():
        tokens = _gather_tokens(reservoir.tokens.float(), dist, device)
        if not dist.is_main:
            continue
        if len(tokens) < k:
            unit = "segments" if method == "spectral" else "patches"
            hint = ", raise --spectral-segments" if method == "spectral" else ""
            raise ValueError(
                f"the k-means pass for {method!r} saw only {len(tokens)} {unit} in {n} images, "
                f"fewer than the {k} centroids requested; lower --kmeans-k{hint} or add images"
            )
        logger.info("fitting %d %s centroids on %d of %d tokens", k, method, len(tokens),
                    reservoir.seen * dist.world_size)
        out[method] = fit_kmeans(tokens, k, iters=iters, seed=seed, device=device)
    dist.barrier()
    return out
