"""``segeig train``: train on a dataset (or fit the k-means or spectral baseline).

Single process::

    segeig train --dataset pascal_context --root /data/pcontext --out runs/pc

Several GPUs (one process each; ``--batch-size`` is per process)::

    torchrun --nproc_per_node=4 -m segeig train --dataset ade20k --root /data/ade --out runs/ade

Every default comes from the dataset (``segeig.train.DATASET_DEFAULTS``)
and every one can be overridden. ``--resume`` continues the run in ``--out``
with its saved settings (flags given again must agree with them, except
``--workers`` and the logging/saving cadence).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from segeig.cli.common import (
    add_backbone_arguments,
    add_cache_arguments,
    backbone_overrides,
    check_out_dir,
)
from segeig.cli.progress import ProgressBars
from segeig.config import DATASET_NAMES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train on a dataset (unsupervised)",
        description="Train the eigenfunction head on a dataset without labels (or fit the "
                    "k-means baseline), then fit k-means centroids. Writes "
                    "OUT/checkpoint.safetensors, OUT/train_state.safetensors and "
                    "OUT/train_log.jsonl. Defaults depend on --dataset (docs/training.md).",
    )
    parser.add_argument("--dataset", choices=DATASET_NAMES,
                        help="dataset layout (required unless --resume)")
    parser.add_argument("--root", help="dataset root directory (required unless --resume)")
    parser.add_argument("--split", help="split to train on (default train)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (default auto)")
    add_backbone_arguments(parser)
    model = parser.add_argument_group("model and objective")
    model.add_argument("--method", choices=("eigen", "kmeans", "spectral"),
                       help="eigen: train the head (+ eigen+kmeans centroids); kmeans: the "
                            "baseline on raw backbone features; spectral: the classic "
                            "baseline, exact per-image spectral segments labelled by k-means "
                            "centroids of their features (default eigen)")
    model.add_argument("--head", choices=("transformer", "mlp"), help="head architecture")
    model.add_argument("--k", type=int, help="eigenfunctions K (β is scaled as 0.08·256/K)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--steps", type=int, help="total steps (overrides --epochs)")
    opt.add_argument("--batch-size", type=int, help="images per step per process")
    opt.add_argument("--crop", type=int, help="training crop side in pixels")
    opt.add_argument("--resolution", "--resize-short", dest="resolution", type=int,
                     metavar="PX",
                     help="working resolution: images are resized to this short side, trained "
                          "around it (--scale) and later used at it; recorded in the "
                          "checkpoint (0: each image at its own size)")
    opt.add_argument("--max-long", type=int, metavar="PX",
                     help="cap on the long side at the working resolution (default 2×)")
    opt.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="random rescale ratio range around the working resolution")
    opt.add_argument("--no-flip", dest="hflip", action="store_const", const=False)
    opt.add_argument("--no-photometric", dest="photometric", action="store_const", const=False)
    opt.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    opt.add_argument("--lr-min", type=float, help="final cosine learning rate (default 1e-5)")
    opt.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                     help="mixed precision (default auto: bf16/fp16 on CUDA, off on CPU)")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--workers", type=int, help="DataLoader worker processes")
    opt.add_argument("--min-valid", type=float,
                     help="fraction of real (non-padding) pixels a patch needs to join the graph")
    opt.add_argument("--global-graph", action="store_const", const=True,
                     help="multi-process: build the kernel over all processes' batches")
    cache = parser.add_argument_group("feature cache (docs/training.md)")
    add_cache_arguments(cache)
    cache.add_argument("--cache-scales", type=float, nargs="+", metavar="S",
                       help="rescale factors cached besides 1 (default: the midpoints of "
                            "--scale below and above 1)")
    cache.add_argument("--cache-flips", action="store_const", const=True,
                       help="also cache every view flipped (twice the fill)")
    io = parser.add_argument_group("logging and checkpoints")
    io.add_argument("--log-every", type=int, help="steps between JSONL step records")
    io.add_argument("--save-every", type=int, help="also save the resume state every N steps")
    io.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (0: end)")
    km = parser.add_argument_group("k-means")
    km.add_argument("--kmeans-k", type=int,
                    help="centroids (default: K, as the paper; the class count gives the "
                         "older class-count k-means)")
    km.add_argument("--kmeans-metric", choices=("euclidean", "cosine"),
                    help="k-means distance (default euclidean, the reference code's)")
    km.add_argument("--kmeans-tokens", type=int, help="token sample size per fit")
    km.add_argument("--kmeans-iters", type=int)
    km.add_argument("--kmeans-images", type=int, help="images visited (default all)")
    km.add_argument("--baseline-centroids", action="store_const", const=True,
                    help="also fit the kmeans baseline into the same checkpoint")
    km.add_argument("--spectral-centroids", action="store_const", const=True,
                    help="also fit the spectral baseline into the same checkpoint")
    sp = parser.add_argument_group("spectral baseline (--method spectral or "
                                   "--spectral-centroids)")
    sp.add_argument("--spectral-segments", type=int,
                    help="segments cut from each image (default 8)")
    sp.add_argument("--spectral-eigenvectors", type=int,
                    help="eigenvectors of each image's kernel used to cut it (default 8)")
    parser.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Explicitly given flags as TrainConfig overrides (``None`` = not given)."""
    names = ("split", "method", "k", "epochs", "steps", "batch_size", "crop", "scale",
             "resolution", "max_long", "kmeans_metric", "hflip", "photometric", "lr",
             "lr_min", "amp", "seed", "workers",
             "min_valid", "global_graph", "log_every", "save_every", "checkpoint_every",
             "kmeans_k", "kmeans_tokens", "kmeans_iters", "kmeans_images",
             "baseline_centroids", "spectral_centroids", "spectral_segments",
             "spectral_eigenvectors", "feature_cache", "feature_cache_dir", "cache_scales",
             "cache_flips")
    overrides = {name: getattr(args, name) for name in names}
    overrides["head_kind"] = args.head
    overrides.update(backbone_overrides(args))
    return overrides


