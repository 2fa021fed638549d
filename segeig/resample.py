"""Patch-grid scores → pixel labels and CRF probabilities, at any output size, cheaply.

A model scores an image on its patch grid (``S×h×w``); evaluation needs the
argmax of those scores bilinearly resampled to every labelled pixel, and the
CRF needs full-resolution probabilities of a few segments. Done naively
(:func:`segeig.predictor.upsample_argmax`) that costs ``S·H·W`` work — about
half a ViT-S forward at 320 px with S = 256 — so evaluation would be limited by
resampling, not by the model. Two things make it cheap and keep it exact:

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

Sampling convention (PyTorch's ``align_corners=False`` with edge clamping):
output pixel ``y`` reads grid coordinate ``(y + 0.5)·r − 0.5`` clamped to
``[0, h − 1]`` with ``r = H_in / (H_out · p)``: ``H_in`` is the size of the
image the network saw (the grid covers it from the top-left, padding beyond),
``H_out`` the output size and ``p`` the patch size. With ``H_out = H_in`` this
is exactly :func:`segeig.predictor.upsample_scores`; otherwise it equals
upsampling to the network input and resizing the scores back to the output size
(mmseg's convention), in one interpolation instead of two.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cell_candidates", "interp_matrix", "pixel_argmax", "pixel_labels", "pixel_probs"]

#: Elements (rows·W·S) resampled at once; bounds memory to ~64 MiB of float32.
BAND_ELEMENTS = 1 << 24
#: Output pixels :func:`pixel_labels` resolves at once (its int64 temporaries: ~64 MiB).
BAND_PIXELS = 1 << 22


def interp_matrix(n_out: int, n_in: int, ratio: float, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """Linear-interpolation weights along one axis.

    Args:
        n_out: output length.
        n_in: input (grid) length ≥ 1.
        ratio: input units per output pixel (``H_in / (H_out·p)``, see module doc).
        device: where to build the matrix.

    Returns:
        float32 ``n_out×n_in``; row ``y`` holds at most two non-zero weights that
        sum to 1.
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * ratio - 0.5
    src = src.clamp(0, n_in - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (src - i0).float()
    weights = torch.zeros(n_out, n_in, dtype=torch.float32)
    rows = torch.arange(n_out)
    weights.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, i1), frac, accumulate=True)
    return weights.to(device)


def _ratios(in_size: tuple[int, int], out_size: tuple[int, int], patch: int) -> tuple[float, float]:
    return in_size[0] / (out_size[0] * patch), in_size[1] / (out_size[1] * patch)


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
    ratios = _ratios(in_size, out_size, patch)
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
    ry, rx = _ratios(in_size, out_size, patch)
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


def pixel_probs(scores: torch.Tensor, patch: int, in_size: tuple[int, int],
                out_size: tuple[int, int] | None = None, max_labels: int = 32
                ) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution probabilities of the most relevant segments, for a CRF.

    The ``M ≤ max_labels`` segments are picked on the patch grid with
    :func:`segeig.crf.topk_probs` (segments winning the most patches first);
    the softmax over the kept scores equals the full softmax renormalised over
    them.

    Args:
        scores, patch, in_size, out_size: as in :func:`pixel_argmax`.
        max_labels: most segments kept.

    Returns:
        ``(probs, ids)``: float32 C-contiguous ``M×H×W`` summing to 1 over M,
        and int64 ``(M,)`` segment ids (``ids[k]`` is the id of plane ``k``).
    """
    from segeig.crf import topk_probs

    out_size = tuple(out_size or in_size)
    _, ids = topk_probs(torch.softmax(scores.float(), 0).cpu().numpy(), max_labels)
    kept = scores.float()[torch.from_numpy(ids).to(scores.device)]
    m, h, w = kept.shape
    ry, rx = _ratios(in_size, out_size, patch)
    wy = interp_matrix(out_size[0], h, ry, scores.device)
    wx = interp_matrix(out_size[1], w, rx, scores.device)
    probs = np.empty((m, *out_size), dtype=np.float32)
    band = max(1, BAND_ELEMENTS // max(1, m * out_size[1]))
    for r0 in range(0, out_size[0], band):
        # Channel-major here (the CRF wants M×H×W): (S×rows×w) @ (w×W).
        part = torch.matmul(wy[r0 : r0 + band], kept) @ wx.T
        probs[:, r0 : r0 + band] = torch.softmax(part, dim=0).cpu().numpy()
    return probs, ids
