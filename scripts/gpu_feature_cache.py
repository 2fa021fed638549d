#!/usr/bin/env python
"""Training with and without the feature cache, side by side, on synthetic images.

The Pascal Context preset (``default_config("pascal_context")``: ViT-S/16,
K = 256, batch 16, 480 px crops around a 520 px working resolution, scale
0.5–2.0, AMP) on ``--images`` synthetic JPEGs; the same steps are run with
``feature_cache=False`` and then with the cache (filled first), each in its
own output folder. Reports steps/s after a warm-up, the fill time, the whole
run and peak GPU memory of each, and writes ``OUT/cache.json``.

    python scripts/gpu_feature_cache.py                       # GPU, 200 steps each
    python scripts/gpu_feature_cache.py --tiny --device cpu   # seconds, any machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_train_smoke import TINY_ARCH, synthetic_images  # noqa: E402

from segeig.config import BackboneConfig  # noqa: E402
from segeig.model import resolve_device  # noqa: E402
from segeig.train import default_config, read_log, train  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded from steps/s")
    parser.add_argument("--images", type=int, default=128, help="synthetic images to write")
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"),
                        help="Pascal Context-like photo size")
    parser.add_argument("--head", choices=("transformer", "mlp"), default=None,
                        help="head (default: the preset's)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="output directory (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny ViT, 64 px crops, K=8, batch 2, 6 steps: a CPU check")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, out: Path, cache: bool, device: torch.device) -> dict:
    tiny = dict(k=8, crop=64, batch_size=2, resolution=72, workers=0, kmeans_k=4,
                backbone=BackboneConfig(weights="random", arch_overrides=dict(TINY_ARCH)))
    settings = tiny if args.tiny else dict(
        workers=args.workers, backbone=BackboneConfig(weights="random"))
    if args.head:
        settings["head_kind"] = args.head
    config = default_config("pascal_context", out / "images", steps=args.steps,
                            checkpoint_every=0, log_every=10, feature_cache=cache,
                            feature_cache_dir=str(out / "cache") if cache else None, **settings)
    config.dataset = "folder"
    stamps: dict[int, float] = {}

    def progress(step: int, total: int, info: dict) -> None:
        if info["phase"] == "train":
            stamps[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train(config, out / ("cached" if cache else "uncached"), device=str(device),
          overwrite=True, progress=progress)
    total = time.perf_counter() - start
    log = read_log(out / ("cached" if cache else "uncached") / "train_log.jsonl")
    filled = next((r for r in log if r["event"] == "cache"), None)
    warm = min(args.warmup, args.steps - 1)
    steady = (stamps[args.steps] - stamps[warm]) / max(args.steps - warm, 1)
    losses = [r["loss"] for r in log if r["event"] == "step"]
    return {
        "feature_cache": cache, "steps_per_s": 1.0 / steady, "total_s": total,
        "fill_s": filled["seconds"] if filled else 0.0,
        "cache_gb": filled["bytes"] / 2**30 if filled else 0.0,
        "peak_gpu_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                               if device.type == "cuda" else None),
        "loss_last": losses[-1] if losses else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.images, args.image_size = 6, 2, 8, (72, 96)
    device = resolve_device(args.device)
    out = Path(args.out or tempfile.mkdtemp(prefix="segeig-cache-bench-"))
    synthetic_images(out / "images", args.images, tuple(args.image_size))
    print(f"{args.steps} steps of the Pascal Context preset on {device}, without and with "
          "the feature cache", flush=True)
    results = [run(args, out, cache, device) for cache in (False, True)]
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "steps": args.steps, "images": args.images, "tiny": args.tiny,
              "uncached": results[0], "cached": results[1],
              "speedup_steps": results[1]["steps_per_s"] / results[0]["steps_per_s"],
              "speedup_total": results[0]["total_s"] / results[1]["total_s"]}
    for name in ("uncached", "cached"):
        row = report[name]
        memory = row["peak_gpu_memory_gb"]
        print(f"{name:>9}: {row['steps_per_s']:.3g} steps/s, whole run {row['total_s']:.1f} s "
              f"(fill {row['fill_s']:.1f} s, {row['cache_gb']:.2f} GiB), peak GPU memory "
              f"{'-' if memory is None else f'{memory:.2f} GiB'}")
    print(f"speed-up: {report['speedup_steps']:.2f}× per step, {report['speedup_total']:.2f}× "
          "for the whole run")
    (out / "cache.json").write_text(json.dumps(report, indent=2))
    return 0 if all(np.isfinite(r["loss_last"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
