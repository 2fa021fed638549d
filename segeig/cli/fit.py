"""``segeig fit FOLDER --out DIR``: a model for your own unlabelled photos.

Small, quick defaults (``segeig.train.FIT_DEFAULTS``): about a minute on a
laptop CPU for a handful of photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segeig.cli.common import (
    add_backbone_arguments,
    add_cache_arguments,
    backbone_config,
    check_out_dir,
)
from segeig.cli.progress import ProgressBars


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a model on a folder of your own images",
        description="Train on unlabelled images (a folder, searched recursively, or image "
                    "files) with small defaults and write a checkpoint with the eigen and "
                    "eigen+kmeans methods. Unreadable images are skipped with a warning.",
    )
    parser.add_argument("images", nargs="+", metavar="FOLDER",
                        help="a folder of images, or image files")
    parser.add_argument("--out", required=True,
                        help="output directory (DIR/checkpoint.safetensors) or a .safetensors path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda (default auto)")
    add_backbone_arguments(parser)
    parser.add_argument("--k", type=int, help="eigenfunctions and segments (default 16)")
    parser.add_argument("--steps", type=int, help="training steps (default 120)")
    parser.add_argument("--crop", type=int, help="training crop side (default 224)")
    parser.add_argument("--batch-size", type=int, help="crops per step (default 4)")
    parser.add_argument("--kmeans-k", type=int, help="eigen+kmeans centroids (default K)")
    parser.add_argument("--seed", type=int, default=0)
    add_cache_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segeig.train import fit_images

    check_out_dir(args.out, allow_file_suffix=".safetensors")
    images = args.images[0] if len(args.images) == 1 and Path(args.images[0]).is_dir() \
        else args.images
    bars = ProgressBars(disable=args.quiet)
    try:
        checkpoint = fit_images(images, args.out, backbone=backbone_config(args), k=args.k,
                                steps=args.steps, device=args.device, seed=args.seed,
                                progress=bars, overwrite=args.overwrite, crop=args.crop,
                                batch_size=args.batch_size, kmeans_k=args.kmeans_k,
                                feature_cache=args.feature_cache,
                                feature_cache_dir=args.feature_cache_dir)
    finally:
        bars.close()
    print(f"checkpoint: {checkpoint}")
    return 0
