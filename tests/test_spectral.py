"""Exact spectral clustering baselines on synthetic data with known structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from segeig.config import HeadConfig, KernelConfig, ObjectiveConfig
from segeig.head import EigenHead, gumbel_probs, tau_at
from segeig.kernel import build_kernel
from segeig.objective import neuralef_loss
from segeig.spectral import (
    SpectralConfig,
    dataset_spectral_clustering,
    fit_spectral_centroids,
    image_segments,
    segment_means,
    spectral_scores,
    top_eigenvectors,
)


def planted_maps(n_images: int, n_classes: int, grid: int, dim: int, seed: int):
    """Feature maps and images where each image holds 2 classes in two halves.

    Returns (features B×D×g×g, images B×3×(4g)×(4g) in [0,1], truth B×g×g).
    """
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=gen) * 2
    colours = torch.rand(n_classes, 3, generator=gen)
    truth = torch.zeros(n_images, grid, grid, dtype=torch.long)
    for i in range(n_images):
        a, b = torch.randperm(n_classes, generator=gen)[:2]
        cut = int(torch.randint(1, grid, (1,), generator=gen))
        truth[i, :, :cut], truth[i, :, cut:] = a, b
    feats = centers[truth].permute(0, 3, 1, 2) + 0.7 * torch.randn(n_images, dim, grid, grid,
                                                                    generator=gen)
    images = colours[truth].permute(0, 3, 1, 2)
    images = torch.nn.functional.interpolate(images, scale_factor=4, mode="nearest")
    images = (images + 0.05 * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    return feats, images, truth, centers


def test_top_eigenvectors_sparse_equals_dense():
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 20, 20)
    kernel = build_kernel(feats, torch.rand(1, 3, 80, 80), KernelConfig(k_feat=10))
    values, vectors = top_eigenvectors(kernel, 5)  # 400 nodes → Lanczos
    dense_values = np.linalg.eigvalsh(kernel.to_dense().double().numpy())[::-1][:5]
    np.testing.assert_allclose(values, dense_values, atol=1e-8)
    residual = kernel.to_dense().double().numpy() @ vectors - vectors * values
    assert np.abs(residual).max() < 1e-6


def test_per_image_segments_recover_planted_halves():
    feats, images, truth, _ = planted_maps(4, 5, 12, 16, seed=1)
    config = SpectralConfig(n_eigenvectors=2, segments_per_image=2, k_feat=16)
    for i in range(4):
        segments = image_segments(feats[i : i + 1], images[i : i + 1], KernelConfig(), config)
        nmi = normalized_mutual_info_score(truth[i].flatten().numpy(), segments)
        assert nmi > 0.9


def test_spectral_method_labels_segments_by_global_centroids():
    feats, images, truth, centers = planted_maps(30, 4, 10, 16, seed=2)
    config = SpectralConfig(n_eigenvectors=2, segments_per_image=2, k_feat=16)
    centroids = fit_spectral_centroids([(feats, feats, images)], 4, KernelConfig(), config)
    assert centroids.shape == (4, 16)
    scores = spectral_scores(feats[:10], feats[:10], images[:10], centroids, KernelConfig(),
                             config)
    assert scores.shape == (10, 4, 10, 10)
    pred = scores.argmax(1).flatten().numpy()
    assert normalized_mutual_info_score(truth[:10].flatten().numpy(), pred) > 0.9
    # Each segment has one label: patches of a segment share their score vector.
    means, ids = segment_means(feats[0], np.zeros(100, dtype=np.int64))
    assert means.shape == (1, 16) and ids.tolist() == [0]


def test_too_few_segments_for_centroids():
    feats, images, _, _ = planted_maps(1, 3, 6, 8, seed=3)
    with pytest.raises(ValueError, match="only 2 image segments"):
        fit_spectral_centroids([(feats, feats, images)], 5, KernelConfig(),
                               SpectralConfig(segments_per_image=2, k_feat=8))


def test_learned_eigenfunctions_agree_with_exact_dataset_spectral_clustering():
    """The head's argmax ≈ exact spectral clustering of the same kernel (few hundred images)."""
    n_classes = 4
    feats, images, truth, _ = planted_maps(300, n_classes, 4, 16, seed=4)
    kernel_config = KernelConfig(k_feat=32)
    exact, values = dataset_spectral_clustering(feats, images, kernel_config, n_clusters=n_classes)
    assert values[0] == pytest.approx(1 + kernel_config.alpha, abs=0.05)
    exact_nmi = normalized_mutual_info_score(truth.flatten().numpy(), exact.flatten())

    torch.manual_seed(0)
    head = EigenHead(16, HeadConfig(kind="mlp", k=8, hidden_dim=32))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    objective = ObjectiveConfig()
    steps, batch = 400, 32
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):  # mini-batches of images, as in training
        idx = torch.randperm(300, generator=gen)[:batch]
        kernel = build_kernel(feats[idx], images[idx], kernel_config)
        logits, _ = head(feats[idx])
        flat = logits.flatten(2).transpose(1, 2).reshape(-1, 8)
        out = neuralef_loss(gumbel_probs(flat, tau_at(step, steps)), kernel,
                            objective.beta_for(8), objective.t)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = head(feats)[0].argmax(1).flatten().numpy()
    agreement_nmi = normalized_mutual_info_score(exact.flatten(), learned)
    agreement_ari = adjusted_rand_score(exact.flatten(), learned)
    print(f"exact vs truth NMI {exact_nmi:.3f}; learned vs exact NMI {agreement_nmi:.3f} "
          f"ARI {agreement_ari:.3f}")
    assert exact_nmi > 0.9
    assert agreement_nmi > 0.8
    assert agreement_ari > 0.7
