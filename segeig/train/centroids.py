"""The k-means pass after training: centroids for ``eigen+kmeans``, ``kmeans`` and ``spectral``.

One pass over the training images (deterministic views at the working
resolution, centre crop; :class:`segeig.train.loader.CenterViews`) collects
per-patch features — the head's hidden features for ``eigen+kmeans``, the raw
final backbone features for the ``kmeans`` baseline — into a uniform reservoir
sample of at most ``kmeans_tokens`` tokens per method
(:class:`segeig.cluster.TokenReservoir`), then fits k-means (Euclidean, as the
reference code, or spherical) on the training device. The reservoir bounds
memory at ``kmeans_tokens × D`` whatever the dataset size (ADE20K: 20k images ×
1024 patches = 20M tokens → 262k kept by default, ≥ 500 per centroid), and a
uniform sample of that size estimates the centroids of the full token set well.

The ``spectral`` baseline samples segments rather than patches: each view is
cut into per-image spectral segments (exact eigenvectors of its own kernel,
:func:`segeig.spectral.segment_features`, settings from ``model.spectral``)
and the mean final backbone feature of each segment joins its reservoir.

The same pass measures each head output's eigenvalue (:class:`EigenvalueMeter`).

With several processes each rank samples its shard of the images into a
reservoir of ``kmeans_tokens / world_size``; rank 0 gathers them and fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from segeig.backbone import BackboneFeatures
from segeig.cluster import TokenReservoir, fit_kmeans, mean_squared_distance
from segeig.config import KernelConfig, WorkingResolution
from segeig.data import SegDataset
from segeig.feature_cache import FeatureCache
from segeig.kernel import build_kernel, pad_to_grid
from segeig.model import SegEigModel
from segeig.spectral import segment_features
from segeig.train.cached_crops import center_windows
from segeig.train.loader import CenterViews
from segeig.train.runtime import DistContext, autocast

#: ``on_batch(features, images, logits, on_grid)``: ``images`` are ``B×3×H×W``
#: pixels in [0, 1], or with ``on_grid`` the colours on the padded patch grid
#: (``B×3×h×w``, from a feature cache).
BatchHook = Callable[[BackboneFeatures, torch.Tensor, "torch.Tensor | None", bool], None]

logger = logging.getLogger(__name__)


@dataclass
class FittedCentroids:
    """One method's centroids and how patches are scored against them.

    Attributes:
        centroids: ``k×C`` float32 CPU.
        metric: ``euclidean`` or ``cosine``.
        spread: mean squared distance of the fitted tokens to their centroid
            (1.0 for ``cosine``).
    """

    centroids: torch.Tensor
    metric: str = "cosine"
    spread: float = 1.0


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
    resolution: WorkingResolution | None = None,
    metric: str = "euclidean",
    on_batch: BatchHook | None = None,
    cache: FeatureCache | None = None,
) -> dict[str, FittedCentroids]:
    """Fit ``k`` centroids per method on the training images.

    Args:
        model: trained model (head in eval mode is used as is).
        dataset: label-free training dataset.
        k: centroids per method.
        crop: side of the centre views (pixels; at most the working
            resolution's short side).
        max_tokens: reservoir capacity per method (over all ranks).
        methods: subset of ``["eigen+kmeans", "kmeans", "spectral"]``
            (``spectral`` uses ``model.spectral`` and samples segments, not patches).
        max_images: visit only the first this many images (``None``: all).
        autocast_dtype: run backbone and head under autocast with this dtype.
        progress: ``progress(batch, total_batches, {"phase": "kmeans"})``.
        resolution: the working resolution the views are taken at (``None``:
            short side → ``crop``).
        metric: k-means distance of ``eigen+kmeans`` and ``kmeans``; the
            ``spectral`` baseline's segment means are always clustered by cosine.
        on_batch: called with ``(features, images, head logits or None,
            on_grid)`` for every batch of views (see :data:`BatchHook`; to
            measure more in the same pass, e.g. :class:`EigenvalueMeter`).
        cache: read the views' features from this feature cache (its scale-1
            view, centre window; :func:`segeig.train.cached_crops.center_windows`)
            instead of running the backbone.

    Returns:
        ``{method: FittedCentroids}`` on rank 0; ``{}`` on other ranks.

    Raises:
        ValueError: fewer tokens than ``k``.
    """
    dist = dist or DistContext()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    mine = range(dist.rank, n, dist.world_size)
    if cache is None:
        loader = DataLoader(Subset(CenterViews(dataset, crop, resolution), mine),
                            batch_size=batch_size, num_workers=workers,
                            pin_memory=device.type == "cuda")
        total = len(loader)
    else:
        batches = center_windows(cache, list(mine), crop, resolution, batch_size)
        loader, total = (load() for load in batches), len(batches)
    dims = {"eigen+kmeans": model.head.hidden_dim if model.head is not None else 0,
            "kmeans": model.backbone.embed_dim, "spectral": model.backbone.embed_dim}
    capacity = max(1, max_tokens // dist.world_size)
    reservoirs = {m: TokenReservoir(capacity, dims[m], seed=seed + 7919 * dist.rank)
                  for m in methods}
    model.eval()
    for i, batch in enumerate(loader):
        if cache is None:
            images = batch.to(device, non_blocking=True).float().div_(255)
            with autocast(device, autocast_dtype):
                features = model.backbone(images)
        else:
            stacked, kernel, images = cache.split(batch.to(device).float())
            features = BackboneFeatures(layers=tuple(stacked.chunk(3, dim=1)), kernel=kernel)
        with autocast(device, autocast_dtype):
            logits, hidden = (model.head(features.stacked) if model.head is not None
                              and ("eigen+kmeans" in methods or on_batch is not None)
                              else (None, None))
        if on_batch is not None:
            on_batch(features, images, logits, cache is not None)
        if hidden is not None and "eigen+kmeans" in methods:
            reservoirs["eigen+kmeans"].add(hidden.float().permute(0, 2, 3, 1).flatten(0, 2))
        if "kmeans" in methods:
            reservoirs["kmeans"].add(features.layers[2].permute(0, 2, 3, 1).flatten(0, 2))
        if "spectral" in methods:
            # Colours on the padded patch grid the backbone saw (cached ones are
            # on the grid already, which the pixel graph reads as they are).
            padded = images if cache is not None else pad_to_grid(
                images, features.kernel.shape[-2:], model.backbone.patch_size,
                tuple(model.backbone.mean))
            reservoirs["spectral"].add(segment_features(
                features.kernel.float(), features.layers[2].float(), padded,
                *model.spectral, seed=seed))
        if progress is not None and dist.is_main:
            progress(i + 1, total, {"phase": "kmeans"})
    out: dict[str, FittedCentroids] = {}
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
        used = "cosine" if method == "spectral" else metric
        centroids = fit_kmeans(tokens, k, iters=iters, seed=seed, device=device, metric=used)
        spread = (mean_squared_distance(tokens.to(device), centroids.to(device))
                  if used == "euclidean" else 1.0)
        out[method] = FittedCentroids(centroids, used, spread)
    dist.barrier()
    return out


class EigenvalueMeter:
    """Eigenvalue of each head output, measured on the centroid pass's views.

    For every batch the kernel κ of the views is built as in training and each
    output ψ_j = softmax(logits / τ_min)_j over the batch's patches is scaled to
    unit norm; its Rayleigh quotient ψ_jᵀκψ_j estimates the eigenvalue of that
    output. The estimates are averaged over batches. Training's own
    ``diag(R)/t`` comes from Gumbel-noised outputs with columns normalised only
    when their norm exceeds 1, so it neither orders the outputs nor measures
    what inference computes; this does, on deterministic views.

    Args:
        kernel: the training kernel's settings.
        patch: the backbone's patch size; pad_colour: its mean colour (RGB in [0, 1]).
        tau: temperature of the softmax (the head's ``tau_min``).
    """

    def __init__(self, kernel: KernelConfig, patch: int, pad_colour: tuple[float, ...],
                 tau: float) -> None:
        self.kernel, self.patch, self.pad_colour, self.tau = kernel, patch, pad_colour, tau
        self.total: torch.Tensor | None = None
        self.batches = 0

    def __call__(self, features: BackboneFeatures, images: torch.Tensor,
                 logits: torch.Tensor | None, on_grid: bool = False) -> None:
        if logits is None:
            return
        with torch.autocast(images.device.type, enabled=False):
            # Colours already on the patch grid need no padding or resampling.
            kernel = build_kernel(features.kernel.float(), images.float(), self.kernel,
                                  patch=None if on_grid else self.patch,
                                  pad_colour=self.pad_colour)
            psi = torch.softmax(logits.float() / self.tau, dim=1).permute(0, 2, 3, 1)
            psi = psi.reshape(-1, logits.shape[1])
            psi = psi / psi.norm(dim=0).clamp_min(1e-12)
            # Kept on the device: multi-process runs gather it there (NCCL).
            quotients = (psi * torch.sparse.mm(kernel, psi)).sum(0).double()
        self.total = quotients if self.total is None else self.total + quotients
        self.batches += 1

    def eigenvalues(self, dist: DistContext | None = None) -> torch.Tensor | None:
        """``K`` float64 mean estimates over batches (and processes), or None."""
        if self.total is None:
            return None
        total = self.total
        count = torch.tensor([float(self.batches)], dtype=torch.float64, device=total.device)
        if dist is not None and dist.active:
            total = dist.all_gather(total[None]).sum(0)
            count = dist.all_gather(count).sum()
        return (total / count.clamp_min(1)).cpu()
