"""scripts/probe_inductive.py: the Nyström extension of exact eigenvectors to new patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segeig.kernel import feature_knn_graph, symmetric_normalize
from segeig.spectral import top_eigenvectors
from tests.test_train_scripts import load_script


def blobs(generator: torch.Generator, n: int, centres: torch.Tensor) -> torch.Tensor:
    """``n`` points around each centre (rows of ``centres``), small spread."""
    return torch.cat([c + 0.1 * torch.randn(n, centres.shape[1], generator=generator)
                      for c in centres])


def test_nystrom_extends_each_cluster_to_new_points_of_that_cluster():
    probe = load_script("probe_inductive")
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=generator), dim=1) * 3
    train, new = blobs(generator, 40, centres), blobs(generator, 10, centres)
    kernel = symmetric_normalize(feature_knn_graph(train, 8))
    values, vectors = top_eigenvectors(kernel, 3)
    extended = probe.nystrom(train, new, vectors, values, k_feat=8)
    assert extended.shape == (30, 3)
    # Each new point's row points the way its own cluster's training rows do.
    train_rows = F.normalize(torch.from_numpy(vectors).float(), dim=1)
    cluster_means = torch.stack([train_rows[i * 40:(i + 1) * 40].mean(0) for i in range(3)])
    nearest = (F.normalize(extended, dim=1) @ cluster_means.T).argmax(1)
    assert nearest.tolist() == [i for i in range(3) for _ in range(10)]
    # On a training point it reproduces the eigenvector up to the graph's
    # one-sided kNN (self included) against the symmetrised graph: close, not equal.
    again = probe.nystrom(train, train, vectors, values, k_feat=8)
    cosine = F.cosine_similarity(again, torch.from_numpy(vectors).float(), dim=0)
    assert (cosine > 0.9).all()
