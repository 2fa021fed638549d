"""``segeig segment INPUT... --out DIR``: segment folders of photos (see docs/segment.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from segeig.cli.common import (
    add_backbone_arguments,
    add_cache_arguments,
    add_crf_backend_argument,
    add_resolution_argument,
    backbone_config,
    check_out_dir,
    check_resolution,
)
from segeig.cli.progress import ProgressBars
from segeig.config import DEFAULT_MAX_SIDE

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment images, folders or glob patterns into label maps",
        description=(
            "Segment every image of INPUT (files, folders searched recursively, glob patterns) "
            "into DIR/labels/<relative path>.png, plus optional overlays and scores. Without "
            "--checkpoint a head is first fitted on the inputs themselves and saved as "
            "DIR/checkpoint.safetensors (reused when the run is resumed). Existing outputs are "
            "skipped, so rerunning after an interruption finishes the job."),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders or quoted glob patterns ('photos/**/*.jpg')")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="checkpoint.safetensors (or its folder); default: fit one on INPUT")
    parser.add_argument("--method", metavar="METHOD",
                        help="eigen, eigen+kmeans, kmeans, ... (those the checkpoint has; "
                             "default: the checkpoint's default, eigen when it has a head; "
                             "with a labelled checkpoint, among the methods with a class map)")
    parser.add_argument("--clusters", action="store_true",
                        help="with a labelled checkpoint (segeig label): write raw cluster ids "
                             "instead of class label maps")
    parser.add_argument("--crf", action="store_true", help="refine boundaries with a dense CRF")
    add_crf_backend_argument(parser)
    parser.add_argument("--overlay", action="store_true",
                        help="also write DIR/overlays/<path>.jpg (colours over the photo)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--save-probs", action="store_true",
                        help="also write DIR/probs/<path>.npz: float16 patch-grid scores")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B",
                        help="same-size images scored together on the device (default 8)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="W",
                        help="decode and CRF worker processes (0: none; default min(4, CPUs))")
    parser.add_argument("--device", default=None,
                        help="auto (default; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:1")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, metavar="PX",
                        help=f"slide windows of this size over larger images "
                             f"(default {DEFAULT_MAX_SIDE})")
    add_resolution_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="redo existing outputs (and refit DIR/checkpoint.safetensors)")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (0-based, 0 <= I < N); under torchrun "
                             "the default is RANK/WORLD_SIZE")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any input failed (default: only if none "
                             "succeeded)")
    fit = parser.add_argument_group("fitting (only without --checkpoint)")
    add_backbone_arguments(
        parser, "backbone (for the fit; --backbone-weights also applies to --checkpoint)",
        weights_help="backbone weight source: hub (default; downloads once), random (offline "
                     "smoke runs, meaningless segments) or a local file; with --checkpoint it "
                     "overrides the recorded source")
    fit.add_argument("--k", type=int, help="number of segments to fit (default: fit's default)")
    fit.add_argument("--fit-steps", type=int, metavar="N",
                     help="training steps (default: fit's default)")
    fit.add_argument("--seed", type=int, default=0, metavar="S", help="fit seed (default 0)")
    add_cache_arguments(fit)
    parser.set_defaults(func=run)


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    from segeig.batch import parse_shard

    if args.shard:
        return parse_shard(args.shard)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        return parse_shard(f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}")
    return 0, 1


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return "auto"


def _checkpoint(args: argparse.Namespace, files: list, shard: tuple[int, int], device: str,
                bars: ProgressBars) -> tuple[str, bool]:
    if args.checkpoint:
        return args.checkpoint, False
    from segeig.train import fit_or_reuse_checkpoint

    path, fitted = fit_or_reuse_checkpoint(
        args.out, [f.path for f in files], overwrite=args.overwrite, wait=shard[0] != 0,
        backbone=backbone_config(args), k=args.k, steps=args.fit_steps, device=device,
        seed=args.seed, progress=bars, feature_cache=args.feature_cache,
        feature_cache_dir=args.feature_cache_dir,
    )
    bars.close()
    if fitted:
        print(f"fitted {path}", file=sys.stderr)
    return str(path), fitted


def run(args: argparse.Namespace) -> int:
    import segeig
    from segeig.batch import (
        SegmentOptions,
        expand_inputs,
        output_folders,
        segment_inputs,
        select_shard,
        summary_path,
    )

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    check_resolution(args.resolution)
    check_out_dir(args.out)
    shard = _shard(args)
    device = _device(args)
    # Only the folders segeig writes images to: `--out .` above the inputs must
    # not hide the inputs themselves.
    outputs = [os.path.join(args.out, sub) for sub in output_folders()]
    files, conflicts = expand_inputs(args.inputs, exclude=outputs)
    if not files and not conflicts:
        raise ValueError(f"no image files found in {' '.join(args.inputs)} (looked for "
                         ".jpg .jpeg .png .webp .bmp .tif .tiff; images in the output "
                         f"folders {', '.join(outputs)} are this command's outputs, not "
                         "inputs)")
    mine = select_shard(files, *shard)
    # Name conflicts are reported once, by shard 0.
    conflicts = conflicts if shard[0] == 0 else []
    label = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    with ProgressBars(disable=args.quiet, label=label) as bars:
        checkpoint, fitted = _checkpoint(args, files, shard, device, bars)
        segmenter = segeig.load(checkpoint, device=device,
                                backbone_weights=args.backbone_weights if args.checkpoint else None)
        options = SegmentOptions(
            method=args.method, clusters=args.clusters, crf=args.crf,
            crf_backend=args.crf_backend, overlay=args.overlay,
            overlay_format=args.overlay_format, save_probs=args.save_probs,
            batch_size=args.batch_size, workers=args.workers, overwrite=args.overwrite,
            max_side=args.max_side, resolution=args.resolution,
        )
        summary = segment_inputs(segmenter, mine, args.out, options, checkpoint=checkpoint,
                                 fitted_here=fitted, conflicts=conflicts, shard=shard,
                                 progress=bars.items("segmenting", len(mine)))
    rate = (f" ({summary.segmented / summary.seconds:.2f} img/s)"
            if summary.seconds and summary.segmented else "")
    print(f"segmented {summary.segmented}, skipped {summary.skipped} (already done), failed "
          f"{summary.failed} of {summary.total} in {summary.seconds:.1f} s{rate}; "
          f"summary: {summary_path(args.out, shard)}")
    if summary.classes is not None:
        print(f"class label maps ({summary.settings['method']}): pixel value = index in "
              f"{', '.join(summary.classes)}; 255 = unassigned")
    for failure in summary.failures[:20]:
        print(f"  failed: {failure['input']}: {failure['reason']}", file=sys.stderr)
    if len(summary.failures) > 20:
        print(f"  ... and {len(summary.failures) - 20} more (see the summary)", file=sys.stderr)
    if summary.total and not summary.succeeded:
        return 1
    return 1 if args.strict and summary.failed else 0