def distributed_setup(device: str) -> tuple[int, int, str]:
    """Join the process group when launched by torchrun; ``(rank, world, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if rank:
        logging.getLogger().setLevel(logging.WARNING)  # one voice per run
    return rank, world, device


def run(args: argparse.Namespace) -> int:
    from segeig.train import STATE_NAME, apply_overrides, default_config, load_train_state, train

    check_out_dir(args.out)
    out = Path(args.out)
    overrides = overrides_from_args(args)
    if args.resume:
        state_path = out / STATE_NAME
        if not state_path.is_file():
            raise ValueError(f"nothing to resume: {state_path} does not exist")
        saved = load_train_state(state_path).config
        if args.dataset is not None and args.dataset != saved.dataset:
            raise ValueError(f"--dataset {args.dataset} differs from the run being resumed "
                             f"({saved.dataset})")
        if args.root is not None and Path(args.root).resolve() != Path(saved.root).resolve():
            raise ValueError(f"--root {args.root} differs from the run being resumed "
                             f"({saved.root})")
        config = apply_overrides(saved, **overrides)
    else:
        if args.dataset is None or args.root is None:
            raise ValueError("--dataset and --root are required (unless --resume)")
        config = default_config(args.dataset, args.root, **overrides)
    rank, world, device = distributed_setup(args.device)
    bars = ProgressBars(disable=args.quiet or rank != 0)
    try:
        checkpoint = train(config, out, device=device, resume=args.resume,
                           overwrite=args.overwrite, rank=rank, world_size=world, progress=bars)
    finally:
        bars.close()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        print(f"checkpoint: {checkpoint}")
        print(f"log:        {out / 'train_log.jsonl'}")
    return 0
