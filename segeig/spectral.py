"""Exact spectral clustering: the classic transductive baseline.

What the neural eigenfunctions replace. Two uses:

* ``spectral`` method (per image, Deep-Spectral-Methods recipe): build the
  same kernel as training on one image's patches (feature graph + pixel
  graph), take its top eigenvectors with an exact sparse solver, cluster their
  rows into segments, then give each segment a dataset-level id: the nearest of
  K global centroids fitted by k-means over segment features (mean final
  backbone features) of a training set.
* ``spectral-dataset``: one eigendecomposition of the kernel over all patches
  of a small set — the ground truth the learned eigenfunctions approximate.

Eigenvectors come from ``scipy.sparse.linalg.eigsh`` (Lanczos) on the CSR
kernel, or dense ``numpy.linalg.eigh`` for tiny graphs. Rows are clustered
Ng–Jordan–Weiss style: row-normalised eigenvector embeddings, k-means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from segeig.cluster import fit_kmeans
from segeig.config import KernelConfig, SpectralConfig
from segeig.kernel import (
    build_kernel,
    feature_knn_graph,
    pixel_knn_graph,
    symmetric_normalize,
)

logger = logging.getLogger(__name__)

#: Graphs up to this many nodes use a dense eigensolver (faster, exact).
DENSE_LIMIT = 256


def to_scipy(kernel: torch.Tensor) -> scipy.sparse.csr_matrix:
    """Sparse COO torch tensor → float64 CSR matrix."""
    kernel = kernel.coalesce().cpu()
    idx = kernel.indices().numpy()
    return scipy.sparse.csr_matrix(
        (kernel.values().double().numpy(), (idx[0], idx[1])), shape=tuple(kernel.shape)
    )


def top_eigenvectors(kernel: torch.Tensor, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Largest-eigenvalue eigenpairs of a symmetric sparse kernel.

    Args:
        kernel: sparse COO ``N×N`` symmetric float tensor.
        n: eigenpairs wanted (clipped to N).
        seed: start vector seed for Lanczos (results are then deterministic).

    Returns:
        ``(values n, vectors N×n)`` float64, eigenvalues descending.
    """
    size = kernel.shape[0]
    n = min(n, size)
    matrix = to_scipy(kernel)
    if size <= DENSE_LIMIT or n >= size - 1:
        values, vectors = np.linalg.eigh(matrix.toarray())
        values, vectors = values[-n:], vectors[:, -n:]
    else:
        start = np.random.default_rng(seed).standard_normal(size)
        values, vectors = scipy.sparse.linalg.eigsh(matrix, k=n, which="LA", v0=start)
    order = np.argsort(-values)
    return values[order], vectors[:, order]


def embedding_scores(vectors: np.ndarray, n_clusters: int, iters: int = 20,
                     seed: int = 0) -> torch.Tensor:
    """Ng–Jordan–Weiss clustering of eigenvector rows, as soft scores.

    Args:
        vectors: ``N×n`` eigenvector embedding.
        n_clusters: number of clusters S (clipped to N).

    Returns:
        ``N×S`` float32 cosine similarities in [-1, 1] of each row-normalised
        row to the spherical k-means centroids; the argmax is the cluster.
    """
    rows = torch.from_numpy(np.ascontiguousarray(vectors)).float()
    n_clusters = min(n_clusters, rows.shape[0])
    centroids = fit_kmeans(rows, n_clusters, iters=iters, seed=seed)
    return F.normalize(rows, dim=1) @ centroids.T


def cluster_embedding(vectors: np.ndarray, n_clusters: int, iters: int = 20,
                      seed: int = 0) -> np.ndarray:
    """Ng–Jordan–Weiss clustering of eigenvector rows.

    Args:
        vectors: ``N×n`` eigenvector embedding.
        n_clusters: number of clusters (clipped to N).

    Returns:
        ``N`` int64 cluster ids in ``[0, n_clusters)``.
    """
    return embedding_scores(vectors, n_clusters, iters, seed).argmax(1).numpy()


