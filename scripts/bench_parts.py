"""Timing measurements behind ``scripts/benchmark.py``.

Timing: ``time.perf_counter`` around each call, CUDA synchronised before and
after, one warm-up call first; configurations are interleaved repeat by repeat
(so a burst of load from other processes hits all of them alike) and each
reports the median over repeats of its mean time per image.

Memory probes live in ``bench_probe.py`` (one fresh process per measurement).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from segeig.backbone import Backbone
from segeig.config import HeadConfig, KernelConfig, ObjectiveConfig, WorkingResolution
from segeig.data.synthetic import render_sample
from segeig.feature_cache import View, prepare_feature_cache
from segeig.head import EigenHead, gumbel_probs, tau_at
from segeig.kernel import build_kernel
from segeig.model import CENTROID_METHODS, SegEigModel
from segeig.objective import neuralef_loss
from segeig.predictor import Segmenter
from segeig.train.cached_crops import CachedCrops
from segeig.transforms import to_tensor


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class CachedBackbone(torch.nn.Module):
    """Stands in for the backbone and returns features computed beforehand, so a
    :class:`Segmenter` call times only what follows the backbone (head,
    centroids or spectral clustering, upsampling, argmax, CRF)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.patch_size, self.embed_dim = backbone.patch_size, backbone.embed_dim
        self.feature_dim = backbone.feature_dim
        self.mean = backbone.mean
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # device anchor
        self.features = None

    def forward(self, images: torch.Tensor):
        return self.features


def after_backbone(segmenter: Segmenter) -> tuple[Segmenter, CachedBackbone]:
    """A twin of ``segmenter`` (same head and centroids) over a :class:`CachedBackbone`."""
    model = segmenter.model
    cached = CachedBackbone(model.backbone)
    twin = SegEigModel(cached, model.head, spectral=model.spectral)
    for method in CENTROID_METHODS:
        if model.centroids(method) is not None:
            twin.set_centroids(method, model.centroids(method),
                               *model.centroid_metrics.get(method, ("cosine", 1.0)))
    # The cached features belong to the images as given: no working-resolution resize.
    return Segmenter(twin, segmenter.config, device=segmenter.device,
                     resolution=WorkingResolution()), cached


