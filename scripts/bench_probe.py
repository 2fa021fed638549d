"""Peak memory and time of the graph kernel and of exact spectral clustering.

Each measurement runs in a fresh Python process (``python scripts/bench_probe.py
KIND BATCH GRID DIM K_FEAT CLUSTERS DEVICE THREADS`` prints one JSON line):
the growth of the process's peak resident memory (``VmHWM``, reset right
before the measured call) over its resident memory then, and
``torch.cuda.max_memory_allocated`` on CUDA. Only torch, scipy and the
segeig graph modules are imported, so a probe starts in about two seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import segeig
from segeig.config import KernelConfig
from segeig.kernel import build_kernel
from segeig.spectral import dataset_spectral_clustering


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


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS; returns that baseline (bytes).

    ``ru_maxrss`` cannot serve: Linux carries it over from the parent through
    fork and exec, so a child of a big process starts with the parent's peak.
    ``VmHWM`` belongs to the new address space and can be reset (``clear_refs``).
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    current = _status_bytes("VmRSS")
    return current if current is not None else _peak_bytes()


def _peak_bytes() -> int:
    peak = _status_bytes("VmHWM")
    if peak is None:  # not Linux: the (inherited, so conservative) peak counter
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if sys.platform == "darwin" else 1024)
    return peak


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
    base = _reset_peak()
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
              "cpu_bytes": max(0, _peak_bytes() - base), "edges": edges,
              "gpu_bytes": None}
    if dev.type == "cuda":
        result["gpu_bytes"] = torch.cuda.max_memory_allocated(dev) - base_gpu
    return result


def run_probe(kind: str, batch: int, grid: int, dim: int, k_feat: int, n_eigenvectors: int,
              device: str, threads: int, timeout: float = 900) -> dict:
    """:func:`probe` in a fresh Python process (clean peak-memory counter)."""
    command = [sys.executable, str(Path(__file__).resolve()), kind, str(batch),
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


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[8]))
    kind_, device_ = sys.argv[1], sys.argv[7]
    batch_, grid_, dim_, k_, n_ = map(int, sys.argv[2:7])
    print(json.dumps(probe(kind_, batch_, grid_, dim_, k_, n_, device_)))
