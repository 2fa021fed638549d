"""Patch-grid scores → the winning segment at every pixel, cheaply and exactly.

Evaluation needs the argmax of a model's patch-grid scores (``S×h×w``)
bilinearly resampled to every labelled pixel. Done naively (sampling all S
scores everywhere, :func:`segeig.resample.grid.pixel_scores`) that costs
``S·H·W`` work — about half a ViT-S forward at 320 px with S = 256 — so
evaluation would be limited by resampling, not by the model. Two things make
it cheap and keep it exact:

* **Candidate pruning.** A bilinear sample is a convex combination of the
  (up to) four grid points around it, so segment ``c`` can win a pixel of a
  grid cell only if its maximum over the cell's corners reaches the largest
  corner-minimum of any segment in that cell. Segments that fail this in every
  cell can never be the argmax and are dropped before resampling; typically a
  few dozen of hundreds survive.
* **Separable interpolation as two small matrix products** (rows then
  columns), which handles any output size — the ``full`` protocol samples the
  grid of a resized image at the pixels of the original one — and works in
  bands of rows so memory is bounded.

The sampling convention is :mod:`segeig.resample.grid`'s. The same pruning
idea resamples a pixel map (CRF marginals) to another size:
:func:`resampled_argmax`.
"""

from __future__ import annotations

import numpy as np
import torch

from segeig.resample.grid import BAND_ELEMENTS, grid_ratios, interp_matrix, source_coords

#: Output pixels :func:`pixel_labels` resolves at once (its int64 temporaries: ~64 MiB).
BAND_PIXELS = 1 << 22


def _axis_cells(n_out: int, n_grid: int, ratio: float, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Split one output axis into cells of constant interpolation corners.

    Cell ``k`` (``0 ≤ k ≤ n_grid``) holds the output pixels whose source
    coordinate lies between grid points ``k − 1`` and ``k``; cells ``0`` and
    ``n_grid`` are the clamped margins, where both corners are the edge point.

    Returns:
        ``(corner_index, cell, frac, offset, span)``: long ``(n_grid + 1)×2`` grid
        indices of each cell's two corners; per output pixel its cell, its
        float32 weight on the second corner, and its offset inside its cell
        (cells own contiguous runs of pixels because ``cell`` never decreases);
        and the longest run.
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * ratio - 0.5
    cell = (src.floor().long() + 1).clamp(0, n_grid)
    frac = (src - (cell - 1)).clamp(0, 1).float()
    k = torch.arange(n_grid + 1)
    corner_index = torch.stack([(k - 1).clamp(0, n_grid - 1), k.clamp(0, n_grid - 1)], 1)
    first = torch.searchsorted(cell, k)
    offset = torch.arange(n_out) - first[cell]
    span = int(offset.max()) + 1
    return (corner_index.to(device), cell.to(device), frac.to(device), offset.to(device), span)


def cell_candidates(c00: torch.Tensor, c01: torch.Tensor, c10: torch.Tensor,
                    c11: torch.Tensor) -> torch.Tensor:
    """Which segments can win somewhere in each cell (see module docstring).

    Args:
        c00, c01, c10, c11: ``...×S`` segment values at each cell's four corners
            (segments last).

    Returns:
        bool ``...×S``; per cell at least the segment with the best corner-minimum.
    """
    # Elementwise min/max of four tensors: much faster than amin/amax over a
    # trailing axis of length 4.
    lo = torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11))
    hi = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
    floor = lo.amax(-1, keepdim=True)  # the cell's winner scores at least this everywhere
    # Rounding in the interpolation moves values by a few ulps; the margin keeps
    # near-ties (an extra candidate costs a little time, a missing one accuracy).
    margin = 1e-5 * (1.0 + float(hi.abs().amax()))
    return hi >= floor - margin


