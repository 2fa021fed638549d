#!/usr/bin/env python
"""Build an untrained checkpoint with all three methods, for smoke runs and timing.

The head is freshly initialised (not trained); the ``eigen+kmeans`` and
``kmeans`` centroids are real spherical k-means fits on the head's hidden
features and the backbone's final features of a few training images. With
``--weights random`` the backbone is random too: the numbers such a checkpoint
gets are meaningless as results, but every code path of inference and
evaluation runs at real cost.

    python scripts/make_smoke_checkpoint.py --out runs/smoke --weights random \
        --images data/synth/images/train --k 256 --centroids 64
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from tqdm import tqdm

from segeig.backbone import Backbone
from segeig.checkpoint import save_checkpoint
from segeig.config import DEFAULT_BACKBONE, BackboneConfig, HeadConfig
from segeig.data import build_dataset
from segeig.model import build_model
from segeig.train.centroids import fit_centroids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory or .safetensors file")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm model name")
    parser.add_argument("--weights", default="random", help="hub, random or a local file")
    parser.add_argument("--head", choices=("mlp", "transformer"), default="mlp")
    parser.add_argument("--k", type=int, default=256, help="eigenfunctions K")
    parser.add_argument("--centroids", type=int, default=64, help="k-means clusters (0 = none)")
    parser.add_argument("--images", default=None,
                        help="folder of images to fit the centroids on (required if --centroids)")
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--size", type=int, default=320, help="short side / crop for fitting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.manual_seed(args.seed)
    backbone = Backbone(BackboneConfig(name=args.backbone, weights=args.weights))
    model = build_model(backbone, HeadConfig(kind=args.head, k=args.k)).eval()
    if args.centroids:
        if not args.images:
            parser.error("--images is needed to fit centroids (or pass --centroids 0)")
        dataset = build_dataset("folder", args.images, with_labels=False)
        bar = tqdm(desc="k-means features", unit="batch", file=sys.stderr)

        def progress(done: int, total: int, info: dict) -> None:
            bar.total = total
            bar.update(done - bar.n)

        centroids = fit_centroids(model, dataset, k=args.centroids, crop=args.size,
                                  batch_size=4, max_tokens=200_000, iters=30, seed=args.seed,
                                  device=torch.device("cpu"), methods=["eigen+kmeans", "kmeans"],
                                  max_images=args.max_images, progress=progress)
        bar.close()
        for method, fitted in centroids.items():
            model.set_centroids(method, fitted.centroids, fitted.metric, fitted.spread)
    path = save_checkpoint(args.out, model, extra={"training": {"untrained": True,
                                                                "seed": args.seed}})
    print(f"wrote {path} (methods: {', '.join(model.methods)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
