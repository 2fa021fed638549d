"""Quality half of ``scripts/benchmark.py``: both heads trained briefly on a synthetic
custom set, every method scored on its validation split.

A proxy: the synthetic classes are colour/texture families. The backbone is
the *proxy backbone* when its file exists (a ViT-Tiny/16 pretrained offline on
other synthetic classes by ``scripts/make_proxy_backbone.py``; the evaluation
set then defaults to :data:`PROXY_SETTINGS`), else a randomly initialised ViT,
which cannot rank methods (every method scores within noise of the others).
Either way the numbers rank heads and methods on *this* data, not on a real
benchmark with DINO.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from segeig.config import BackboneConfig, KernelConfig
from segeig.data import build_dataset
from segeig.data.synthetic import make_synthetic_dataset
from segeig.data.textures import make_texture_dataset
from segeig.evaluation import evaluate, load_eval_dataset, resolve_protocol
from segeig.evaluation.spectral_dataset import evaluate_spectral_dataset, kernel_config_of
from segeig.kernel import pad_to_grid
from segeig.predictor import Segmenter, load
from segeig.spectral import spectral_cluster_set
from segeig.train import TrainConfig, default_config, train
from segeig.train.centroids import fit_centroids
from segeig.transforms import to_tensor

logger = logging.getLogger(__name__)

HEADS = ("mlp", "transformer")


@dataclass
class QualitySettings:
    """What the quality section trains and scores (see ``benchmark.py --help``)."""

    n_train: int = 48
    n_val: int = 16
    size: int = 128
    classes: int = 6
    k: int = 24
    steps: int = 150
    batch: int = 8
    k_feat: int = 32
    seed: int = 0
    #: Train this many epochs instead of ``steps`` (0: use ``steps``; both 0 with
    #: ``custom_defaults``: the preset's length).
    epochs: int = 0
    #: Train with ``default_config("custom")`` as it is, except K and the length
    #: (``batch``, ``k_feat`` and the crop settings are then the preset's).
    custom_defaults: bool = False
    #: The texture-statistics set (:mod:`segeig.data.textures`, the proxy
    #: backbone's) instead of the colour-and-texture one.
    texture: bool = False


#: The evaluation set with the proxy backbone: 8 texture classes, 120 train /
#: 40 val images of 320 px (the ``custom`` preset's working resolution), K = 64,
#: trained with the ``custom`` preset as it is. The validation set is the same
#: for every seed (``val_seed=0``); the seed draws the training set and the run.
PROXY_SETTINGS = dict(n_train=120, n_val=40, size=320, classes=8, k=64, epochs=0, steps=0,
                      batch=8, k_feat=256, texture=True, custom_defaults=True)


def quality_config(settings: QualitySettings, root: Path, backbone: BackboneConfig, head: str,
                   first: bool) -> TrainConfig:
    """The training run of one head (``first``: also fit the head-free baselines).

    With ``custom_defaults`` every setting that changes the computation is the
    ``custom`` preset's except K, the length and the backbone; otherwise the
    crops are the images' own size with a mild zoom (1.0–1.5) and ``kmeans_k``
    is the class count.
    """
    s = settings
    length = dict(epochs=s.epochs) if s.epochs > 0 else dict(steps=s.steps) if s.steps else {}
    common = dict(backbone=backbone, head_kind=head, k=s.k, workers=0, checkpoint_every=0,
                  log_every=50, baseline_centroids=first, spectral_centroids=first,
                  seed=s.seed, **length)
    if s.custom_defaults:
        return default_config("custom", root, **common)
    return default_config("custom", root, batch_size=s.batch, crop=s.size,
                          resolution=s.size, scale=(1.0, 1.5), kmeans_k=s.classes,
                          kernel=KernelConfig(k_feat=s.k_feat), **common)


@dataclass
class QualityResult:
    """mIoU (in [0, 100]) per (head or "-", method, matching); CRF variants under "+crf".

    Merged over seeds (:func:`merge`): means, with the standard deviation over
    seeds of each mIoU in ``spread`` (empty for one seed).
    """

    miou: dict[tuple[str, str, str], float] = field(default_factory=dict)
    agreement: dict[str, tuple[float, float]] = field(default_factory=dict)  # head → (NMI, ARI)
    train_seconds: dict[str, float] = field(default_factory=dict)
    spread: dict[tuple[str, str, str], float] = field(default_factory=dict)
    seeds: int = 1


def merge(results: list[QualityResult]) -> QualityResult:
    """Mean over seeds (and the spread of every mIoU)."""
    if len(results) == 1:
        return results[0]
    out = QualityResult(seeds=len(results))
    for key in results[0].miou:
        values = [r.miou[key] for r in results]
        out.miou[key], out.spread[key] = float(np.mean(values)), float(np.std(values))
    for head in results[0].agreement:
        out.agreement[head] = tuple(float(np.mean([r.agreement[head][i] for r in results]))
                                    for i in range(2))
        out.train_seconds[head] = float(np.mean([r.train_seconds[head] for r in results]))
    return out


def kernel_neighbours(s: QualitySettings) -> int:
    """``k_feat`` of the training kernel (the preset's with ``custom_defaults``)."""
    return KernelConfig().k_feat if s.custom_defaults else s.k_feat


def training_text(s: QualitySettings) -> str:
    """How the heads were trained, for the table: ``"15 epochs, custom preset"`` etc."""
    length = (f"{s.epochs} epochs" if s.epochs > 0 else f"{s.steps} steps" if s.steps
              else "the preset's length")
    if s.custom_defaults:
        return (f"{length}, 'custom' preset unmodified but K={s.k} "
                f"(k_feat {kernel_neighbours(s)})")
    return f"{length} × {s.batch} crops of {s.size} px, K={s.k}, k_feat {s.k_feat}"


def summary_line(q: QualityResult, s: QualitySettings) -> str:
    """Every method side by side: majority mIoU at S = K, no CRF (the issue-11 table)."""
    def value(key: tuple[str, str, str]) -> str:
        sd = f" ± {q.spread[key]:.1f}" if key in q.spread else ""
        return f"{q.miou[key]:.1f}{sd}" if key in q.miou else "–"

    parts = []
    for head in HEADS:
        if head in q.train_seconds:
            parts += [f"eigen · {head} {value((head, 'eigen', 'majority'))}",
                      f"eigen+kmeans · {head} {value((head, 'eigen+kmeans', 'majority'))}"]
    parts += [f"kmeans {value(('-', 'kmeans', 'majority'))}",
              f"exact spectral (spectral-dataset, val) "
              f"{value(('-', 'spectral-dataset', 'majority'))}"]
    seeds = f", mean ± sd of {q.seeds} seeds" if q.seeds > 1 else ""
    return (f"Majority mIoU at S = K = {s.k}, no CRF ({s.n_val} val images, {s.classes} "
            f"classes; {training_text(s)}{seeds}): " + " · ".join(parts))


def _patch_labels_eigen(segmenter: Segmenter, images: list[np.ndarray]) -> np.ndarray:
    # At the working resolution, as everything else the checkpoint runs.
    return np.concatenate([segmenter.forward(to_tensor(segmenter.working_image(im))[None],
                                             "eigen").scores.argmax(1).flatten().cpu().numpy()
                           for im in images])


def _patch_labels_exact(segmenter: Segmenter, images: list[np.ndarray], n_clusters: int,
                        kernel: KernelConfig) -> np.ndarray:
    features, smalls = [], []
    with torch.no_grad():
        for image in images:
            x = to_tensor(segmenter.working_image(image))[None].to(segmenter.device)
            backbone = segmenter.model.backbone
            f = backbone(x).kernel.float()[0].cpu()
            features.append(f)
            # Colours on the padded patch grid the backbone saw.
            padded = pad_to_grid(x.float(), f.shape[-2:], backbone.patch_size,
                                 tuple(backbone.mean))
            smalls.append(F.interpolate(padded, size=f.shape[-2:], mode="bilinear",
                                        align_corners=False)[0].cpu())
    grids, _ = spectral_cluster_set(features, smalls, kernel, n_clusters)
    return np.concatenate([g.argmax(0).flatten().numpy() for g in grids])


def run_quality(settings: QualitySettings, backbone: BackboneConfig, workdir: Path,
                device: torch.device, heads: tuple[str, ...] = HEADS) -> QualityResult:
    """Train each head, fit centroids at S = classes and S = K, score everything."""
    s = settings
    if s.texture:  # one validation set; the seed draws the training set and the run
        root = make_texture_dataset(workdir / "synth", s.n_train, s.n_val, s.size, s.classes,
                                    seed=s.seed, val_seed=0)
    else:
        root = make_synthetic_dataset(workdir / "synth", s.n_train, s.n_val, s.size,
                                      s.classes, seed=s.seed)
    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, root, "val")
    train_set = build_dataset("custom", root, "train", with_labels=False)
    val_images = [val.load(i).image for i in range(len(val))]
    out = QualityResult()
    for index, head in enumerate(heads):
        first = index == 0  # the head-free baselines are fitted once, with the first head
        config = quality_config(s, root, backbone, head, first)
        start = time.perf_counter()
        checkpoint = train(config, workdir / head, device=str(device), overwrite=True)
        out.train_seconds[head] = time.perf_counter() - start
        segmenter = load(checkpoint, device=device)
        for method in segmenter.methods:
            key = head if method.startswith("eigen") else "-"
            if method == "eigen":
                continue  # K clusters: scored below with majority matching
            result = evaluate(segmenter, val, protocol, method=method, match="hungarian")
            out.miou[key, method, "hungarian"] = result.scores.miou
            out.miou[key, method, "hungarian+crf"] = result.scores_crf.miou
        # Over-clustering: K segments, many-to-one matching.
        methods = ["eigen+kmeans"] + (["kmeans", "spectral"] if first else [])
        centroids = fit_centroids(segmenter.model, train_set, k=s.k, crop=config.crop,
                                  batch_size=config.batch_size, max_tokens=config.kmeans_tokens,
                                  iters=config.kmeans_iters, seed=s.seed,
                                  device=segmenter.device, methods=methods,
                                  resolution=config.working_resolution,
                                  metric=config.kmeans_metric)
        for method, fitted in centroids.items():
            segmenter.model.set_centroids(method, fitted.centroids, fitted.metric, fitted.spread)
        for method in ["eigen", *methods]:
            key = head if method.startswith("eigen") else "-"
            result = evaluate(segmenter, val, protocol, method=method, match="majority",
                              crf=False)
            out.miou[key, method, "majority"] = result.scores.miou
        if first:
            exact = evaluate_spectral_dataset(segmenter, val, protocol, n_clusters=s.classes,
                                              seed=s.seed)
            out.miou["-", "spectral-dataset", "hungarian"] = exact.scores.miou
            out.miou["-", "spectral-dataset", "hungarian+crf"] = exact.scores_crf.miou
            exact_k = evaluate_spectral_dataset(segmenter, val, protocol, n_clusters=s.k,
                                                match="majority", crf=False, seed=s.seed)
            out.miou["-", "spectral-dataset", "majority"] = exact_k.scores.miou
        # How well the learned eigenfunctions' argmax agrees with the exact
        # clustering of the same kernel on the same (validation) patches.
        learned = _patch_labels_eigen(segmenter, val_images)
        exact_labels = _patch_labels_exact(segmenter, val_images, s.k,
                                           kernel_config_of(segmenter))
        out.agreement[head] = (normalized_mutual_info_score(exact_labels, learned),
                               adjusted_rand_score(exact_labels, learned))
    return out