def _ragged_argmax(corners: torch.Tensor, groups: list[tuple[int, torch.Tensor, torch.Tensor]],
                   frac_y: torch.Tensor, frac_x: torch.Tensor) -> torch.Tensor:
    """Per-cell argmax over each cell's candidates → ``cells×R×C`` segment ids."""
    n_cells, nw = corners.shape[0], frac_x.shape[0]
    span_y, span_x = frac_y.shape[1], frac_x.shape[1]
    blocks = torch.zeros(n_cells, span_y, span_x, dtype=torch.long, device=corners.device)
    for width, group, ids in groups:
        step = max(1, BAND_ELEMENTS // (width * span_y * span_x))
        for k in range(0, len(group), step):
            g, gid = group[k : k + step], ids[k : k + step]
            c = corners[g[:, None], gid]  # n×m×4
            wx = frac_x[g % nw][:, None, :]  # n×1×C
            top = torch.lerp(c[..., 0:1], c[..., 1:2], wx)  # n×m×C
            bottom = torch.lerp(c[..., 2:3], c[..., 3:4], wx)
            wy = frac_y[g // nw][:, None, :, None]  # n×1×R×1
            values = torch.lerp(top[:, :, None], bottom[:, :, None], wy)  # n×m×R×C
            # max(dim).indices is several times faster than argmax(dim) on CPU
            # for a non-trailing dim; both return the first maximum.
            best = values.max(dim=1).indices
            blocks[g] = gid.gather(1, best.flatten(1)).view_as(best)
    return blocks


def _dense_argmax(s: torch.Tensor, ids: torch.Tensor, out_size: tuple[int, int],
                  ratios: tuple[float, float]) -> torch.Tensor:
    """Argmax over segments ``ids`` resampled at every pixel (two matmuls per band)."""
    kept = s[ids].permute(1, 2, 0)  # h×w×M
    h, w, m = kept.shape
    wy = interp_matrix(out_size[0], h, ratios[0], s.device)
    wx = interp_matrix(out_size[1], w, ratios[1], s.device)
    out = torch.empty(out_size, dtype=torch.long, device=s.device)
    band = max(1, BAND_ELEMENTS // max(1, m * out_size[1]))
    for r0 in range(0, out_size[0], band):
        by_row = (wy[r0 : r0 + band] @ kept.reshape(h, w * m)).reshape(-1, w, m)
        out[r0 : r0 + band] = ids[torch.matmul(wx, by_row).argmax(dim=-1)]  # rows×W×M
    return out


def pixel_argmax(scores: torch.Tensor, patch: int, in_size: tuple[int, int],
                 out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Argmax of the bilinearly resampled scores at every output pixel.

    Exact (up to float rounding at near-ties) but evaluates, in each cell
    between grid points, only the segments that can win there: cost ∝
    H·W·(candidates per cell) rather than H·W·S. Cells are grouped by their
    candidate count, padded to the next power of two, so the work is a few
    dense tensor operations per group. When most segments are candidates
    everywhere (flat, untrained scores) a dense resampling of the union of
    candidates is cheaper and is used instead.

    Args:
        scores: ``S×h×w`` float scores of one image on its patch grid.
        patch: patch size p.
        in_size: ``(H_in, W_in)`` of the network input the grid belongs to.
        out_size: ``(H, W)`` to predict at; default ``in_size``.

    Returns:
        int64 ``H×W`` segment ids in ``[0, S)`` on ``scores.device``; ties go
        to the lowest id, like ``argmax``.
    """
    out_size = tuple(out_size or in_size)
    s = scores.float()
    n_seg, h, w = s.shape
    dev = s.device
    ratios = grid_ratios(in_size, out_size, patch)
    ky, ci, fy, oy, span_y = _axis_cells(out_size[0], h, ratios[0], dev)
    kx, cj, fx, ox, span_x = _axis_cells(out_size[1], w, ratios[1], dev)
    nh, nw = h + 1, w + 1
    # Cell-major layout (cells×S) so that a cell's candidates are one row.
    cell_major = s.permute(1, 2, 0)
    rows0, rows1 = cell_major[ky[:, 0]], cell_major[ky[:, 1]]
    quad = [r[:, col].reshape(nh * nw, n_seg) for r in (rows0, rows1) for col in kx.T]
    cand = cell_candidates(*quad)
    counts = cand.sum(1)
    # Candidate ids ascending per cell (non-candidates sorted after them); a
    # short list is padded with its first id, a duplicate that never wins
    # over the original before it.
    ranked = (torch.arange(n_seg, device=dev) + (~cand).long() * n_seg).sort(dim=1).values
    groups, cost, width = [], 0, 1
    while True:
        group = ((counts <= width) & (counts > width // 2)).nonzero().flatten()
        if len(group):
            ids = ranked[group, :width]
            groups.append((width, group, torch.where(ids >= n_seg, ids[:, :1], ids)))
            cost += len(group) * width * span_y * span_x
        if width >= n_seg:
            break
        width *= 2
    anywhere = cand.any(0).nonzero().flatten()
    if cost > len(anywhere) * out_size[0] * out_size[1]:
        return _dense_argmax(s, anywhere, out_size, ratios)
    # Weights of every pixel of every cell row / column, laid out by offset.
    frac_y = torch.zeros(nh, span_y, device=dev)
    frac_y[ci, oy] = fy
    frac_x = torch.zeros(nw, span_x, device=dev)
    frac_x[cj, ox] = fx
    blocks = _ragged_argmax(torch.stack(quad, -1), groups, frac_y, frac_x)
    return blocks[ci[:, None] * nw + cj[None, :], oy[:, None], ox[None, :]]


def pixel_labels(scores: torch.Tensor, patch: int, size: tuple[int, int],
                 band_pixels: int = BAND_PIXELS, out_size: tuple[int, int] | None = None
                 ) -> np.ndarray:
    """:func:`pixel_argmax` in bands of rows, as a compact array.

    For very large images: :func:`pixel_argmax` returns an int64 map and needs
    about as much again in temporaries (16 bytes per pixel); here the map is
    resolved in bands of about ``band_pixels`` pixels into an array of 1 or 2
    bytes per pixel.

    Args:
        scores: ``S×h×w`` float scores of one image on its patch grid.
        patch: patch size p.
        size: ``(H_in, W_in)`` of the network input the grid belongs to
            (``h = ceil(H_in/p)``).
        band_pixels: output pixels per band (at least one patch row is taken).
        out_size: ``(H, W)`` to label at (default ``size``), e.g. the original
            photo when the network saw it at a working resolution.

    Returns:
        ``H×W`` segment ids in ``[0, S)``: uint8 when S ≤ 256, uint16 when
        S ≤ 65536, else int32. At the input's own size the result equals
        :func:`pixel_argmax` (bands start on patch rows and see one grid row
        more on each side, so every pixel reads the same grid points);
        resampled to another size, it is the argmax of the same bilinear
        samples, over the segments that can win somewhere.
    """
    n_seg, grid_h, _ = scores.shape
    dtype = np.uint8 if n_seg <= 256 else np.uint16 if n_seg <= 65536 else np.int32
    if out_size is not None and tuple(out_size) != tuple(size):
        return _resampled_labels(scores, patch, tuple(size), tuple(out_size), band_pixels,
                                 dtype)
    height, width = size
    out = np.empty((height, width), dtype)
    rows = max(patch, max(1, band_pixels // max(width, 1)) // patch * patch)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        g0 = max(r0 // patch - 1, 0)
        g1 = min(-(-r1 // patch) + 1, grid_h)
        top, bottom = g0 * patch, min(g1 * patch, height)
        band = pixel_argmax(scores[:, g0:g1], patch, (bottom - top, width))
        out[r0:r1] = band[r0 - top : r1 - top].cpu().numpy()
    return out


def _resampled_labels(scores: torch.Tensor, patch: int, in_size: tuple[int, int],
                      out_size: tuple[int, int], band_pixels: int, dtype: type) -> np.ndarray:
    """Banded argmax of the scores resampled to ``out_size`` (see :func:`pixel_labels`)."""
    s = scores.float()
    n_seg, h, w = s.shape
    # Segments that can win in some cell between grid points (edge cells clamp).
    padded = torch.nn.functional.pad(s[None], (1, 1, 1, 1), mode="replicate")[0]
    corners = [padded[:, dy : dy + h + 1, dx : dx + w + 1].permute(1, 2, 0)
               for dy in (0, 1) for dx in (0, 1)]
    ids = cell_candidates(*corners).reshape(-1, n_seg).any(0).nonzero().flatten()
    kept = s[ids].permute(1, 2, 0).reshape(h, -1)  # h×(w·M)
    ry, rx = grid_ratios(in_size, out_size, patch)
    wy = interp_matrix(out_size[0], h, ry, s.device)
    wx = interp_matrix(out_size[1], w, rx, s.device)
    out = np.empty(out_size, dtype)
    m = len(ids)
    rows = max(1, min(band_pixels, BAND_ELEMENTS // max(1, m)) // max(1, out_size[1]))
    for r0 in range(0, out_size[0], rows):
        by_row = (wy[r0 : r0 + rows] @ kept).reshape(-1, w, m)  # rows×w×M
        best = torch.matmul(wx, by_row).argmax(dim=-1)  # rows×W
        out[r0 : r0 + rows] = ids[best].cpu().numpy().astype(dtype)
    return out


def _pixel_axis(n_out: int, n_in: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~segeig.resample.grid.source_coords` of a pixel map resized from ``n_in``
    to ``n_out``, on ``device``, the weight as a column."""
    lower, upper, frac = source_coords(n_out, n_in, n_in / n_out)
    return lower.to(device), upper.to(device), frac.to(device)[:, None]


def resampled_argmax(q: torch.Tensor, out_size: tuple[int, int],
                     band: int = 256) -> torch.Tensor:
    """Argmax of ``q`` resampled bilinearly to ``out_size``, without resampling all of it.

    Where the four source pixels around an output pixel share their argmax,
    that label wins their convex combination too, so only pixels between
    disagreeing sources (near boundaries: a few percent) read all M values.
    Exact; memory is bounded by ``band`` output rows at a time.

    Args:
        q: float ``h×w×M`` (labels last, e.g. CRF marginals), any device.
        out_size: ``(H, W)``.

    Returns:
        int64 ``H×W`` label indices in ``[0, M)`` on ``q``'s device.
    """
    height, width = out_size
    best = q.argmax(-1)
    y0, y1, fy = _pixel_axis(height, q.shape[0], q.device)
    x0, x1, fx = _pixel_axis(width, q.shape[1], q.device)
    out = torch.empty(height, width, dtype=torch.long, device=q.device)
    for r0 in range(0, height, band):
        top, bottom = best[y0[r0:r0 + band]], best[y1[r0:r0 + band]]
        labels = top[:, x0]
        mixed = (labels != top[:, x1]) | (labels != bottom[:, x0]) | (labels != bottom[:, x1])
        ii, jj = mixed.nonzero(as_tuple=True)
        if len(ii):
            r_lo, r_hi, wy = y0[r0 + ii], y1[r0 + ii], fy[r0 + ii]
            c_lo, c_hi, wx = x0[jj], x1[jj], fx[jj]
            upper = torch.lerp(q[r_lo, c_lo], q[r_lo, c_hi], wx)  # P×M
            lower = torch.lerp(q[r_hi, c_lo], q[r_hi, c_hi], wx)
            labels[ii, jj] = torch.lerp(upper, lower, wy).argmax(-1)
        out[r0:r0 + band] = labels
    return out
