"""NeuralEF objective: learn the top-K eigenfunctions of a kernel with a network.

Given outputs Ψ ∈ R^{N×K} of any network on N points and a kernel κ (N×N,
sparse or dense), the loss

    loss = −tr(R)/K + β·Σ_{i<j} R̂_ij² / K,   R = ΨᵀκΨ,  R̂ = sg(Ψ)ᵀκΨ

is minimised when the columns of Ψ span the principal eigenfunctions in order:
the stop-gradient sits on the earlier function i, so function j is pushed
orthogonal to every i < j while earlier functions ignore later ones (the
EigenGame-style ordering of Deng, Shi & Zhu, ICML 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class NeuralEFLoss:
    """Loss value and its parts for logging.

    Attributes:
        loss: scalar tensor to minimise.
        trace: ``tr(R)/K`` (detached).
        penalty: ``β·Σ_{i<j} R̂_ij²/K`` (detached).
        eigenvalues: ``K`` estimated eigenvalues ``diag(R)/t`` (detached) —
            the Rayleigh quotients of the normalised columns.
    """

    loss: torch.Tensor
    trace: torch.Tensor
    penalty: torch.Tensor
    eigenvalues: torch.Tensor


def normalize_columns(psi: torch.Tensor, t: float) -> torch.Tensor:
    """Scale each column to L2 norm ≤ 1 over the batch, then by √t.

    A column is divided by its norm only when that norm exceeds 1, so small
    functions are not inflated (docs/method.md, "Objective").

    Args:
        psi: ``N×K`` float outputs.
        t: squared target scale.

    Returns:
        ``N×K`` tensor, differentiable w.r.t. ``psi``.
    """
    norms = psi.norm(dim=0, keepdim=True).clamp_min(1.0)
    return psi / norms * math.sqrt(t)


def neuralef_loss(
    psi: torch.Tensor, kernel: torch.Tensor, beta: float, t: float = 0.01
) -> NeuralEFLoss:
    """NeuralEF loss (docs/method.md, "Objective").

    Args:
        psi: ``N×K`` network outputs (Gumbel-softmax probabilities in training,
            or any continuous outputs). Computed in float32 for stability.
        kernel: ``N×N`` symmetric kernel, sparse COO or dense.
        beta: effective orthogonality weight (already scaled for K).
        t: squared column scale.

    Returns:
        :class:`NeuralEFLoss`.
    """
    n, k = psi.shape
    if kernel.shape != (n, n):
        raise ValueError(f"kernel is {tuple(kernel.shape)} but psi has {n} rows")
    psi = normalize_columns(psi.float(), t)
    k_psi = torch.sparse.mm(kernel, psi) if kernel.is_sparse else kernel @ psi  # N×K
    r = psi.T @ k_psi  # R = ΨᵀκΨ
    r_hat = psi.detach().T @ k_psi  # R̂ = sg(Ψ)ᵀκΨ: gradient reaches ψ_j only
    trace = r.diagonal().sum() / k
    penalty = beta * r_hat.triu(diagonal=1).pow(2).sum() / k
    loss = -trace + penalty
    return NeuralEFLoss(
        loss=loss,
        trace=trace.detach(),
        penalty=penalty.detach(),
        eigenvalues=r.diagonal().detach() / t,
    )
