"""Sparse chunked kernel equals a straightforward dense reference (docs/method.md, "Kernel")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segeig.config import KernelConfig
from segeig.kernel import build_kernel, feature_knn_graph, pixel_knn_graph, pixel_points


def dense_normalize(a: torch.Tensor) -> torch.Tensor:
    d = a.sum(1)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    return a * inv[:, None] * inv[None, :]


def dense_feature_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's dense construction, written independently."""
    f = F.normalize(x, dim=1)
    sim = (f @ f.T).clamp_min(0)
    sim.fill_diagonal_(-1)  # self excluded
    a = torch.zeros_like(sim)
    for i in range(len(sim)):
        idx = torch.argsort(sim[i], descending=True)[:k]
        a[i, idx] = sim[i, idx].clamp_min(0)
    return (a + a.T) / 2


def dense_pixel_graph(images, grid, passes):
    b, m = images.shape[0], grid[0] * grid[1]
    out = torch.zeros(b * m, b * m)
    for k, w in passes:
        pts = pixel_points(images, grid, w)
        for i in range(b):
            dist = torch.cdist(pts[i], pts[i])
            dist.fill_diagonal_(float("inf"))
            nn_idx = torch.argsort(dist, dim=1)[:, :k]
            block = torch.zeros(m, m)
            block.scatter_(1, nn_idx, 1.0)
            block = ((block + block.T) > 0).float()  # OR-symmetrise
            s = slice(i * m, (i + 1) * m)
            out[s, s] = torch.maximum(out[s, s], block)  # OR-combine passes
    return out


@pytest.mark.parametrize("chunk", [7, 1024])
def test_feature_graph_matches_dense(chunk):
    torch.manual_seed(0)
    x = torch.randn(60, 8)
    sparse = feature_knn_graph(x, k=9, chunk_size=chunk).to_dense()
    torch.testing.assert_close(sparse, dense_feature_graph(x, 9))
    assert torch.equal(sparse, sparse.T)
    assert torch.all(sparse.diagonal() == 0)
    assert sparse.min() >= 0


def test_pixel_graph_matches_dense():
    torch.manual_seed(1)
    images = torch.rand(3, 3, 40, 48)
    passes = ((4, 2.0), (3, 0.1))
    sparse = pixel_knn_graph(images, (5, 6), passes, chunk_size=11).to_dense()
    reference = dense_pixel_graph(images, (5, 6), passes)
    torch.testing.assert_close(sparse, reference)
    # Block diagonal: no edge between images.
    assert sparse[:30, 30:].abs().sum() == 0
    assert set(sparse.unique().tolist()) <= {0.0, 1.0}


def test_full_kernel_matches_dense_and_is_normalised():
    torch.manual_seed(2)
    feats = torch.randn(2, 16, 4, 5)
    images = torch.rand(2, 3, 64, 80)
    config = KernelConfig(k_feat=6, pixel_passes=((4, 2.0), (2, 0.1)), alpha=0.3, chunk_size=13)
    kernel = build_kernel(feats, images, config).to_dense()
    flat = feats.permute(0, 2, 3, 1).reshape(40, 16)
    expected = dense_normalize(dense_feature_graph(flat, 6)) + 0.3 * dense_normalize(
        dense_pixel_graph(images, (4, 5), config.pixel_passes)
    )
    torch.testing.assert_close(kernel, expected)
    torch.testing.assert_close(kernel, kernel.T)
    # D^-½AD^-½ of a non-negative graph has spectral radius exactly 1, so the
    # feature part alone tops out at 1 and the sum at most at 1 + α.
    feature_only = build_kernel(feats, None, config).to_dense()
    assert torch.linalg.eigvalsh(feature_only.double()).abs().max() == pytest.approx(1.0)
    assert torch.linalg.eigvalsh(kernel.double()).max() <= 1.3 + 1e-6


def test_feature_only_kernel_and_small_n():
    feats = torch.randn(1, 4, 1, 3)
    kernel = build_kernel(feats, None, KernelConfig(k_feat=256)).to_dense()
    assert kernel.shape == (3, 3)  # k clipped to N-1


def test_feature_graph_memory_is_sparse():
    torch.manual_seed(0)
    x = torch.randn(3000, 16)
    graph = feature_knn_graph(x, k=10, chunk_size=256)
    # At most 2·N·k stored entries, never N².
    assert graph._nnz() <= 2 * 3000 * 10


def test_valid_mask_drops_patches_from_both_graphs():
    # Training removes patches made of augmentation padding: the kernel must be
    # exactly the one built on the remaining patches (positions kept).
    torch.manual_seed(3)
    feats = torch.randn(2, 16, 4, 5)
    images = torch.rand(2, 3, 64, 80)
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[0, 3:, :] = False  # bottom row of image 0 padded
    valid[1, :, 4:] = False  # right column of image 1 padded
    config = KernelConfig(k_feat=6, pixel_passes=((4, 2.0), (2, 0.1)), alpha=0.3, chunk_size=9)
    kernel = build_kernel(feats, images, config, valid=valid).to_dense()
    keep = valid.reshape(-1)
    flat = feats.permute(0, 2, 3, 1).reshape(40, 16)[keep]
    pixel = torch.zeros(int(keep.sum()), int(keep.sum()))
    start = 0
    for i in range(2):
        own = valid[i].reshape(-1)
        m = int(own.sum())
        block = torch.zeros(m, m)
        for k, w in config.pixel_passes:
            pts = pixel_points(images[i : i + 1], (4, 5), w)[0][own]
            dist = torch.cdist(pts, pts)
            dist.fill_diagonal_(float("inf"))
            nn_idx = torch.argsort(dist, dim=1)[:, :k]
            one = torch.zeros(m, m).scatter_(1, nn_idx, 1.0)
            block = torch.maximum(block, ((one + one.T) > 0).float())
        pixel[start : start + m, start : start + m] = block
        start += m
    expected = dense_normalize(dense_feature_graph(flat, 6)) + 0.3 * dense_normalize(pixel)
    assert kernel.shape == (int(keep.sum()),) * 2 == (31, 31)
    torch.testing.assert_close(kernel, expected)
    # All valid is the same as no mask.
    all_valid = torch.ones_like(valid)
    torch.testing.assert_close(build_kernel(feats, images, config, valid=all_valid).to_dense(),
                               build_kernel(feats, images, config).to_dense())
