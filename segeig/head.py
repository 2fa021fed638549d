"""Eigenfunction heads ψ: patch features (3·D channels) → K eigenfunction logits.

Two heads share one interface:

* ``transformer`` — the paper's: 2 pre-norm transformer blocks at width 3·D
  (attention within each image), final LayerNorm, orthogonal Linear to K.
* ``mlp`` — segeig's light head: LayerNorm → Linear(3·D→H) → GELU →
  Linear(H→H) → GELU → orthogonal Linear(H→K). On a CPU the paper's head
  costs about half a ViT-S/16 forward; this one a few percent.

Both return logits and the hidden features that feed the final projection (the
``eigen+kmeans`` method clusters those). In training the logits go through a
Gumbel-softmax with an annealed temperature (see :func:`tau_at`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from segeig.config import HeadConfig


def _init_weights(module: nn.Module) -> None:
    # Paper's init: trunc-normal 0.02, zero bias. The orthogonal projection is
    # parametrised separately and keeps its own (orthogonal) init.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class _Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


def _orthogonal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    linear = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(linear.bias)
    return orthogonal(linear)


class EigenHead(nn.Module):
    """Map ``B×C×h×w`` features to ``B×K×h×w`` logits (and hidden features).

    Args:
        in_dim: input channels C (3·D for the three stacked ViT maps).
        config: head settings; ``config.kind`` picks the architecture.
        embed_dim: backbone width D, the MLP head's default hidden width.
    """

    def __init__(self, in_dim: int, config: HeadConfig, embed_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        if config.kind == "transformer":
            self.blocks = nn.ModuleList(
                _Block(in_dim, config.num_heads, config.mlp_hidden) for _ in range(config.depth)
            )
            self.trunk = nn.LayerNorm(in_dim)
            self.hidden_dim = in_dim
        elif config.kind == "mlp":
            hidden = config.hidden_dim or embed_dim or max(in_dim // 3, 1)
            self.blocks = nn.ModuleList()
            self.trunk = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                nn.Linear(hidden, hidden), nn.GELU(),
            )
            self.hidden_dim = hidden
        else:
            raise ValueError(f"unknown head kind {config.kind!r}; use 'transformer' or 'mlp'")
        self.apply(_init_weights)
        self.proj = _orthogonal_linear(self.hidden_dim, config.k)

    @property
    def k(self) -> int:
        """Number of eigenfunctions K."""
        return self.config.k

    @torch.no_grad()
    def reorder_outputs(self, order: torch.Tensor) -> None:
        """Permute the K outputs: new output ``i`` is old output ``order[i]``.

        Rows of the orthogonal projection and its bias are permuted (a row
        permutation of an orthogonal matrix is orthogonal, so the
        parametrisation holds it exactly).
        """
        order = torch.as_tensor(order, dtype=torch.long)
        if sorted(order.tolist()) != list(range(self.k)):
            raise ValueError(f"order must be a permutation of range({self.k})")
        weight = self.proj.weight.detach().clone()
        # Assigning goes through the parametrisation's right_inverse, which
        # completes the matrix to a square orthogonal one with random numbers:
        # seed them, so that a resumed run stores the same tensors.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.proj.weight = weight[order.to(weight.device)]
        self.proj.bias.copy_(self.proj.bias[order.to(weight.device)].clone())

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head on token sequences.

        Args:
            tokens: ``B×T×C`` float features (T tokens of one image per row, so
                the transformer head attends within images).

        Returns:
            ``(logits B×T×K, hidden B×T×H)``.
        """
        x = tokens
        for block in self.blocks:
            x = block(x)
        hidden = self.trunk(x)
        return self.proj(hidden), hidden

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head on feature maps.

        Args:
            features: ``B×C×h×w`` float.

        Returns:
            ``(logits B×K×h×w, hidden B×H×h×w)``; logits are raw (no τ, no softmax).
        """
        b, _, h, w = features.shape
        logits, hidden = self.forward_tokens(features.flatten(2).transpose(1, 2))
        to_map = lambda t: t.transpose(1, 2).reshape(b, -1, h, w)  # noqa: E731
        return to_map(logits), to_map(hidden)


def tau_at(step: int, total_steps: int, tau_max: float = 1.0, tau_min: float = 0.3) -> float:
    """Gumbel-softmax temperature, cosine-annealed per iteration.

    Returns ``tau_max`` at step 0 and ``tau_min`` at ``total_steps`` (and after).
    """
    if total_steps <= 0:
        return tau_min
    progress = min(max(step / total_steps, 0.0), 1.0)
    return tau_min + 0.5 * (tau_max - tau_min) * (1 + math.cos(math.pi * progress))


def gumbel_probs(
    logits: torch.Tensor, tau: float, dim: int = -1, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Relaxed one-hot samples ``softmax((logits + Gumbel noise)/τ)`` along ``dim``.

    Args:
        logits: any shape, any float dtype (computed in float32).
        tau: temperature > 0.
        dim: the category dimension.
        noise: optional ``Exponential(1)`` samples of ``logits``' shape (the
            Gumbel noise is ``-log(noise)``); default: drawn from torch's
            global RNG. Training passes noise from a per-step seeded generator
            so resumed and multi-process runs are reproducible.

    Returns:
        float32 tensor of ``logits``' shape, summing to 1 along ``dim``.
    """
    if noise is None:
        return F.gumbel_softmax(logits.float(), tau=tau, hard=False, dim=dim)
    if noise.shape != logits.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match logits {tuple(logits.shape)}")
    # Same construction as F.gumbel_softmax: G = -log(Exp(1)).
    return torch.softmax((logits.float() - noise.float().log()) / tau, dim=dim)

