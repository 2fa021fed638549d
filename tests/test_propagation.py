"""Propagation of per-patch probabilities over each image's colour/position graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from segeig.checkpoint.load import load_model
from segeig.checkpoint.store import save_checkpoint
from segeig.config import KernelConfig, PropagationConfig, to_dict
from segeig.kernel import propagate, row_normalized
from segeig.model import SegEigModel

PATCH = 16
GREY = (0.5, 0.5, 0.5)


def two_region_image(h: int = 6, w: int = 8) -> torch.Tensor:
    """1×3×(16h)×(16w): red left half, blue right half."""
    image = torch.zeros(1, 3, h * PATCH, w * PATCH)
    image[0, 0, :, : w // 2 * PATCH] = 1.0
    image[0, 2, :, w // 2 * PATCH :] = 1.0
    return image


def noisy_halves(h: int = 6, w: int = 8, flips: int = 5, seed: int = 0) -> torch.Tensor:
    """1×2×h×w probabilities: segment 0 on the left half, 1 on the right, with
    ``flips`` patches per half given to the other segment."""
    probs = torch.zeros(1, 2, h, w)
    probs[0, 0, :, : w // 2] = 0.9
    probs[0, 1, :, w // 2 :] = 0.9
    probs[0, 1, :, : w // 2] = 0.1
    probs[0, 0, :, w // 2 :] = 0.1
    gen = torch.Generator().manual_seed(seed)
    for lo in (0, w // 2):
        cells = torch.randperm(h * (w // 2), generator=gen)[:flips]
        for c in cells.tolist():
            y, x = divmod(c, w // 2)
            probs[0, :, y, lo + x] = probs[0, :, y, lo + x].flip(0)
    return probs


def test_rows_stay_distributions_and_zero_steps_is_identity():
    probs = torch.softmax(torch.randn(2, 5, 4, 6), dim=1)
    images = torch.rand(2, 3, 4 * PATCH - 3, 6 * PATCH - 5)  # padded to the grid inside
    out = propagate(probs, images, PropagationConfig(steps=4), PATCH, GREY)
    assert out.shape == probs.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(2, 4, 6))
    assert (out >= 0).all()
    assert not torch.allclose(out, probs)
    unchanged = propagate(probs, images, PropagationConfig(steps=0), PATCH, GREY)
    torch.testing.assert_close(unchanged, probs)


def test_corrects_isolated_patches_without_crossing_a_colour_edge():
    probs = noisy_halves()
    truth = torch.zeros(6, 8, dtype=torch.long)
    truth[:, 4:] = 1
    before = (probs[0].argmax(0) != truth).sum().item()
    out = propagate(probs, two_region_image(), PropagationConfig(steps=5), PATCH, GREY)
    assert before == 10
    assert torch.equal(out[0].argmax(0), truth)


def test_images_of_a_batch_do_not_mix():
    """Propagating a batch equals propagating each image alone."""
    probs = torch.cat([noisy_halves(seed=0), noisy_halves(seed=1).flip(1)])
    images = torch.cat([two_region_image(), torch.rand(1, 3, 6 * PATCH, 8 * PATCH)])
    config = PropagationConfig(steps=3, weight=0.7)
    both = propagate(probs, images, config, PATCH, GREY)
    for i in range(2):
        alone = propagate(probs[i : i + 1], images[i : i + 1], config, PATCH, GREY)
        torch.testing.assert_close(both[i : i + 1], alone)


def test_row_normalized_rows_sum_to_one():
    graph = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 0.0]]).to_sparse()
    rows = torch.sparse.sum(row_normalized(graph), dim=1).to_dense()
    torch.testing.assert_close(rows, torch.ones(3))


@pytest.mark.parametrize("changes", [{"steps": -1}, {"steps": 1.5}, {"steps": True},
                                     {"weight": 0.0}, {"weight": 1.5}])
def test_config_refuses_bad_values(changes):
    with pytest.raises(ValueError, match="propagation"):
        PropagationConfig(**changes)


def test_model_eigen_scores_are_the_propagated_probabilities(tiny_model: SegEigModel):
    images = torch.rand(2, 3, 64, 80)
    tiny_model.propagation = PropagationConfig(steps=0)
    with torch.no_grad():
        plain = tiny_model(images, "eigen")
    torch.testing.assert_close(plain.scores, plain.logits.float() / tiny_model.head.config.tau_min)
    tiny_model.propagation = PropagationConfig(steps=5)
    with torch.no_grad():
        out = tiny_model(images, "eigen")
    expected = propagate(torch.softmax(plain.scores, dim=1), images, tiny_model.propagation,
                         tiny_model.backbone.patch_size, tuple(tiny_model.backbone.mean))
    torch.testing.assert_close(torch.softmax(out.scores, dim=1), expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.logits, plain.logits)  # the eigenfunctions themselves are unchanged


@pytest.mark.parametrize("method", ["eigen+kmeans", "kmeans"])
def test_centroid_methods_propagate_their_probabilities_too(tiny_model: SegEigModel, method):
    generator = torch.Generator().manual_seed(1)
    hidden = tiny_model.head.hidden_dim if method == "eigen+kmeans" else \
        tiny_model.backbone.embed_dim
    tiny_model.set_centroids(method, torch.randn(5, hidden, generator=generator),
                             metric="euclidean", spread=2.0)
    images = torch.rand(2, 3, 64, 80, generator=generator)
    tiny_model.propagation = PropagationConfig(steps=0)
    with torch.no_grad():
        plain = tiny_model(images, method)
    tiny_model.propagation = PropagationConfig(steps=3)
    with torch.no_grad():
        out = tiny_model(images, method)
    expected = propagate(torch.softmax(plain.scores, dim=1), images, tiny_model.propagation,
                         tiny_model.backbone.patch_size, tuple(tiny_model.backbone.mean))
    torch.testing.assert_close(torch.softmax(out.scores, dim=1), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(torch.softmax(out.scores, dim=1), torch.softmax(plain.scores, 1))


def test_loaded_model_propagates_over_its_training_graph(tmp_path, tiny_model: SegEigModel):
    passes = ((6, 1.0),)
    path = save_checkpoint(tmp_path, tiny_model,
                           extra={"kernel": to_dict(replace(KernelConfig(), pixel_passes=passes))})
    model, _ = load_model(path)
    assert model.propagation == PropagationConfig(pixel_passes=passes)
