#!/usr/bin/env python
"""Training smoke benchmark: a few hundred steps of the reference configuration
on synthetic images, reporting steps/s and peak GPU memory.

Reference configuration (Pascal Context's training defaults, docs/training.md,
"Defaults per dataset", with the paper's transformer head): ViT-S/16,
transformer head, K = 256, batch 16, 480 px crops, AMP (bf16 where
supported). The backbone is randomly initialised by default — its speed
equals DINO's and the run needs no network — pass ``--backbone-weights hub``
to use DINO.

    python scripts/gpu_train_smoke.py                       # GPU, 300 steps
    python scripts/gpu_train_smoke.py --tiny --device cpu   # seconds, any machine

Prints a table and writes ``OUT/smoke.json``; exits non-zero if the loss is
not finite or training fails.
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
from PIL import Image

from segeig.config import BackboneConfig, HeadConfig
from segeig.model import resolve_device
from segeig.train import default_config, read_log, train

TINY_ARCH = {"depth": 4, "embed_dim": 48, "num_heads": 2}


def synthetic_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """``count`` JPEGs of flat random rectangles plus noise (ADE-like sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(count):
        image = np.zeros((h, w, 3), np.float32)
        for _ in range(6):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            image[y0:, x0:] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg",
                                                                      quality=90)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded from steps/s")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=480)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--head", choices=("transformer", "mlp"), default="transformer")
    parser.add_argument("--backbone", default="vit_small_patch16_224.dino")
    parser.add_argument("--backbone-weights", default="random")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--images", type=int, default=64, help="synthetic images to write")
    parser.add_argument("--image-size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--global-graph", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="output directory (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny ViT, 64 px crops, K=8, batch 2, 6 steps: a CPU check")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.batch_size, args.crop, args.k = 6, 2, 2, 64, 8
        args.images, args.image_size, args.workers = 8, (72, 96), 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out or tempfile.mkdtemp(prefix="segeig-smoke-"))
    data = out / "images"
    synthetic_images(data, args.images, tuple(args.image_size))
    backbone = BackboneConfig(name=args.backbone, weights=args.backbone_weights,
                              arch_overrides=dict(TINY_ARCH) if args.tiny else {})
    config = default_config(
        "folder", data, backbone=backbone, head=HeadConfig(kind=args.head, k=args.k),
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, resolution=0,
        scale=(0.5, 2.0), amp=args.amp, workers=args.workers, log_every=10,
        checkpoint_every=0, kmeans_k=min(args.k, 64), global_graph=args.global_graph)
    stamps: dict[int, float] = {}
    losses: list[float] = []

    def progress(step: int, total: int, info: dict) -> None:
        if info["phase"] == "train":
            stamps[step] = time.perf_counter()
            losses.append(info["loss"])
            if step % 50 == 0 or step == total:
                print(f"  step {step}/{total}  loss {info['loss']:.5f}  tau {info['tau']:.2f}",
                      flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(f"training {args.steps} steps on {device} (batch {args.batch_size}, crop {args.crop}, "
          f"K={args.k}, head {args.head}, amp {args.amp})", flush=True)
    start = time.perf_counter()
    checkpoint = train(config, out / "run", device=str(device), overwrite=True,
                       progress=progress)
    total = time.perf_counter() - start
    log = read_log(out / "run" / "train_log.jsonl")
    warm = min(args.warmup, args.steps - 1)
    steady = (stamps[args.steps] - stamps[warm]) / (args.steps - warm) if args.steps > warm \
        else float("nan")
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": next(r["amp"] for r in log if r["event"] == "start"),
        "steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "k": args.k,
        "head": args.head, "backbone": args.backbone, "tiny": args.tiny,
        "steps_per_s": 1.0 / steady, "images_per_s": args.batch_size / steady,
        "first_step_s": stamps[1] - start, "total_s": total,
        "peak_gpu_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                               if device.type == "cuda" else None),
        "loss_first": losses[0], "loss_last": losses[-1], "checkpoint": str(checkpoint),
    }
    width = max(map(len, report))
    for key, value in report.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    (out / "smoke.json").write_text(json.dumps(report, indent=2))
    return 0 if all(np.isfinite(losses)) else 1


if __name__ == "__main__":
    sys.exit(main())
