"""Exact spectral clustering baselines on synthetic data with known structure."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from segeig.checkpoint import load_model, read_config
from segeig.cli import main
from segeig.config import HeadConfig, KernelConfig, ObjectiveConfig, SpectralConfig
from segeig.data.synthetic import make_synthetic_dataset
from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.protocols import load_eval_dataset, resolve_protocol
from segeig.evaluation.spectral_dataset import (
    DEFAULT_MAX_TOKENS,
    SpectralSetTooLargeError,
    evaluate_spectral_dataset,
)
from segeig.head import EigenHead, gumbel_probs, tau_at
from segeig.kernel import build_kernel
from segeig.model import SegEigModel
from segeig.objective import neuralef_loss
from segeig.predictor import Segmenter
from segeig.spectral import (
    dataset_spectral_clustering,
    exact_spectral_bytes,
    fit_spectral_centroids,
    image_segments,
    segment_means,
    set_kernel,
    spectral_cluster_set,
    spectral_scores,
    top_eigenvectors,
)
from segeig.train.centroids import centroid_methods
from segeig.transforms import to_tensor
from tests.conftest import TINY_ARCH


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


# -- kernels over sets of mixed sizes ---------------------------------------------------------


def test_set_kernel_equals_batch_kernel_and_keeps_pixel_edges_within_images():
    torch.manual_seed(5)
    feats, images = torch.randn(3, 8, 5, 6), torch.rand(3, 3, 80, 96)
    config = KernelConfig(k_feat=7)
    batch = build_kernel(feats, images, config).to_dense()
    mixed = set_kernel(list(feats), list(images), config).to_dense()
    torch.testing.assert_close(mixed, batch)
    # Mixed grids: the pixel part stays block diagonal.
    sizes = [(4, 4), (3, 5), (6, 2)]
    feats = [torch.randn(8, h, w) for h, w in sizes]
    imgs = [torch.rand(3, 16 * h, 16 * w) for h, w in sizes]
    no_pixel = set_kernel(feats, None, config).to_dense()
    pixel = set_kernel(feats, imgs, config).to_dense() - no_pixel
    starts = np.cumsum([0] + [h * w for h, w in sizes])
    block = torch.zeros_like(pixel, dtype=torch.bool)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        block[a:b, a:b] = True
    assert pixel[~block].abs().max() < 1e-6 and pixel[block].max() > 0
    torch.testing.assert_close(mixed.sum(), mixed.T.sum())


def test_cluster_set_scores_match_dataset_clustering():
    feats, images, truth, _ = planted_maps(20, 3, 6, 16, seed=6)
    config = KernelConfig(k_feat=16)
    labels, values = dataset_spectral_clustering(feats, images, config, n_clusters=3)
    grids, values_set = spectral_cluster_set(list(feats), list(images), config, n_clusters=3)
    np.testing.assert_allclose(values_set, values)
    assert all(g.shape == (3, 6, 6) for g in grids)
    assert (torch.stack(grids).argmax(1).numpy() == labels).all()
    assert normalized_mutual_info_score(truth.flatten().numpy(), labels.flatten()) > 0.9


def test_memory_estimate_grows_with_tokens_and_neighbours():
    assert exact_spectral_bytes(20_000, 256) > exact_spectral_bytes(10_000, 256) > 0
    assert exact_spectral_bytes(10_000, 256) > exact_spectral_bytes(10_000, 32)
    # About 10 GiB for the default limit at the paper's k_feat.
    assert 8 < exact_spectral_bytes(DEFAULT_MAX_TOKENS, 256) / 2**30 < 16


# -- both methods through evaluate, on images with known structure ------------------------------

COLOURS = np.array([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


class ColourBackbone(torch.nn.Module):
    """Stand-in backbone whose patch features are the patch's mean colour (centred):
    the classes of :func:`write_halves` are then separable by construction."""

    patch_size, embed_dim = 16, 3
    mean = (0.5, 0.5, 0.5)  # the colour inputs are padded with

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # SegEigModel reads the device

    def forward(self, images):
        pooled = F.avg_pool2d(images, 16, ceil_mode=True) - 0.5
        return SimpleNamespace(kernel=pooled, layers=(pooled, pooled, pooled), stacked=pooled)


def write_halves(root, n: int, seed: int):
    """Custom-layout set: each 64×96 image is two classes split at a patch boundary."""
    rng = np.random.default_rng(seed)
    for split in ("images/val", "annotations/val"):
        (root / split).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
    for i in range(n):
        a, b = rng.choice(4, 2, replace=False)
        label = np.full((64, 96), a, np.uint8)
        label[:, 16 * int(rng.integers(1, 6)):] = b
        image = COLOURS[label] * 255 + rng.normal(0, 10, (64, 96, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images/val" / f"{i:03d}.png")
        Image.fromarray(label).save(root / "annotations/val" / f"{i:03d}.png")
    return root


@pytest.fixture
def halves(tmp_path):
    root = write_halves(tmp_path / "halves", 12, seed=7)
    return root, load_eval_dataset(resolve_protocol(None, "custom"), root, "val")


def test_spectral_method_recovers_known_classes_through_evaluate(halves):
    root, dataset = halves
    model = SegEigModel(ColourBackbone())
    config = SpectralConfig(n_eigenvectors=2, segments_per_image=2, k_feat=8)
    model.spectral = (KernelConfig(), config)
    images = torch.stack([to_tensor(dataset.load(i).image) for i in range(len(dataset))])
    pooled = model.backbone(images).kernel
    model.set_centroids("spectral", fit_spectral_centroids([(pooled, pooled, images)], 4,
                                                           KernelConfig(), config))
    result = evaluate(Segmenter(model, device="cpu"), dataset, method="spectral", crf=False)
    assert result.method == "spectral" and result.n_segments == 4
    assert result.scores.miou > 95


def test_spectral_dataset_recovers_known_classes(halves):
    root, dataset = halves
    segmenter = Segmenter(SegEigModel(ColourBackbone()), device="cpu")
    result = evaluate_spectral_dataset(segmenter, dataset, crf=True,
                                       kernel_config=KernelConfig(k_feat=16))
    assert result.method == "spectral-dataset" and result.n_segments == 4
    assert result.scores.miou > 95 and result.scores_crf.miou > 90
    assert result.timing["spectral"] > 0
    # Over-clustering with majority matching also works; too few clusters for Hungarian not.
    assert evaluate_spectral_dataset(segmenter, dataset, n_clusters=6, match="majority",
                                     crf=False, kernel_config=KernelConfig(k_feat=16)
                                     ).scores.miou > 90
    with pytest.raises(ValueError, match="at least as many segments as classes"):
        evaluate_spectral_dataset(segmenter, dataset, n_clusters=3, match="hungarian",
                                  crf=False)
    with pytest.raises(ValueError, match="no stored class map fits them"):
        evaluate_spectral_dataset(segmenter, dataset, match="fixed", crf=False)


def test_spectral_dataset_densecrf_without_pydensecrf_fails_before_any_work(halves,
                                                                            monkeypatch):
    _, dataset = halves
    backbone = ColourBackbone()
    calls = []
    monkeypatch.setattr(backbone, "forward", lambda images: calls.append(1))
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    segmenter = Segmenter(SegEigModel(backbone), device="cpu")
    with pytest.raises(RuntimeError, match="pip install pydensecrf2"):
        evaluate_spectral_dataset(segmenter, dataset, crf=True, crf_backend="densecrf")
    assert calls == []  # refused before the first forward pass


def test_spectral_dataset_refuses_large_sets(halves):
    _, dataset = halves
    segmenter = Segmenter(SegEigModel(ColourBackbone()), device="cpu")
    with pytest.raises(SpectralSetTooLargeError, match=r"over the limit of 50 .*--max-images"):
        evaluate_spectral_dataset(segmenter, dataset, max_tokens=50, crf=False)


# -- the command line: train, info, evaluate and segment with spectral methods ---------------


def test_spectral_from_the_command_line(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "synth", n_train=6, n_val=3, size=64, n_classes=3)
    arch = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]
    common = ["--dataset", "custom", "--root", str(root), "--backbone-weights", "random", *arch,
              "--crop", "64", "--workers", "0", "--device", "cpu", "--kmeans-k", "4"]
    out = tmp_path / "sp"
    assert main(["train", *common, "--out", str(out), "--method", "spectral",
                 "--spectral-segments", "3", "--spectral-eigenvectors", "2"]) == 0
    config = read_config(out)
    assert config["methods"] == ["spectral"] and config["head"] is None
    assert config["spectral"]["segments_per_image"] == 3
    assert config["spectral"]["n_eigenvectors"] == 2
    assert config["spectral"]["kernel"]["k_feat"] == 256  # the training kernel, k_feat per image
    assert main(["info", str(out)]) == 0
    assert "3 segments per image from 2 eigenvectors" in capsys.readouterr().out
    model, _ = load_model(out)
    assert model.spectral[1] == SpectralConfig(n_eigenvectors=2, segments_per_image=3)
    assert model.centroids("spectral").shape == (4, TINY_ARCH["embed_dim"])

    evaluated = {}
    for method in ("spectral", "spectral-dataset"):
        path = tmp_path / f"{method}.json"
        assert main(["evaluate", "--checkpoint", str(out), "--dataset", "custom", "--root",
                     str(root), "--method", method, "--no-crf", "--device", "cpu",
                     "--json", str(path), "--match", "majority"]) == 0
        evaluated[method] = json.loads(path.read_text())
    assert evaluated["spectral"]["n_segments"] == 4
    assert evaluated["spectral-dataset"]["n_segments"] == 3  # the classes, by default
    assert all(r["n_images"] == 3 and r["method"] == m for m, r in evaluated.items())
    assert main(["evaluate", "--checkpoint", str(out), "--dataset", "custom", "--root",
                 str(root), "--method", "spectral", "--spectral-clusters", "5"]) == 2
    assert "spectral-dataset only" in capsys.readouterr().err

    seg = tmp_path / "seg"
    assert main(["segment", str(root / "images" / "val"), "--checkpoint", str(out), "--method",
                 "spectral", "--out", str(seg), "--workers", "0", "--device", "cpu"]) == 0
    labels = sorted((seg / "labels").glob("*.png"))
    assert len(labels) == 3
    assert np.asarray(Image.open(labels[0])).max() < 4

    # Added beside a trained head (and the kmeans baseline): one checkpoint, four methods.
    both = tmp_path / "both"
    assert main(["train", *common, "--out", str(both), "--k", "6", "--steps", "2",
                 "--batch-size", "2", "--baseline-centroids", "--spectral-centroids"]) == 0
    assert read_config(both)["methods"] == ["eigen", "eigen+kmeans", "kmeans", "spectral"]


def test_centroid_methods_per_training_method(tiny_model):
    assert centroid_methods(tiny_model, False) == ["eigen+kmeans"]
    assert centroid_methods(tiny_model, True, True) == ["eigen+kmeans", "kmeans", "spectral"]
    headless = SegEigModel(tiny_model.backbone)
    assert centroid_methods(headless, False) == ["kmeans"]
    assert centroid_methods(headless, False, method="spectral") == ["spectral"]
    assert centroid_methods(headless, True, method="spectral") == ["kmeans", "spectral"]
