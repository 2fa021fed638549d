"""``segeig demo``: serve the web demo (see docs/demo.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segeig.cli.common import add_backbone_arguments, add_crf_backend_argument, backbone_config
from segeig.cli.progress import ProgressBars

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="serve the web demo",
        description="Serve a web page to upload images and see their segments, eigenfunctions "
                    "and CRF refinement. Without --checkpoint it uses WEIGHTS_DIR/"
                    "checkpoint.safetensors, else a checkpoint fitted on the bundled examples "
                    "(fitted at the first start and cached under WEIGHTS_DIR/demo/).",
    )
    parser.add_argument("--checkpoint", help="checkpoint.safetensors or its directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes the demo to the network)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    add_backbone_arguments(
        parser, "backbone (for the start-up fit; --backbone-weights also applies to a checkpoint)",
        weights_help="backbone weight source: 'hub' (download), 'random' (smoke runs only) or a "
                     "local file; default: as recorded in the checkpoint, 'hub' for the "
                     "start-up fit")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda...")
    add_crf_backend_argument(parser)
    parser.add_argument("--max-side", type=int, default=768,
                        help="larger uploads are downscaled to this longer side (default 768)")
    parser.add_argument("--max-upload-mb", type=float, default=20,
                        help="largest accepted upload in MB (default 20)")
    parser.add_argument("--max-images", type=int, default=8,
                        help="images segmented per request (default 8)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="model runs at once; more requests wait in a queue (default 2)")
    parser.add_argument("--weights-dir", default="weights",
                        help="where to look for checkpoint.safetensors and cache the start-up "
                             "fit (default ./weights)")
    parser.add_argument("--examples", help="folder of example images (default: the bundled "
                                           "examples/, else ./examples)")
    parser.add_argument("--share", action="store_true",
                        help="also create a public gradio.live link (off by default)")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("max_side", "max_images", "concurrency"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from segeig import load
    from segeig.app.startup import (
        example_images,
        find_examples_dir,
        find_or_fit_checkpoint,
        is_weights_error,
        weights_error_text,
    )
    from segeig.app.ui import build_demo, build_error_demo, serve

    examples_dir = Path(args.examples) if args.examples else find_examples_dir()
    if args.examples and not examples_dir.is_dir():
        raise FileNotFoundError(f"--examples {examples_dir} is not a folder")
    backbone = backbone_config(args)
    how = {"given": None, "weights": f"checkpoint from {Path(args.weights_dir).name}/",
           "cached fit": "fitted on the bundled examples (cached)",
           "fitted": "fitted on the bundled examples at start-up"}
    try:
        with ProgressBars(disable=args.quiet, label=" (demo model)") as bars:
            path, source = find_or_fit_checkpoint(
                args.checkpoint, args.weights_dir, backbone, examples_dir, device=args.device,
                progress=bars)
        logger.info("serving %s (%s)", path, source)
        seg = load(path, device=args.device, backbone_weights=args.backbone_weights,
                   crf_backend=args.crf_backend)
        demo = build_demo(seg, examples=example_images(examples_dir), max_side=args.max_side,
                          max_images=args.max_images, how=how[source])
    except Exception as err:
        if not is_weights_error(err):
            raise
        # Serve a page explaining the failure: in a container the browser may
        # be the only place the user looks.
        logger.error("%s", err)
        name = backbone.name
        if args.checkpoint:  # the checkpoint names its own backbone
            from segeig.checkpoint import read_config

            name = read_config(args.checkpoint)["backbone"]["name"]
        demo = build_error_demo(weights_error_text(name, args.backbone_weights))
    serve(demo, args.host, args.port, max_upload_mb=args.max_upload_mb,
          concurrency=args.concurrency, share=args.share,
          allowed_paths=[examples_dir] if examples_dir.is_dir() else [])
    return 0
