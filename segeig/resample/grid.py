"""Sampling patch-grid scores at pixels: weights, dense scores, CRF probabilities.

Sampling convention (PyTorch's ``align_corners=False`` with edge clamping):
output pixel ``y`` reads grid coordinate ``(y + 0.5)·r − 0.5`` clamped to
``[0, h − 1]`` with ``r = H_in / (H_out · p)``: ``H_in`` is the size of the
image the network saw (the grid covers it from the top-left, padding beyond),
``H_out`` the output size and ``p`` the patch size. With ``H_out = H_in`` this
is exactly :func:`upsample_scores`; otherwise it equals upsampling to the
network input and resizing the scores back to the output size (mmseg's
convention), in one interpolation instead of two.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segeig.resample.subset import topk_probs

#: Elements (rows·W·S) resampled at once; bounds memory to ~64 MiB of float32.
BAND_ELEMENTS = 1 << 24


def source_coords(n_out: int, n_in: int, ratio: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each output pixel samples along one axis (half-pixel centres, edges clamped).

    Args:
        n_out: output length.
        n_in: input length ≥ 1.
        ratio: input units per output pixel.

    Returns:
        ``(lower, upper, frac)`` on the CPU: int64 ``(n_out,)`` indices of the two
        input points around each output pixel, and float32 ``(n_out,)`` weight
        of ``upper`` in ``[0, 1]``.
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * ratio - 0.5
    src = src.clamp(0, n_in - 1)
    lower = src.floor().long()
    upper = (lower + 1).clamp(max=n_in - 1)
    return lower, upper, (src - lower).float()


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
    i0, i1, frac = source_coords(n_out, n_in, ratio)
    weights = torch.zeros(n_out, n_in, dtype=torch.float32)
    rows = torch.arange(n_out)
    weights.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, i1), frac, accumulate=True)
    return weights.to(device)


def grid_ratios(in_size: tuple[int, int], out_size: tuple[int, int], patch: int
                ) -> tuple[float, float]:
    """Grid units per output pixel along each axis (``r`` of the module doc)."""
    return in_size[0] / (out_size[0] * patch), in_size[1] / (out_size[1] * patch)


def upsample_scores(scores: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid scores → pixel scores of the network input.

    Args:
        scores: ``B×S×h×w`` float; patch ``(i, j)`` covers pixels
            ``[i·p, (i+1)·p) × [j·p, (j+1)·p)`` of the zero-padded input.
        patch: patch size p.
        size: ``(H, W)`` of the unpadded input (H ≤ h·p, W ≤ w·p).

    Returns:
        ``B×S×H×W`` float32, bilinear (half-pixel centres), cropped to ``size``.
    """
    h, w = scores.shape[-2:]
    full = F.interpolate(scores.float(), size=(h * patch, w * patch), mode="bilinear",
                         align_corners=False)
    return full[..., : size[0], : size[1]]


def pixel_scores(scores: torch.Tensor, patch: int, in_size: tuple[int, int],
                 out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Every segment's score at every output pixel (memory ∝ S·H·W).

    Args:
        scores, patch, in_size, out_size: as in
            :func:`~segeig.resample.argmax.pixel_argmax` (``S×h×w`` grid scores
            of a network input of ``in_size``, sampled at ``out_size``).

    Returns:
        ``S×H×W`` float32 on ``scores.device``: the scores upsampled to the
        network input, then resized bilinearly to ``out_size`` (mmseg's
        resize-logits-back convention).
    """
    full = upsample_scores(scores[None], patch, in_size)
    if out_size is not None and tuple(out_size) != tuple(in_size):
        full = F.interpolate(full, size=tuple(out_size), mode="bilinear", align_corners=False)
    return full[0]


def pixel_probs(scores: torch.Tensor, patch: int, in_size: tuple[int, int],
                out_size: tuple[int, int] | None = None, max_labels: int = 32
                ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the most relevant segments at every output pixel, for a CRF.

    The ``M ≤ max_labels`` segments are picked on the patch grid with
    :func:`~segeig.resample.subset.topk_probs` (segments winning the most
    patches first); the softmax over the kept scores equals the full softmax
    renormalised over them. Memory is M·H·W rather than S·H·W.

    Args:
        scores, patch, in_size, out_size: as in
            :func:`~segeig.resample.argmax.pixel_argmax`.
        max_labels: most segments kept.

    Returns:
        ``(probs, ids)``: float32 C-contiguous ``M×H×W`` summing to 1 over M,
        and int64 ``(M,)`` segment ids (``ids[k]`` is the id of plane ``k``).
    """
    out_size = tuple(out_size or in_size)
    _, ids = topk_probs(torch.softmax(scores.float(), 0).cpu().numpy(), max_labels)
    kept = scores.float()[torch.from_numpy(ids).to(scores.device)]
    m, h, w = kept.shape
    ry, rx = grid_ratios(in_size, out_size, patch)
    wy = interp_matrix(out_size[0], h, ry, scores.device)
    wx = interp_matrix(out_size[1], w, rx, scores.device)
    probs = np.empty((m, *out_size), dtype=np.float32)
    band = max(1, BAND_ELEMENTS // max(1, m * out_size[1]))
    for r0 in range(0, out_size[0], band):
        # Channel-major here (the CRF wants M×H×W): (S×rows×w) @ (w×W).
        part = torch.matmul(wy[r0 : r0 + band], kept) @ wx.T
        probs[:, r0 : r0 + band] = torch.softmax(part, dim=0).cpu().numpy()
    return probs, ids
