"""NeuralEF objective: known-answer tests.

(a) With continuous outputs on a fixed kernel, the learned functions span the
    exact top eigenvectors (numpy eigh) on held-out points.
(b) With the discrete Gumbel head and the paper's defaults, argmax assignments
    recover planted clusters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from segeig.config import HeadConfig, ObjectiveConfig
from segeig.head import EigenHead, gumbel_probs, tau_at
from segeig.kernel import feature_knn_graph, symmetric_normalize
from segeig.objective import neuralef_loss, normalize_columns

CENTERS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])


def blobs(n: int, gen: torch.Generator) -> torch.Tensor:
    which = torch.randint(0, 4, (n,), generator=gen)
    return CENTERS[which] + 0.5 * torch.randn(n, 2, generator=gen)


def rbf_kernel(x: torch.Tensor) -> torch.Tensor:
    a = torch.exp(-torch.cdist(x, x) ** 2 / 2)
    a.fill_diagonal_(0)
    d = a.sum(1).rsqrt()
    return a * d[:, None] * d[None, :]


def mean_squared_canonical_correlation(a: np.ndarray, b: np.ndarray) -> float:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return float((np.linalg.svd(qa.T @ qb, compute_uv=False) ** 2).mean())


def test_column_normalisation_only_shrinks():
    psi = torch.tensor([[3.0, 0.1], [4.0, 0.2]])
    out = normalize_columns(psi, t=0.04)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.6, 0.8]) * 0.2)
    torch.testing.assert_close(out[:, 1], psi[:, 1] * 0.2)  # norm < 1: not inflated


def test_penalty_gradient_reaches_only_later_function():
    kernel = torch.eye(3)
    psi = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    out = neuralef_loss(psi, kernel, beta=1.0, t=1.0)
    grad = torch.autograd.grad(out.loss, psi)[0]
    psi_det = psi.detach().clone().requires_grad_(True)
    trace_only = -(normalize_columns(psi_det, 1.0) ** 2).sum() / 2
    grad_trace = torch.autograd.grad(trace_only, psi_det)[0]
    # ψ_0's gradient is the trace term's alone; ψ_1's is not.
    torch.testing.assert_close(grad[:, 0], grad_trace[:, 0])
    assert not torch.allclose(grad[:, 1], grad_trace[:, 1])


def test_eigenvalue_estimates_on_exact_eigenvectors():
    torch.manual_seed(0)
    kernel = rbf_kernel(blobs(200, torch.Generator().manual_seed(0)))
    values, vectors = torch.linalg.eigh(kernel)
    psi = vectors[:, -3:].flip(1)
    out = neuralef_loss(psi, kernel, beta=0.1, t=0.01)
    torch.testing.assert_close(out.eigenvalues, values[-3:].flip(0), atol=1e-5, rtol=1e-5)
    assert out.penalty.item() == pytest.approx(0.0, abs=1e-12)


def test_continuous_outputs_learn_exact_top_eigenvectors():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train, held_out = blobs(500, gen), blobs(400, gen)
    kernel = rbf_kernel(train)
    k = 4
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 128), torch.nn.GELU(), torch.nn.Linear(128, 128), torch.nn.GELU(),
        torch.nn.Linear(128, k),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    # Continuous outputs have no softmax competition, so orthogonality needs a
    # stronger penalty and unit scale than the paper's discrete-head defaults.
    for _ in range(700):
        out = neuralef_loss(net(train), kernel, beta=1.0, t=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = net(held_out).double().numpy()
    _, exact = np.linalg.eigh(rbf_kernel(held_out).double().numpy())
    alignment = mean_squared_canonical_correlation(learned, exact[:, -k:])
    print(f"subspace alignment (mean squared canonical correlation): {alignment:.4f}")
    assert alignment >= 0.9
    # Ordering: the first function is the top eigenvector.
    first = learned[:, 0] / np.linalg.norm(learned[:, 0])
    assert abs(first @ exact[:, -1]) > 0.95


def test_gumbel_head_recovers_planted_clusters():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n_clusters, dim, n = 5, 32, 600
    centers = torch.randn(n_clusters, dim, generator=gen)
    truth = torch.randint(0, n_clusters, (n,), generator=gen)
    x = centers[truth] + 0.6 * torch.randn(n, dim, generator=gen)
    kernel = symmetric_normalize(feature_knn_graph(x, k=20))
    k = 8
    head = EigenHead(dim, HeadConfig(kind="mlp", k=k, hidden_dim=64))
    objective = ObjectiveConfig()  # the paper's t and β (scaled for K)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    steps = 300
    for step in range(steps):
        logits, _ = head.forward_tokens(x[None])
        psi = gumbel_probs(logits[0], tau_at(step, steps))
        out = neuralef_loss(psi, kernel, objective.beta_for(k), objective.t)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        assignment = head.forward_tokens(x[None])[0][0].argmax(1)
    nmi = normalized_mutual_info_score(truth.numpy(), assignment.numpy())
    print(f"planted clusters NMI: {nmi:.3f}")
    assert nmi >= 0.9
