"""Clustering: k-means and nearest-centroid scores over tokens, and merging one
image's segments into fewer.

Used for the ``eigen+kmeans`` method (k-means on the head's hidden features)
and the ``kmeans`` baseline (k-means on raw final backbone features). Two
distances (:data:`segeig.config.CENTROID_METRICS`): ``euclidean``, the
reference code's plain k-means, and ``cosine`` (spherical k-means on
L2-normalised features), which ignores token norms.

Scaling: :class:`TokenReservoir` keeps a uniform random subsample of at most
``capacity`` tokens from a stream of any length (reservoir sampling), so the fit
costs O(capacity·D) memory whatever the dataset size. Lloyd iterations then run
on the device in chunks.

Merging segments without retraining. A model predicts up to S segment ids (K
eigenfunctions, or k-means centroids). Going from fine to coarse only needs a
distance between the segments found in an image and a clustering of them:

* **Profile** of a segment (:func:`segment_profiles`): the mean, over the
  segment's pixels, of the patch score vector (``S`` values) under each pixel.
  For ``eigen`` that is the segment's mean position in the eigenfunction
  embedding (the space spectral clustering works in); for the centroid methods
  it is the segment's mean similarity to every centroid. Both are computed from
  the same patch scores the segmentation came from, so every method is handled
  alike and nothing beyond one forward pass is needed.
* **Clustering** (:func:`merge_segments`): Ward agglomerative clustering of
  the profiles, cut at ``n`` clusters. Chosen over k-means because it is
  deterministic and hierarchical: the partition at ``n`` is always a
  refinement of the one at ``n - 1``, so moving a "number of segments" slider
  merges segments monotonically instead of reshuffling them.

Merged segments keep the id of their largest member (:func:`merge_label_map`),
so colours stay stable as segments are merged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import cut_tree, linkage

logger = logging.getLogger(__name__)


class TokenReservoir:
    """Uniform random subsample of a stream of token features.

    Args:
        capacity: most tokens kept.
        dim: feature dimension D.
        seed: RNG seed (the sample is deterministic for a given stream).
        dtype: storage dtype (float16 halves memory; fitting converts to float32).
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0, dtype=torch.float16) -> None:
        self.capacity = capacity
        self.buffer = torch.empty(capacity, dim, dtype=dtype)
        self.seen = 0
        self._gen = torch.Generator().manual_seed(seed)

    def add(self, tokens: torch.Tensor) -> None:
        """Offer ``M×D`` tokens (any device/dtype) to the sample."""
        tokens = tokens.detach().to("cpu", self.buffer.dtype)
        free = max(self.capacity - self.seen, 0)
        head, tail = tokens[:free], tokens[free:]
        if len(head):
            self.buffer[self.seen : self.seen + len(head)] = head
            self.seen += len(head)
        if len(tail):
            # Algorithm R, vectorised: token number s (0-based) replaces a slot
            # drawn uniformly from [0, s] when that slot is < capacity.
            positions = torch.arange(self.seen, self.seen + len(tail), dtype=torch.float64)
            slots = (torch.rand(len(tail), generator=self._gen, dtype=torch.float64)
                     * (positions + 1)).long()
            keep = slots < self.capacity
            self.buffer[slots[keep]] = tail[keep]
            self.seen += len(tail)

    @property
    def tokens(self) -> torch.Tensor:
        """The sample, ``min(seen, capacity)×D``."""
        return self.buffer[: min(self.seen, self.capacity)]


def cosine_scores(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row to each centroid.

    Args:
        features: ``N×D`` float.
        centroids: ``S×D`` float (normalised here too).

    Returns:
        ``N×S`` float32 in [-1, 1].
    """
    return F.normalize(features.float(), dim=1) @ F.normalize(centroids.float(), dim=1).T


#: Euclidean scores are ``-d² / (EUCLIDEAN_TEMPERATURE · v)`` with ``v`` the mean
#: squared distance of the fitted tokens to their nearest centroid: a token at a
#: typical distance scores a few logits above its next centroid, like the
#: cosine scores at the model's centroid temperature. Argmax labels do not
#: depend on it; CRF unaries do.
EUCLIDEAN_TEMPERATURE = 0.25


def squared_distances(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``N×S`` float32 squared Euclidean distances of ``N×D`` rows to ``S×D`` centroids."""
    x, c = features.float(), centroids.float().to(features.device)
    d2 = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]
    return d2.clamp_min_(0)


