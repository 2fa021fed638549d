"""Heads: shapes, orthogonal projection, temperature schedule, relative size."""

from __future__ import annotations

import pytest
import torch

from segeig.config import HeadConfig
from segeig.head import EigenHead, gumbel_probs, tau_at


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_shapes_and_hidden(kind):
    head = EigenHead(144, HeadConfig(kind=kind, k=20, num_heads=4, mlp_hidden=32), embed_dim=48)
    logits, hidden = head(torch.randn(2, 144, 3, 5))
    assert logits.shape == (2, 20, 3, 5)
    assert hidden.shape == (2, head.hidden_dim, 3, 5)
    assert head.hidden_dim == (144 if kind == "transformer" else 48)


@pytest.mark.parametrize("k", [8, 96])
def test_projection_is_orthogonal(k):
    head = EigenHead(144, HeadConfig(kind="mlp", k=k), embed_dim=48)
    w = head.proj.weight  # K×H
    gram = w @ w.T if k <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(head.proj.bias, torch.zeros(k))


def test_transformer_attends_within_images_only():
    head = EigenHead(24, HeadConfig(kind="transformer", k=4, num_heads=2, mlp_hidden=8)).eval()
    x = torch.randn(2, 24, 2, 2)
    single, _ = head(x[:1])
    changed = x.clone()
    changed[1] += 5
    both, _ = head(changed)
    torch.testing.assert_close(both[:1], single)


def test_tau_schedule():
    assert tau_at(0, 100) == pytest.approx(1.0)
    assert tau_at(100, 100) == pytest.approx(0.3)
    assert tau_at(50, 100) == pytest.approx(0.65)
    assert tau_at(500, 100) == pytest.approx(0.3)
    values = [tau_at(s, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_probabilities():
    logits = torch.randn(10, 6)
    g = gumbel_probs(logits, 0.5)
    torch.testing.assert_close(g.sum(-1), torch.ones(10))


def test_gumbel_with_given_noise_is_reproducible_and_unbiased():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(20000, 1)
    draw = lambda seed: torch.empty(20000, 3).exponential_(  # noqa: E731
        generator=torch.Generator().manual_seed(seed))
    a, b, c = (gumbel_probs(logits, 1.0, noise=draw(s)) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.sum(-1), torch.ones(20000))
    # Gumbel-max: the argmax of the noisy logits is distributed as softmax(logits).
    freq = torch.bincount(a.argmax(-1), minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.015, rtol=0)
    with pytest.raises(ValueError, match="must match"):
        gumbel_probs(logits, 1.0, noise=torch.ones(3))


def test_light_head_is_much_smaller():
    """Parameter count as a proxy for cost at ViT-S width (D=384, K=256)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    paper = EigenHead(1152, HeadConfig(kind="transformer", k=256))
    light = EigenHead(1152, HeadConfig(kind="mlp", k=256), embed_dim=384)
    assert count(light) * 10 < count(paper)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown head kind"):
        EigenHead(12, HeadConfig(kind="cnn"))  # type: ignore[arg-type]