def interleaved_medians(calls: dict[str, Callable[[int], object]], n_items: int, repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Median over ``repeats`` of the mean seconds per item of each ``call(i)``."""
    sync = synchronizer(device)
    for call in calls.values():  # warm-up: allocator, kernels, lazy imports
        call(0)
    per_repeat: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            total = 0.0
            for i in range(n_items):
                sync()
                start = time.perf_counter()
                call(i)
                sync()
                total += time.perf_counter() - start
            per_repeat[name].append(total / n_items)
    return {name: statistics.median(values) for name, values in per_repeat.items()}


def inference_times(backbone: Backbone, variants: dict[str, tuple[Segmenter, str]],
                    images: Sequence[np.ndarray], repeats: int, full: bool,
                    device: torch.device) -> dict[str, float]:
    """Seconds per image, interleaved (see module docstring).

    Keys: ``backbone`` (forward alone); per head kind ``head:KIND`` (its forward
    alone, on the backbone's features); per variant ``NAME/after`` (everything
    after the backbone: scores, full-size argmax). With ``full`` also ``NAME``
    (``Segmenter.predict`` end to end) and ``NAME+crf`` (with dense CRF).
    """
    tensors = [to_tensor(image)[None].to(device) for image in images]
    with torch.no_grad():
        features = [backbone(t) for t in tensors]
    calls: dict[str, Callable[[int], object]] = {}

    def backbone_call(i: int) -> object:
        with torch.no_grad():
            return backbone(tensors[i])

    calls["backbone"] = backbone_call
    twins: dict[int, tuple[Segmenter, CachedBackbone]] = {}
    for segmenter, _ in variants.values():
        head = segmenter.model.head
        if id(segmenter) not in twins:
            twins[id(segmenter)] = after_backbone(segmenter)
            if head is not None:
                def head_call(i: int, head=head) -> object:
                    with torch.no_grad():
                        return head(features[i].stacked)

                calls[f"head:{head.config.kind}"] = head_call
    for name, (segmenter, method) in variants.items():
        twin, cached = twins[id(segmenter)]

        def after(i: int, twin=twin, cached=cached, method=method) -> object:
            cached.features = features[i]
            return twin.predict(images[i], method)

        calls[f"{name}/after"] = after
        if full:
            calls[name] = lambda i, s=segmenter, m=method: s.predict(images[i], m)
            calls[f"{name}+crf"] = lambda i, s=segmenter, m=method: s.predict(images[i], m,
                                                                              crf=True)
    return interleaved_medians(calls, len(images), repeats, device)


def synthetic_crops(n: int, size: int, seed: int = 0, n_classes: int = 6) -> torch.Tensor:
    """``n×3×size×size`` float crops in [0, 1] rendered like the synthetic datasets."""
    rng = np.random.default_rng(seed)
    return torch.stack([to_tensor(render_sample(rng, (size, size), n_classes)[0])
                        for _ in range(n)])


def train_step_split(backbone: Backbone, kind: str, k: int, crops: torch.Tensor,
                     kernel_config: KernelConfig, repeats: int, device: torch.device
                     ) -> dict[str, float]:
    """Median seconds of each phase of one training step (as the trainer runs it,
    without padding masks): backbone, kernel, head forward, loss, backward + Adam."""
    sync = synchronizer(device)
    head = EigenHead(backbone.feature_dim, HeadConfig(kind=kind, k=k),
                     embed_dim=backbone.embed_dim).to(device).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    objective = ObjectiveConfig()
    images = crops.to(device)
    phases: dict[str, list[float]] = {p: [] for p in ("backbone", "kernel", "head", "loss",
                                                      "backward")}
    for step in range(repeats + 1):  # step 0 is the warm-up
        times = []
        sync()
        times.append(time.perf_counter())
        with torch.no_grad():
            features = backbone(images)
        sync()
        times.append(time.perf_counter())
        kernel = build_kernel(features.kernel.float(), images, kernel_config)
        sync()
        times.append(time.perf_counter())
        logits, _ = head(features.stacked)
        sync()
        times.append(time.perf_counter())
        flat = logits.float().flatten(2).transpose(1, 2).reshape(-1, k)
        out = neuralef_loss(gumbel_probs(flat, tau_at(step, repeats + 1)), kernel,
                            objective.beta_for(k), objective.t)
        sync()
        times.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter())
        if step:
            for name, a, b in zip(phases, times[:-1], times[1:], strict=True):
                phases[name].append(b - a)
    return {name: statistics.median(values) for name, values in phases.items()}


class _Crops:
    """Synthetic images as an :class:`segeig.feature_cache.ImageSource`."""

    def __init__(self, crops: torch.Tensor) -> None:
        self.images = [(c.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                       for c in crops]

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def size(self, index: int) -> tuple[int, int]:
        return self.images[index].shape[:2]

    def identity(self, index: int) -> str:
        return str(index)


def cached_step_split(backbone: Backbone, kinds: Sequence[str], k: int, crops: torch.Tensor,
                      kernel_config: KernelConfig, repeats: int, device: torch.device,
                      cache_dir: str, views: Sequence[View]) -> dict[str, object]:
    """The training step from a feature cache, and what the cache costs.

    The cache holds ``views`` of each crop (as a working-resolution image of
    the crop's size); a step reads ``len(crops)`` windows of the crop size at
    seeded random patch offsets (:class:`segeig.train.cached_crops.CachedCrops`).

    Returns:
        ``{"steps": {kind: {phase: median seconds}}, "fill_s": seconds per image,
        "bytes": bytes per image, "views": len(views)}``; phases: read, kernel,
        head, loss, backward (+ Adam).
    """
    sync = synchronizer(device)
    source = _Crops(crops)
    sync()
    start = time.perf_counter()
    cache = prepare_feature_cache(cache_dir, backbone, source, views, None, device=device)
    sync()
    fill = (time.perf_counter() - start) / len(source)
    windows = CachedCrops(cache, crops.shape[-1], 0.5)
    objective = ObjectiveConfig()
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        head = EigenHead(backbone.feature_dim, HeadConfig(kind=kind, k=k),
                         embed_dim=backbone.embed_dim).to(device).train()
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
        phases: dict[str, list[float]] = {p: [] for p in ("read", "kernel", "head", "loss",
                                                          "backward")}
        for step in range(repeats + 1):  # step 0 is the warm-up
            times = [time.perf_counter()]
            batch = [windows[(i, 1000 * step + i)] for i in range(len(source))]
            tokens = torch.stack([t for t, _ in batch]).to(device).float()
            valid = torch.stack([v for _, v in batch]).to(device)
            stacked, kfeat, colours = cache.split(tokens)
            sync()
            times.append(time.perf_counter())
            kernel = build_kernel(kfeat, colours, kernel_config, valid=valid)
            sync()
            times.append(time.perf_counter())
            logits, _ = head(stacked)
            sync()
            times.append(time.perf_counter())
            flat = logits.float().flatten(2).transpose(1, 2).reshape(-1, k)
            loss = neuralef_loss(gumbel_probs(flat, tau_at(step, repeats + 1))[valid.reshape(-1)],
                                 kernel, objective.beta_for(k), objective.t)
            sync()
            times.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.loss.backward()
            optimizer.step()
            sync()
            times.append(time.perf_counter())
            if step:
                for name, a, b in zip(phases, times[:-1], times[1:], strict=True):
                    phases[name].append(b - a)
        out[kind] = {name: statistics.median(values) for name, values in phases.items()}
    return {"steps": out, "fill_s": fill, "bytes": cache.nbytes / len(source),
            "views": len(views)}