def centroid_score_maps(features: torch.Tensor, centroids: torch.Tensor,
                        metric: str = "cosine", spread: float = 1.0) -> torch.Tensor:
    """Nearest-centroid scores on maps: ``B×D×h×w`` → ``B×S×h×w`` float32.

    Args:
        features: ``B×D×h×w`` token features.
        centroids: ``S×D``.
        metric: ``cosine`` (similarity in [-1, 1]) or ``euclidean``
            (``-d² / (EUCLIDEAN_TEMPERATURE · spread)``).
        spread: the fitted tokens' mean squared distance to their centroid
            (euclidean only; see :func:`mean_squared_distance`).
    """
    b, d, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, d)
    if metric == "euclidean":
        scores = -squared_distances(flat, centroids) / (EUCLIDEAN_TEMPERATURE * max(spread, 1e-12))
    else:
        scores = cosine_scores(flat, centroids.to(flat.device))
    return scores.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator, metric: str) -> torch.Tensor:
    """k-means++ seeding (distance: 1 − cosine on unit vectors, or squared Euclidean)."""
    n = x.shape[0]

    def dist(i: int) -> torch.Tensor:
        if metric == "euclidean":
            return ((x - x[i]) ** 2).sum(1)
        return 1 - x @ x[i]

    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = dist(first)
    for _ in range(1, k):
        weights = closest.clamp_min(0).double().cpu()
        if float(weights.sum()) <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(weights, 1, generator=gen))
        centroids.append(x[idx])
        closest = torch.minimum(closest, dist(idx))
    return torch.stack(centroids)


def _assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, chunk_size: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row: ``(assignment N int64, goodness N)``, where
    goodness is the cosine (higher is better) or minus the squared distance."""
    assign = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    best = torch.empty(x.shape[0], device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        part = x[start : start + chunk_size]
        sims = part @ centroids.T if metric == "cosine" else -squared_distances(part, centroids)
        best[start : start + chunk_size], assign[start : start + chunk_size] = sims.max(1)
    return assign, best


def fit_kmeans(
    tokens: torch.Tensor,
    k: int,
    iters: int = 30,
    seed: int = 0,
    device: str | torch.device = "cpu",
    chunk_size: int = 65536,
    metric: str = "cosine",
) -> torch.Tensor:
    """k-means (Lloyd) with k-means++ seeding.

    Args:
        tokens: ``N×D`` features (e.g. :attr:`TokenReservoir.tokens`); N ≥ k.
        k: number of centroids.
        iters: Lloyd iterations (stops early when assignments stop changing).
        seed: RNG seed for seeding.
        device: where to compute.
        chunk_size: rows assigned at once (bounds the N×k score buffer).
        metric: ``cosine`` (spherical k-means: unit-norm rows and centroids)
            or ``euclidean`` (plain k-means, the reference code's).

    Returns:
        ``k×D`` float32 centroids on CPU (unit-norm for ``cosine``). Empty
        clusters are re-seeded at the points farthest from their centroid.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"k-means metric must be cosine or euclidean, not {metric!r}")
    if tokens.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} tokens, got {tokens.shape[0]}")
    x = tokens.to(device, torch.float32)
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeans_pp_init(x, k, gen, metric)
    assign = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    for it in range(iters):
        new_assign, best = _assign(x, centroids, metric, chunk_size)
        changed = int((new_assign != assign).sum())
        assign = new_assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            # Re-seed empty clusters at the worst-fitted points.
            far = best.topk(len(empty), largest=False).indices
            sums[empty], counts[empty] = x[far], 1
        if metric == "cosine":
            centroids = F.normalize(sums, dim=1)
        else:
            centroids = sums / counts.clamp_min(1)[:, None].float()
        logger.debug("k-means iter %d: %d assignments changed", it, changed)
        if changed == 0:
            break
    return centroids.cpu()


def mean_squared_distance(tokens: torch.Tensor, centroids: torch.Tensor,
                          chunk_size: int = 65536) -> float:
    """Mean squared Euclidean distance of ``N×D`` tokens to their nearest centroid."""
    x = tokens.float()
    _, best = _assign(x, centroids.float().to(x.device), "euclidean", chunk_size)
    return float((-best).mean())