def spectral_clustering(kernel: torch.Tensor, n_clusters: int, n_eigenvectors: int | None = None,
                        iters: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact spectral clustering of a kernel's nodes.

    Returns:
        ``(labels N int64, eigenvalues n float64 descending)``.
    """
    values, vectors = top_eigenvectors(kernel, n_eigenvectors or n_clusters, seed)
    return cluster_embedding(vectors, n_clusters, iters, seed), values


def image_segments(
    kernel_features: torch.Tensor,
    image: torch.Tensor,
    kernel_config: KernelConfig,
    config: SpectralConfig,
    seed: int = 0,
) -> np.ndarray:
    """Per-image spectral segments on the patch grid.

    Args:
        kernel_features: ``1×D×h×w`` kernel features of one image.
        image: ``1×3×H×W`` float RGB in [0, 1].

    Returns:
        ``h·w`` int64 segment ids (row-major), ``< segments_per_image``.
    """
    local = replace(kernel_config, k_feat=config.k_feat)
    kernel = build_kernel(kernel_features, image, local)
    labels, _ = spectral_clustering(kernel, config.segments_per_image, config.n_eigenvectors,
                                    config.kmeans_iters, seed)
    return labels


def segment_means(features: torch.Tensor, segments: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Mean feature of each non-empty segment.

    Args:
        features: ``D×h×w`` (or ``D×N``) features of one image.
        segments: ``N`` segment ids.

    Returns:
        ``(means S'×D float32, ids S')`` for the S' segments that have pixels;
        ``ids`` are the original segment ids in ascending order.
    """
    flat = features.reshape(features.shape[0], -1).T.float()
    seg = torch.from_numpy(segments).to(flat.device)
    ids = torch.unique(seg)
    sums = torch.zeros(int(seg.max()) + 1, flat.shape[1], device=flat.device).index_add_(0, seg,
                                                                                      flat)
    counts = torch.bincount(seg).float()
    return (sums[ids] / counts[ids, None]), ids.cpu().numpy()


def spectral_scores(
    kernel_features: torch.Tensor,
    final_features: torch.Tensor,
    images: torch.Tensor,
    centroids: torch.Tensor,
    kernel_config: KernelConfig,
    config: SpectralConfig,
) -> torch.Tensor:
    """Dataset-level scores for the ``spectral`` method.

    Every patch gets the cosine similarity of its segment's mean final feature
    to each global centroid, so the argmax is the segment's nearest centroid.

    Args:
        kernel_features: ``B×Dk×h×w``; final_features: ``B×D×h×w``;
        images: ``B×3×H×W`` in [0, 1]; centroids: ``S×D``.

    Returns:
        ``B×S×h×w`` float32 cosine similarities in [-1, 1].
    """
    b, d, h, w = final_features.shape
    out = []
    for i in range(b):
        segments = image_segments(kernel_features[i : i + 1], images[i : i + 1], kernel_config,
                                  config)
        means, ids = segment_means(final_features[i], segments)
        sims = F.normalize(means, dim=1) @ F.normalize(centroids.to(means), dim=1).T  # S'×S
        lookup = torch.zeros(int(ids.max()) + 1, dtype=torch.long, device=sims.device)
        lookup[torch.from_numpy(ids).to(sims.device)] = torch.arange(len(ids), device=sims.device)
        per_patch = sims[lookup[torch.from_numpy(segments).to(sims.device)]]  # N×S
        out.append(per_patch.T.reshape(-1, h, w))
    return torch.stack(out)


def segment_features(
    kernel_features: torch.Tensor,
    final_features: torch.Tensor,
    images: torch.Tensor,
    kernel_config: KernelConfig,
    config: SpectralConfig,
    seed: int = 0,
) -> torch.Tensor:
    """Mean final feature of every per-image spectral segment of a batch.

    What the ``spectral`` centroids are fitted on (one row per segment).

    Args:
        kernel_features: ``B×Dk×h×w``; final_features: ``B×D×h×w``;
        images: ``B×3×H×W`` in [0, 1].

    Returns:
        ``S'×D`` float32 on ``final_features.device``, S' ≤ B·segments_per_image.
    """
    rows = []
    for i in range(final_features.shape[0]):
        segments = image_segments(kernel_features[i : i + 1].float(), images[i : i + 1].float(),
                                  kernel_config, config, seed)
        rows.append(segment_means(final_features[i], segments)[0])
    return torch.cat(rows)


def fit_spectral_centroids(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    n_centroids: int,
    kernel_config: KernelConfig,
    config: SpectralConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """k-means over per-image segment features: the ``spectral`` method's centroids.

    Args:
        batches: ``(kernel_features B×Dk×h×w, final_features B×D×h×w,
            images B×3×H×W)`` from the backbone over a training set.
        n_centroids: K global clusters.

    Returns:
        ``K×D`` float32 unit-norm centroids.
    """
    collected = [segment_features(kernel_features, final_features, images, kernel_config,
                                  config, seed).cpu()
                 for kernel_features, final_features, images in batches]
    if not collected:
        raise ValueError("no images to fit spectral centroids on")
    features = torch.cat(collected)
    if features.shape[0] < n_centroids:
        raise ValueError(
            f"only {features.shape[0]} image segments for {n_centroids} centroids: use more "
            "images, more segments per image, or fewer centroids"
        )
    logger.info("spectral: k-means of %d segments into %d clusters", len(features), n_centroids)
    return fit_kmeans(features, n_centroids, seed=seed, device=device)


def dataset_spectral_clustering(
    kernel_features: torch.Tensor,
    images: torch.Tensor | None,
    kernel_config: KernelConfig,
    n_clusters: int,
    n_eigenvectors: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``spectral-dataset``: one exact decomposition of the kernel over a whole set.

    The kernel is exactly the training kernel with the whole set as one batch,
    so its eigenfunctions are what a head trained on that set approximates.

    Args:
        kernel_features: ``B×D×h×w`` for every image of the set.
        images: ``B×3×H×W`` in [0, 1] (the pixel graph), or ``None``.
        n_clusters: clusters of the eigenvector rows.
        n_eigenvectors: embedding size (default ``n_clusters``).

    Returns:
        ``(labels B×h×w int64, eigenvalues descending)``.
    """
    b, _, h, w = kernel_features.shape
    kernel = build_kernel(kernel_features, images, kernel_config)
    labels, values = spectral_clustering(kernel, n_clusters, n_eigenvectors, seed=seed)
    return labels.reshape(b, h, w), values


def set_kernel(
    features: Sequence[torch.Tensor],
    images: Sequence[torch.Tensor] | None,
    config: KernelConfig,
) -> torch.Tensor:
    """The training kernel over a set of images of any sizes, as one batch.

    Equal to :func:`segeig.kernel.build_kernel` on the stacked set when all
    grids are the same size; here each image may have its own grid.

    Args:
        features: ``D×h_i×w_i`` kernel features per image.
        images: ``3×H_i×W_i`` float RGB in [0, 1] per image (any size: each is
            resampled to its grid for the pixel graph), or ``None``.
        config: graph settings.

    Returns:
        Coalesced sparse ``N×N`` float32, N = Σ h_i·w_i, image-major then
        row-major over each grid.
    """
    flat = torch.cat([f.reshape(f.shape[0], -1).T.float() for f in features])
    n = flat.shape[0]
    kernel = symmetric_normalize(feature_knn_graph(flat, config.k_feat, config.chunk_size))
    if images is None or config.alpha <= 0 or not config.pixel_passes:
        return kernel
    parts, offset = [], 0
    for feature, image in zip(features, images, strict=True):
        grid = tuple(feature.shape[-2:])
        graph = pixel_knn_graph(image[None].float(), grid, config.pixel_passes,
                                config.chunk_size)
        parts.append(graph.indices() + offset)
        offset += grid[0] * grid[1]
    indices = torch.cat(parts, dim=1)
    # Offsets of in-range per-image indices: skip the costly invariant check.
    pixel = torch.sparse_coo_tensor(indices, torch.ones(indices.shape[1], device=indices.device),
                                    (n, n), check_invariants=False).coalesce()
    return (kernel + symmetric_normalize(pixel) * config.alpha).coalesce()


def spectral_cluster_set(
    features: Sequence[torch.Tensor],
    images: Sequence[torch.Tensor] | None,
    kernel_config: KernelConfig,
    n_clusters: int,
    n_eigenvectors: int | None = None,
    seed: int = 0,
) -> tuple[list[torch.Tensor], np.ndarray]:
    """:func:`dataset_spectral_clustering` for images of different sizes, with scores.

    Args:
        features: ``D×h_i×w_i`` kernel features per image.
        images: ``3×H_i×W_i`` in [0, 1] per image, or ``None``.
        n_clusters: clusters S of the eigenvector rows.
        n_eigenvectors: embedding size (default ``n_clusters``).

    Returns:
        ``(scores, eigenvalues)``: one ``S×h_i×w_i`` float32 CPU tensor per
        image (cosine similarity of the patch's embedding to each cluster
        centre; the argmax over S is its cluster) and the eigenvalues,
        descending.
    """
    kernel = set_kernel(features, images, kernel_config)
    values, vectors = top_eigenvectors(kernel, n_eigenvectors or n_clusters, seed)
    scores = embedding_scores(vectors, n_clusters, seed=seed)
    out, offset = [], 0
    for feature in features:
        h, w = feature.shape[-2:]
        out.append(scores[offset : offset + h * w].T.reshape(-1, h, w).contiguous())
        offset += h * w
    return out, values


#: Bytes per (token × feature neighbour) at the peak of an exact decomposition
#: (kernel build with its coalesced copies, float64 CSR copy, Lanczos), measured
#: on CPU with ``scripts/benchmark.py``: 190–225 between 8k and 33k tokens at
#: k_feat = 256 (docs/benchmarks.md).
EXACT_BYTES_PER_EDGE = 225
#: Bytes per token besides the feature edges (pixel graph, eigenvectors, labels).
EXACT_BYTES_PER_TOKEN = 2048


def exact_spectral_bytes(n_tokens: int, k_feat: int, chunk_size: int = 1024) -> int:
    """Estimated peak extra memory (bytes) of an exact decomposition over ``n_tokens`` patches.

    Sparse edges dominate (``n·k_feat`` feature edges stored both ways, their
    coalesced copies, the float64 CSR matrix); the similarity chunk adds
    ``chunk_size·n`` float32. A dense ``eigh`` would need ``8·n²`` bytes instead.
    """
    k = min(k_feat, max(n_tokens - 1, 1))
    return (EXACT_BYTES_PER_EDGE * k + 4 * min(chunk_size, n_tokens)
            + EXACT_BYTES_PER_TOKEN) * n_tokens
