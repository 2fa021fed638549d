"""Throughput of batch segmentation relative to the bare backbone forward.

Writes a folder of synthetic JPEGs, then measures images/s for

  (a) the backbone forward alone (pre-decoded tensors, one image at a time;
      also at ``--batch-size`` for reference),
  (b) ``segment`` without CRF (decode workers + model + label PNG writes),
      at batch size 1 and at ``--batch-size``,
  (c) ``segment`` with the dense CRF (CRF worker processes),

and prints a Markdown table with each rate as a ratio to (a). The model is a
randomly initialised backbone with a random head and centroids: cost, not
quality, is measured, so nothing is downloaded.

    python scripts/bench_segment.py                 # ViT-S/16, 12 images of 512 px, CPU
    python scripts/bench_segment.py --device cuda --images 64
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segeig.backbone import Backbone
from segeig.batch import SegmentOptions, expand_inputs, segment_files
from segeig.config import DEFAULT_BACKBONE, BackboneConfig, HeadConfig
from segeig.imageio import read_image
from segeig.model import build_model
from segeig.predictor import Segmenter
from segeig.transforms import to_tensor


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo-like ``size×size×3`` uint8 image: flat regions, a gradient and noise."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.linspace(0, 80, size, dtype=np.float32)[:, None, None]
    for _ in range(8):
        y0, x0 = rng.integers(0, size, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="number of images (default 12)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--k", type=int, default=256, help="eigenfunctions K of the head")
    parser.add_argument("--segments", type=int, default=32, help="eigen+kmeans centroids")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(name=args.backbone, weights="random"))
    model = build_model(backbone, HeadConfig(kind="mlp", k=args.k))
    model.set_centroids("eigen+kmeans", torch.randn(args.segments, model.head.hidden_dim))
    segmenter = Segmenter(model.eval(), device=args.device)
    sync = torch.cuda.synchronize if segmenter.device.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory(prefix="segeig-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(synthetic_image(rng, args.size)).save(folder / f"{i:04d}.jpg",
                                                                  quality=90)
        files, _ = expand_inputs([folder])
        print(f"{args.images} images of {args.size}x{args.size}, {args.backbone} (random "
              f"weights), K={args.k}, {args.segments} segments, device {segmenter.device}, "
              f"{torch.get_num_threads()} torch threads, {args.workers} workers",
              file=sys.stderr)

        images = torch.stack([to_tensor(read_image(f.path)) for f in files]).to(segmenter.device)

        @torch.no_grad()
        def backbone_rate(batch: int) -> float:
            segmenter.model.backbone(images[:batch])  # warm-up (allocator, kernels)
            sync()
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                segmenter.model.backbone(images[i : i + batch])
            sync()
            return len(images) / (time.perf_counter() - start)

        # Best of two for the reference: one slow pass (a busy machine) would
        # inflate every ratio.
        rows = [("(a) backbone forward alone, batch 1", max(backbone_rate(1), backbone_rate(1))),
                (f"(a) backbone forward alone, batch {args.batch_size}",
                 backbone_rate(args.batch_size))]

        runs = [
            ("(b) segment, no CRF, batch 1", SegmentOptions(batch_size=1)),
            (f"(b) segment, no CRF, batch {args.batch_size}",
             SegmentOptions(batch_size=args.batch_size)),
            (f"(c) segment + CRF, batch {args.batch_size}",
             SegmentOptions(batch_size=args.batch_size, crf=True)),
        ]
        segment_files(segmenter, files[:1], Path(tmp) / "warmup")
        for i, (name, options) in enumerate(runs):
            options.workers = args.workers
            print(f"running {name} ...", file=sys.stderr)
            start = time.perf_counter()
            results = segment_files(segmenter, files, Path(tmp) / f"out{i}", options)
            sync()
            elapsed = time.perf_counter() - start
            if any(r.status != "segmented" for r in results):
                raise RuntimeError(f"{name}: not every image was segmented")
            rows.append((name, args.images / elapsed))

    base = rows[0][1]
    print("| configuration | images/s | ratio to (a) |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