def segment_profiles(
    labels: np.ndarray, scores: np.ndarray | torch.Tensor, patch: int,
    in_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean patch-score vector of every segment present in a label map.

    Args:
        labels: ``H×W`` integer segment ids (any non-negative values, e.g. an
            argmax or CRF output).
        scores: ``S×h×w`` float patch scores of the same image, with
            ``h = ceil(H/p)``, ``w = ceil(W/p)`` (as from
            ``Segmenter.patch_scores``); pixel ``(y, x)`` lies in patch
            ``(y // p, x // p)``.
        patch: patch size p in pixels.
        in_size: ``(H', W')`` of the network input the scores came from, when
            the labels are at another size (the image was brought to a working
            resolution): pixel ``(y, x)`` then lies in patch
            ``(⌊(y + ½)·H'/H⌋ // p, ⌊(x + ½)·W'/W⌋ // p)``.

    Returns:
        ``(ids, profiles, sizes)``: ``ids`` M int64 sorted segment ids present,
        ``profiles`` ``M×S`` float64 (the mean of the scores of the patches
        under each pixel of the segment), ``sizes`` M int64 pixel counts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer H×W array, got {labels.dtype} {labels.shape}")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise ValueError(f"scores must be S×h×w, got shape {scores.shape}")
    height, width = labels.shape
    in_h, in_w = in_size or (height, width)
    s, h, w = scores.shape
    if h != -(-in_h // patch) or w != -(-in_w // patch):
        raise ValueError(
            f"scores grid {h}×{w} does not match a {in_h}×{in_w} input with patch {patch}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    ids, index = np.unique(labels, return_inverse=True)
    index = index.reshape(height, width)
    # Pixel → patch index; counting (segment, patch) pairs turns the mean over
    # pixels into a small M×(h·w) matrix product instead of an S×H×W upsample.
    rows = np.floor((np.arange(height) + 0.5) * (in_h / height)).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) * (in_w / width)).astype(np.int64)
    patch_row = np.minimum(rows // patch, h - 1)[:, None]
    patch_col = np.minimum(cols // patch, w - 1)[None, :]
    patch_index = patch_row * w + patch_col
    pair = index.astype(np.int64) * (h * w) + patch_index
    counts = np.bincount(pair.ravel(), minlength=len(ids) * h * w).reshape(len(ids), h * w)
    sizes = counts.sum(axis=1)
    profiles = counts @ scores.reshape(s, h * w).T / sizes[:, None]
    return ids.astype(np.int64), profiles, sizes.astype(np.int64)


def merge_segments(profiles: np.ndarray, n: int) -> np.ndarray:
    """Group M segments into ``min(n, M)`` clusters by Ward clustering of their profiles.

    Args:
        profiles: ``M×C`` float feature vectors, one per segment (e.g. from
            :func:`segment_profiles`, or k-means centroids).
        n: wanted number of groups, ≥ 1.

    Returns:
        ``M`` int64 group numbers in ``[0, min(n, M))``, numbered in order of
        their first member. Cuts of the same profiles at decreasing ``n`` are
        nested (each group at ``n - 1`` is a union of groups at ``n``).
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 2:
        raise ValueError(f"profiles must be M×C, got shape {profiles.shape}")
    if n < 1:
        raise ValueError(f"number of groups must be >= 1, got {n}")
    m = profiles.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    if n >= m:
        return np.arange(m, dtype=np.int64)
    if not np.isfinite(profiles).all():
        raise ValueError("profiles contain NaN or infinite values")
    tree = linkage(profiles, method="ward")
    groups = cut_tree(tree, n_clusters=n).ravel()
    # Renumber in order of first member so the numbering does not depend on
    # scipy's internal order.
    _, first = np.unique(groups, return_index=True)
    order = np.argsort(np.argsort(first))
    remap = dict(zip(np.unique(groups), order, strict=True))
    return np.array([remap[g] for g in groups], dtype=np.int64)


@dataclass
class MergeResult:
    """Outcome of :func:`merge_label_map`.

    Attributes:
        labels: ``H×W`` int32 merged label map; every merged segment carries
            the id of its largest member.
        members: representative id → sorted list of the original ids it
            covers (itself included), one entry per segment left.
    """

    labels: np.ndarray
    members: dict[int, list[int]]


def merge_label_map(
    labels: np.ndarray,
    ids: np.ndarray,
    profiles: np.ndarray,
    sizes: np.ndarray,
    n: int | None,
) -> MergeResult:
    """Merge the segments of a label map down to at most ``n``.

    Args:
        labels: ``H×W`` integer segment ids.
        ids, profiles, sizes: from :func:`segment_profiles` of ``labels``.
        n: number of segments to keep; ``None`` (or ≥ the number present)
            keeps all of them.

    Returns:
        :class:`MergeResult`.
    """
    labels = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(ids) == len(sizes) == len(profiles):
        raise ValueError(f"{len(ids)} ids, {len(sizes)} sizes, {len(profiles)} profiles")
    if n is None or n >= len(ids):
        return MergeResult(labels.astype(np.int32, copy=True),
                           {int(i): [int(i)] for i in ids})
    groups = merge_segments(profiles, n)
    representative = np.empty(len(ids), dtype=np.int64)
    members: dict[int, list[int]] = {}
    for g in range(int(groups.max()) + 1):
        idx = np.flatnonzero(groups == g)
        rep = int(ids[idx[np.argmax(sizes[idx])]])
        representative[idx] = rep
        members[rep] = sorted(int(i) for i in ids[idx])
    # ids is sorted, so searchsorted maps each label to its row in ids.
    rows = np.clip(np.searchsorted(ids, labels), 0, len(ids) - 1)
    if not np.array_equal(ids[rows], labels):
        raise ValueError("labels hold ids missing from `ids`; compute both from the same map")
    merged = representative[rows]
    return MergeResult(merged.astype(np.int32), members)
