"""A permutohedral lattice in torch tensor operations (CPU and CUDA).

High-dimensional Gaussian filtering (Adams, Baek & Davis, "Fast High-Dimensional
Filtering Using the Permutohedral Lattice", 2010), built exactly as
Krähenbühl's densecrf (the code inside pydensecrf) builds it, so that
:class:`PermutohedralLattice` ``.filter`` returns the same numbers as
pydensecrf's lattice up to float rounding. That is what lets the torch CRF
agree with the reference backend pixel for pixel instead of approximately.

Each point is lifted onto the hyperplane ``Σ x = 0`` of ``R^(d+1)``, found in a
simplex of the lattice, and splatted onto its ``d + 1`` vertices with
barycentric weights; the lattice is blurred with ``[1/2, 1, 1/2]`` along each
of its ``d + 1`` axes and read back (sliced) with the same weights. Only the
vertices that some point touches exist; they are found by sorting packed
integer keys (no hash table), and the blur finds neighbours by binary search.

Splatting and slicing are sparse matrices (CSR) so a filter pass is three
kinds of dense work on ``values``: two sparse×dense products and ``d + 1``
gathers, each linear in the number of points and of channels.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["PermutohedralLattice"]

_KEY_BITS = 62  # packed vertex keys must fit an int64 with room for the ±1 neighbours


class PermutohedralLattice:
    """The lattice of one set of points, reusable for any number of filter passes.

    Args:
        features: float ``N×d`` positions, already divided by the kernel's
            standard deviations (the filter approximates
            ``exp(-|f_i - f_j|² / 2)``).

    Raises:
        ValueError: features so spread out that vertex keys overflow 62 bits
            (e.g. a standard deviation of a fraction of a pixel on a huge
            image); filter a smaller image or use larger deviations.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must be N×d with N >= 1, got {tuple(features.shape)}")
        n, d = features.shape
        d1, dev = d + 1, features.device
        self.num_points, self.dim = n, d
        self._buffers: list[torch.Tensor] | None = None
        # Elevate onto Σx = 0, scaled so that the whole splat-blur-slice has
        # variance 1 per dimension (densecrf's scale factors).
        k = torch.arange(d, dtype=torch.float64)
        scale = (d1 * math.sqrt(2.0 / 3.0) / torch.sqrt((k + 1) * (k + 2))).float().to(dev)
        lift = torch.triu(torch.ones(d1, d, device=dev))  # lift[j, k] = 1 for k >= j
        lift[0] = 1.0
        j = torch.arange(1, d1, device=dev)
        lift[j, j - 1] = -j.float()
        # float32 keeps ~1/8 lattice unit of precision up to 2^20: beyond that
        # the rounding below would pick wrong simplices.
        if float(features.abs().amax()) * float(scale.amax()) * d1 > 2.0**20:
            raise ValueError("lattice features span too large to index; filter a smaller "
                             "image or use larger kernel standard deviations")
        elevated = (features.float() * scale) @ lift.T  # N×(d+1)
        # Nearest remainder-0 lattice point (ties round down, as densecrf does).
        rem0 = torch.ceil(elevated / d1 - 0.5) * d1
        excess = torch.round(rem0.sum(1) / d1).long()
        # rank[i]: position of coordinate i when the residuals are sorted in
        # decreasing order, ties broken by index — what densecrf's pairwise
        # loop counts, and what a stable descending sort gives.
        order = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
        positions = torch.arange(d1, device=dev).expand(n, d1)
        rank = torch.empty_like(order).scatter_(1, order, positions) + excess[:, None]
        wrap = (rank < 0).long() - (rank > d).long()  # back onto the plane
        rank += wrap * d1
        rem0 += wrap.float() * d1
        # Barycentric weights of the d + 1 vertices of the enclosing simplex.
        t = (elevated - rem0) / d1
        bary = torch.zeros(n, d1 + 1, device=dev)
        bary.scatter_add_(1, d - rank, t)
        bary.scatter_add_(1, d - rank + 1, -t)
        bary[:, 0] += 1.0 + bary[:, d1]
        bary = bary[:, :d1].contiguous()
        # Vertex r of the simplex is rem0 + (canonical simplex r permuted by
        # rank): + r, or + r - (d + 1) where rank > d - r. A vertex's key is
        # its first d coordinates (Σ = 0 implies the last) packed into one
        # int64; each lies in [rem0 - d - 1, rem0 + d], widened by d + 1 for
        # the blur's neighbours.
        base = rem0[:, :d].long()
        lo = base.amin(0) - 2 * d1
        span = (base.amax(0) + 2 * d1 - lo + 1).tolist()
        if sum(math.log2(s) for s in span) > _KEY_BITS:
            raise ValueError("lattice features span too large to index; filter a smaller "
                             "image or use larger kernel standard deviations")
        strides = [math.prod(span[i + 1:]) for i in range(d)]
        self._strides = torch.tensor(strides, dtype=torch.long, device=dev)
        r = torch.arange(d1, device=dev)
        keys = ((base - lo) * self._strides).sum(1, keepdim=True) + r * sum(strides)
        for i in range(d):
            keys -= (rank[:, i:i + 1] > d - r).long() * (d1 * strides[i])
        packed, order = keys.reshape(-1).sort()
        self._keys, where, counts = torch.unique_consecutive(packed, return_inverse=True,
                                                             return_counts=True)
        n_vert = self.num_vertices = len(self._keys)
        vertex = torch.empty_like(where).index_copy_(0, order, where)  # per (point, corner)
        # Splat: vertices × points, rows in key order; slice: its transpose.
        # The 1/(1 + 2^-d) factor is densecrf's correction of the blur's gain.
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        weights = bary.reshape(-1)
        crow = torch.zeros(n_vert + 1, dtype=torch.long, device=dev)
        crow[1:] = counts.cumsum(0)
        with warnings.catch_warnings():  # "CSR support is in beta": it is used as documented
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            self._splat = torch.sparse_csr_tensor(
                crow, order // d1, weights.index_select(0, order), (n_vert, n),
                check_invariants=False)  # valid by construction; checking costs a pass
            self._slice = torch.sparse_csr_tensor(
                torch.arange(0, n * d1 + 1, d1, device=dev), vertex, weights * alpha,
                (n, n_vert), check_invariants=False)
        # Neighbours along lattice axis a differ by ±(d, -1, ..., -1) (the d
        # comes at position a; none for a = d). Packing is linear and the key
        # range has a margin, so a neighbour's packed key is the vertex's plus
        # a constant. Only "below" is searched: v's above is u where u's below
        # is v. A missing neighbour points at an all-zero row (num_vertices).
        self._neighbours = []
        ids = torch.arange(n_vert, device=dev)
        for a in range(d1):
            step = torch.full((d,), -1, dtype=torch.long, device=dev)
            if a < d:
                step[a] = d
            below = self._find(self._keys + int((step * self._strides).sum()))
            above = torch.full_like(below, n_vert)
            found = below < n_vert
            above[below[found]] = ids[found]
            self._neighbours.append((below, above))

    def _find(self, packed: torch.Tensor) -> torch.Tensor:
        """Vertex ids of packed keys, ``num_vertices`` where absent."""
        pos = torch.searchsorted(self._keys, packed).clamp_(max=self.num_vertices - 1)
        return torch.where(self._keys[pos] == packed, pos, self.num_vertices)

    def filter(self, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian-filter per-point values (every channel independently).

        Args:
            values: float32 ``N×C`` on the lattice's device, contiguous.
            out: optional float32 ``N×C`` buffer for the result.

        Returns:
            float32 ``N×C``: ``≈ Σ_j exp(-|f_i - f_j|² / 2) · values_j`` including
            ``j = i``, with the lattice's approximation (as pydensecrf).
        """
        n_vert, channels = self.num_vertices, values.shape[1]
        # Work buffers are kept between calls: mean field filters the same
        # shapes every iteration, and fresh multi-megabyte tensors cost page
        # faults that took longer than the arithmetic (measured on CPU).
        if self._buffers is None or self._buffers[0].shape[1] != channels:
            self._buffers = [values.new_zeros(n_vert + 1, channels) for _ in range(3)]
        grid, spare, other = self._buffers
        # addmm(out=) with beta=0 writes into the buffer; sparse.mm would allocate.
        torch.addmm(grid[:n_vert], self._splat, values, beta=0, out=grid[:n_vert])
        for below, above in self._neighbours:  # row n_vert stays 0: "no neighbour"
            torch.index_select(grid, 0, below, out=spare[:n_vert])
            torch.index_select(grid, 0, above, out=other[:n_vert])
            spare[:n_vert].add_(other[:n_vert])
            torch.add(grid[:n_vert], spare[:n_vert], alpha=0.5, out=spare[:n_vert])
            grid, spare = spare, grid
        self._buffers = [grid, spare, other]
        if out is None:
            out = values.new_empty(self.num_points, channels)
        return torch.addmm(out, self._slice, grid[:n_vert], beta=0, out=out)
