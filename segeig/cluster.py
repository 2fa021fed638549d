"""Spherical k-means in torch, and nearest-centroid scoring.

Used for the ``eigen+kmeans`` method (k-means on the head's hidden features)
and the ``kmeans`` baseline (k-means on raw final backbone features). Features
are L2-normalised, so distances are cosine: ViT token norms vary with position
and carry little semantic signal.

Scaling: :class:`TokenReservoir` keeps a uniform random subsample of at most
``capacity`` tokens from a stream of any length (reservoir sampling), so the fit
costs O(capacity·D) memory whatever the dataset size. Lloyd iterations then run
on the device in chunks.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

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


def centroid_score_maps(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """:func:`cosine_scores` on maps: ``B×D×h×w`` → ``B×S×h×w``."""
    b, d, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, d)
    scores = cosine_scores(flat, centroids.to(flat.device))
    return scores.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on unit vectors (distance = 1 − cosine)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = 1 - x @ x[first]
    for _ in range(1, k):
        weights = closest.clamp_min(0).double().cpu()
        if float(weights.sum()) <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(weights, 1, generator=gen))
        centroids.append(x[idx])
        closest = torch.minimum(closest, 1 - x @ x[idx])
    return torch.stack(centroids)


def fit_kmeans(
    tokens: torch.Tensor,
    k: int,
    iters: int = 30,
    seed: int = 0,
    device: str | torch.device = "cpu",
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Spherical k-means (Lloyd) with k-means++ seeding.

    Args:
        tokens: ``N×D`` features (e.g. :attr:`TokenReservoir.tokens`); N ≥ k.
        k: number of centroids.
        iters: Lloyd iterations (stops early when assignments stop changing).
        seed: RNG seed for seeding.
        device: where to compute.
        chunk_size: rows assigned at once (bounds the N×k score buffer).

    Returns:
        ``k×D`` float32 unit-norm centroids on CPU. Empty clusters are re-seeded
        at the points farthest from their centroid.
    """
    if tokens.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} tokens, got {tokens.shape[0]}")
    x = F.normalize(tokens.to(device, torch.float32), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeans_pp_init(x, k, gen)
    assign = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    for it in range(iters):
        new_assign = torch.empty_like(assign)
        best = torch.empty(x.shape[0], device=x.device)
        for start in range(0, x.shape[0], chunk_size):
            sims = x[start : start + chunk_size] @ centroids.T
            best[start : start + chunk_size], new_assign[start : start + chunk_size] = sims.max(1)
        changed = int((new_assign != assign).sum())
        assign = new_assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            # Re-seed empty clusters at the worst-fitted points.
            far = best.topk(len(empty), largest=False).indices
            sums[empty] = x[far]
        centroids = F.normalize(sums, dim=1)
        logger.debug("k-means iter %d: %d assignments changed", it, changed)
        if changed == 0:
            break
    return centroids.cpu()
