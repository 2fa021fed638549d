"""Measurements behind ``scripts/benchmark.py`` (timing, quality, memory probes).

Timing: ``time.perf_counter`` around each call, CUDA synchronised before and
after, one warm-up call first; configurations are interleaved repeat by repeat
(so a burst of load from other processes hits all of them alike) and each
reports the median over repeats of its mean time per image.

Memory of the graph kernel and of exact spectral clustering is measured in a
fresh process per size (``python scripts/bench_parts.py probe ...``): the
growth of the process's peak resident memory (``ru_maxrss``) over its value
right before the measured call, and ``torch.cuda.max_memory_allocated`` on
CUDA.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import segeig
from segeig.backbone import Backbone
from segeig.config import HeadConfig, KernelConfig, ObjectiveConfig
from segeig.head import EigenHead, gumbel_probs, tau_at
from segeig.kernel import build_kernel
from segeig.model import CENTROID_METHODS, SegEigModel
from segeig.objective import neuralef_loss
from segeig.predictor import Segmenter
from segeig.spectral import dataset_spectral_clustering
from segeig.synthetic import render_sample
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
            twin.set_centroids(method, model.centroids(method))
    return Segmenter(twin, segmenter.config, device=segmenter.device), cached


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
                    images: Sequence[np.ndarray], repeats: int, crf: bool,
                    device: torch.device) -> dict[str, float]:
    """Seconds per image of the backbone alone, and per variant: end to end
    (``NAME``), after the backbone only (``NAME/after``) and with CRF (``NAME+crf``)."""
    tensors = [to_tensor(image)[None].to(device) for image in images]
    twins = {}
    with torch.no_grad():
        features = [backbone(t) for t in tensors]
    calls: dict[str, Callable[[int], object]] = {}

    def backbone_call(i: int) -> object:
        with torch.no_grad():
            return backbone(tensors[i])

    calls["backbone"] = backbone_call
    for name, (segmenter, method) in variants.items():
        twin, cached = twins.setdefault(id(segmenter), after_backbone(segmenter))

        def after(i: int, twin=twin, cached=cached, method=method) -> object:
            cached.features = features[i]
            return twin.predict(images[i], method)

        calls[name] = lambda i, s=segmenter, m=method: s.predict(images[i], m)
        calls[f"{name}/after"] = after
        if crf:
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


# -- memory probes, one fresh process per measurement --------------------------------------


def clustered_features(batch: int, grid: int, dim: int, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with cluster structure (each image: a few vertical strips, each
    drawn around one of 20 global centres) and random images at 16 px/patch.

    Returns ``(features B×D×g×g, images B×3×16g×16g in [0, 1])``.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=gen)
    labels = torch.empty(batch, grid, grid, dtype=torch.long)
    for i in range(batch):
        cuts = sorted(torch.randint(1, grid, (3,), generator=gen).tolist())
        ids = torch.randint(0, 20, (4,), generator=gen)
        for j, (a, b) in enumerate(zip([0, *cuts], [*cuts, grid], strict=True)):
            labels[i, :, a:b] = ids[j]
    features = centres[labels].permute(0, 3, 1, 2).contiguous()
    features += torch.randn(features.shape, generator=gen)
    images = torch.rand(batch, 3, 16 * grid, 16 * grid, generator=gen)
    return features, images


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def probe(kind: str, batch: int, grid: int, dim: int, k_feat: int, n_eigenvectors: int,
          device: str) -> dict:
    """One measurement in this process: ``kernel`` build or ``exact`` spectral clustering."""
    dev = torch.device(device)
    features, images = clustered_features(batch, grid, dim)
    features, images = features.to(dev), images.to(dev)
    config = KernelConfig(k_feat=k_feat)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base_gpu = torch.cuda.memory_allocated(dev)
    base = _max_rss_bytes()
    start = time.perf_counter()
    if kind == "kernel":
        kernel = build_kernel(features, images, config)
        edges = int(kernel.values().numel())
    else:
        _, values = dataset_spectral_clustering(features, images, config, n_eigenvectors)
        edges = -1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"kind": kind, "tokens": batch * grid * grid, "seconds": seconds,
              "cpu_bytes": max(0, _max_rss_bytes() - base), "edges": edges,
              "gpu_bytes": None}
    if dev.type == "cuda":
        result["gpu_bytes"] = torch.cuda.max_memory_allocated(dev) - base_gpu
    return result


def run_probe(kind: str, batch: int, grid: int, dim: int, k_feat: int, n_eigenvectors: int,
              device: str, threads: int, timeout: float = 900) -> dict:
    """:func:`probe` in a fresh Python process (clean peak-memory counter)."""
    command = [sys.executable, str(Path(__file__).resolve()), "probe", kind, str(batch),
               str(grid), str(dim), str(k_feat), str(n_eigenvectors), device, str(threads)]
    # The child imports segeig from wherever this process did (an uninstalled checkout too).
    root = str(Path(segeig.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {kind} {batch}x{grid}² failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "batch": batch, "grid": grid}


if __name__ == "__main__" and len(sys.argv) == 10 and sys.argv[1] == "probe":
    torch.set_num_threads(int(sys.argv[9]))
    kind_, device_ = sys.argv[2], sys.argv[8]
    batch_, grid_, dim_, k_, n_ = map(int, sys.argv[3:8])
    print(json.dumps(probe(kind_, batch_, grid_, dim_, k_, n_, device_)))
