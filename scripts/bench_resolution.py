"""Cost of a photo's pixel count at a fixed working resolution.

A head is used at the working resolution it was trained at, so a 12 MP phone
photo should cost little more than a small copy of itself: decoding, one
resize and sampling the labels at every original pixel grow with the pixels,
the network does not. This script writes one synthetic 4000×3000 JPEG and a
1000×750 copy, then runs ``segment`` (decode, model, label PNG write) on each,
alternating, and prints the median seconds and their ratio. Add
``--resolution 0`` to see the old behaviour (each photo at its own size).

    python scripts/bench_resolution.py                       # ViT-S/16, random weights
    python scripts/bench_resolution.py --backbone deit_tiny_patch16_224 --repeats 5

The model is randomly initialised (cost, not quality, is measured).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from segeig.backbone import Backbone
from segeig.batch import SegmentOptions, expand_inputs, segment_files
from segeig.config import DEFAULT_BACKBONE, BackboneConfig, HeadConfig, WorkingResolution
from segeig.model import build_model
from segeig.predictor import Segmenter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--k", type=int, default=64, help="eigenfunctions K (default 64)")
    parser.add_argument("--working", type=int, default=320,
                        help="the model's working resolution (default 320, folder/custom)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="override at inference as `segment --resolution` (0: own size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth synthetic photo (blobs of colour with some texture), ``H×W×3`` uint8."""
    small = rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(name=args.backbone, weights="random"))
    model = build_model(backbone, HeadConfig(k=args.k))
    resolution = WorkingResolution(args.working, 2 * args.working)
    segmenter = Segmenter(model, {}, device="cpu", resolution=resolution)
    rng = np.random.default_rng(0)
    big = photo(rng, 3000, 4000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {}
        small = cv2.resize(big, (1000, 750), interpolation=cv2.INTER_AREA)
        for name, image in (("4000x3000", big), ("1000x750", small)):
            folder = root / name
            folder.mkdir()
            Image.fromarray(image).save(folder / "photo.jpg", quality=92)
            files[name] = expand_inputs([str(folder)])[0]
        options = SegmentOptions(method="eigen", workers=0, overwrite=True,
                                 resolution=args.resolution)
        seconds: dict[str, list[float]] = {name: [] for name in files}
        segment_files(segmenter, files["1000x750"], root / "warm", options)  # warm-up
        for _ in range(args.repeats):
            for name, inputs in files.items():
                start = time.perf_counter()
                results = segment_files(segmenter, inputs, root / f"out-{name}", options)
                seconds[name].append(time.perf_counter() - start)
                assert all(r.status == "segmented" for r in results), results
    working = segmenter.working_resolution(args.resolution)
    print(f"backbone {args.backbone} (random weights), K={args.k}, CPU, "
          f"{torch.get_num_threads()} threads; working resolution: {working.describe()}")
    print("| photo | median seconds (decode + model + write) |")
    print("|---|---:|")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} |")
    print(f"ratio 4000×3000 / 1000×750: {medians['4000x3000'] / medians['1000x750']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
