"""``segeig evaluate``: mIoU and pixel accuracy of a checkpoint (with and without CRF) or of
saved label maps (``--predictions DIR``)."""

from __future__ import annotations

import argparse
import os

from segeig.cli.common import (
    add_crf_backend_argument,
    add_resolution_argument,
    check_resolution,
)
from segeig.cli.progress import ProgressBars


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _protocol_defaults() -> str:
    """``stego for pascal_context, cityscapes, ...; full for ade20k; native for custom``,
    read from the table :func:`segeig.evaluation.resolve_protocol` uses."""
    from segeig.config import DEFAULT_PROTOCOL, PROTOCOL_NAMES

    groups = {name: [d for d, p in DEFAULT_PROTOCOL.items() if p == name]
              for name in PROTOCOL_NAMES}
    return "; ".join(f"{name} for {', '.join(datasets)}"
                     for name, datasets in groups.items() if datasets)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from segeig.config import LABELLED_DATASETS, PROTOCOL_NAMES

    parser = subparsers.add_parser(
        "evaluate", help="score a checkpoint or saved predictions on a labelled dataset "
                         "(mIoU, pixel accuracy)",
        description="Score a checkpoint, or any method's saved label maps (--predictions), on "
                    "a labelled dataset under a named protocol. A checkpoint run reports "
                    "scores without and with dense CRF, each with its own cluster-to-class "
                    "mapping. See docs/evaluation.md.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="checkpoint.safetensors or the directory holding it")
    source.add_argument("--predictions", metavar="DIR",
                        help="score saved label maps instead of a checkpoint: DIR holds "
                             "KEY.png per listed image (KEY = the image's path relative to the "
                             "split's image folder, without extension) or is a `segeig "
                             "segment` output (its labels/ is used). Single-channel PNGs "
                             "(uint8, uint16 or palette indices) at the image's size, or for "
                             "stego already at the 320x320 crop. No CRF")
    parser.add_argument("--dataset", required=True, choices=LABELLED_DATASETS)
    parser.add_argument("--root", required=True, help="dataset root (standard layout)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--protocol", choices=PROTOCOL_NAMES, default=None,
                        help=f"default per dataset: {_protocol_defaults()}")
    parser.add_argument("--method", default=None,
                        choices=("eigen", "eigen+kmeans", "kmeans", "spectral",
                                 "spectral-dataset"),
                        help="default: under --protocol stego the first of eigen+kmeans, "
                             "kmeans, spectral, eigen with one segment per class; otherwise "
                             "the checkpoint's default (eigen, or its baseline without "
                             "a head). spectral-dataset: exact spectral clustering of all "
                             "evaluated images as one graph (any checkpoint; small sets only)")
    parser.add_argument("--match",
                        choices=("auto", "hungarian", "majority", "hungarian-per-image",
                                 "fixed"),
                        default="auto",
                        help="cluster-to-class matching: auto (default: hungarian when the "
                             "method predicts as many segments as there are classes, else "
                             "majority), hungarian (one dataset-level one-to-one matching), "
                             "majority (many-to-one), hungarian-per-image (one matching per "
                             "image, the zero-shot papers' protocol: inflates scores), or "
                             "fixed: the map stored by `segeig label` instead of a refit")
    parser.add_argument("--segments", type=int, default=None, metavar="S",
                        help="with --predictions: segment ids the maps use (0..S-1; default: "
                             "the number of classes); a larger id is an error")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                        help="also score CRF-refined predictions (default: on; not available "
                             "with --predictions)")
    add_crf_backend_argument(parser)
    parser.add_argument("--propagation-steps", type=int, default=None, metavar="N",
                        help="eigen, eigen+kmeans, kmeans: steps of propagation of the "
                             "patch probabilities over each image's colour/position graph "
                             "(default 5; 0: the plain argmax)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="evaluate only the first N images")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--backbone-weights", default=None,
                        help="override the checkpoint's backbone weight source (hub, FILE, random)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--report-dir", default=None, metavar="DIR",
                        help="write report.md, results.json, confusion and example PNGs here")
    parser.add_argument("--examples", type=int, default=8, metavar="N",
                        help="images in the example grid (default 8)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass when sizes allow "
                             "(default 8 on GPU, 1 on CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image loading processes (default 4 on GPU, 0 on CPU)")
    parser.add_argument("--crf-workers", type=int, default=None,
                        help="CRF processes (0 = inline). Default: CPU count - 1 on GPU; "
                             "half the CPUs on CPU, where the model needs the rest")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads. Default on CPU: the CPUs not running CRF "
                             "workers (oversubscribed cores slow everything down)")
    spectral = parser.add_argument_group("spectral-dataset")
    spectral.add_argument("--spectral-clusters", type=int, default=None, metavar="S",
                          help="clusters of the exact decomposition (default: the classes)")
    # The flag's old name, kept working but out of --help (`segment --clusters` is a
    # switch). The same dest: like a second option string, the last one given wins.
    spectral.add_argument("--clusters", type=int, dest="spectral_clusters", metavar="S",
                          help=argparse.SUPPRESS)
    spectral.add_argument("--max-tokens", type=int, default=None, metavar="N",
                          help="refuse sets with more patches than this (default 200000, "
                               "~10 GiB)")
    spectral.add_argument("--feature-cache", dest="feature_cache_dir", metavar="DIR",
                          help="keep the backbone features in a cache under DIR and reuse "
                               "them when the same images are evaluated again (default: none)")
    add_resolution_argument(parser)
    parser.add_argument("--crf-max-labels", type=int, default=32,
                        help="segments per image given to the CRF (default 32)")
    parser.set_defaults(func=run)


def _run_predictions(args: argparse.Namespace) -> int:
    from segeig.evaluation import (
        format_table,
        load_eval_dataset,
        resolve_protocol,
        write_json,
        write_report,
    )
    from segeig.evaluation.predictions import evaluate_predictions

    given = [flag for flag, value in (
        ("--method", args.method), ("--crf", args.crf), ("--resolution", args.resolution),
        ("--backbone-weights", args.backbone_weights),
        ("--spectral-clusters", args.spectral_clusters), ("--max-tokens", args.max_tokens),
        ("--feature-cache", args.feature_cache_dir)) if value not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                         "--checkpoint only: saved label maps are scored as they are, "
                         "without a model or CRF")
    protocol = resolve_protocol(args.protocol, args.dataset)
    dataset = load_eval_dataset(protocol, args.root, args.split)
    bars = ProgressBars(disable=args.quiet)
    result = evaluate_predictions(
        dataset, protocol, args.predictions, match=args.match, segments=args.segments,
        max_images=args.max_images, n_examples=args.examples,
        progress=lambda iterable, total: bars.wrap(iterable, total, "evaluate"))
    print(format_table(result))
    meta = {"root": str(args.root)}  # the folder is in the result's "predictions"
    if args.json:
        print(f"JSON: {write_json(args.json, {**meta, **result.to_dict()})}")
    if args.report_dir:
        paths = write_report(result, args.report_dir, meta=meta, n_examples=args.examples)
        print(f"report: {paths['report']}")
    return 0


def run(args: argparse.Namespace) -> int:
    for name in ("max_images", "examples", "batch_size", "workers", "crf_workers", "threads",
                 "spectral_clusters", "max_tokens"):
        value = getattr(args, name)
        minimum = 0 if name in ("examples", "workers", "crf_workers") else 1
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}")
    if args.crf_max_labels < 1:
        raise ValueError("--crf-max-labels must be >= 1")
    if args.segments is not None and args.segments < 1:
        raise ValueError("--segments must be >= 1")
    if args.predictions is not None:
        return _run_predictions(args)
    if args.segments is not None:
        raise ValueError("--segments applies to --predictions only (a checkpoint knows how "
                         "many segments each method predicts)")
    return _run_checkpoint(args)


def _run_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from segeig.crf import resolve_backend
    from segeig.evaluation import (
        evaluate,
        format_table,
        load_eval_dataset,
        resolve_protocol,
        write_json,
        write_report,
    )
    from segeig.predictor import load

    args.crf = True if args.crf is None else args.crf
    protocol = resolve_protocol(args.protocol, args.dataset)
    dataset = load_eval_dataset(protocol, args.root, args.split)
    segmenter = load(args.checkpoint, device=args.device, backbone_weights=args.backbone_weights,
                     propagation_steps=args.propagation_steps)
    gpu = segmenter.device.type == "cuda"
    cpus = _cpu_count()
    batch_size = args.batch_size or (8 if gpu else 1)
    workers = args.workers if args.workers is not None else (min(4, cpus) if gpu else 0)
    if args.crf_workers is not None:
        crf_workers = args.crf_workers
    else:
        crf_workers = max(1, cpus - 1) if gpu else max(1, cpus // 2)
    threads = args.threads
    if threads is None and not gpu:
        threads = max(1, cpus - (crf_workers if args.crf else 0))
    if threads is not None:
        torch.set_num_threads(threads)

    bars = ProgressBars(disable=args.quiet)

    def progress(iterable, total):
        return bars.wrap(iterable, total, "evaluate")

    check_resolution(args.resolution)
    common = dict(match=args.match, crf=args.crf, max_images=args.max_images,
                  progress=progress, crf_workers=crf_workers, loader_workers=workers,
                  n_examples=args.examples, crf_max_labels=args.crf_max_labels,
                  crf_backend=args.crf_backend)
    if args.method == "spectral-dataset":
        from segeig.evaluation.spectral_dataset import (
            DEFAULT_MAX_TOKENS,
            evaluate_spectral_dataset,
        )

        result = evaluate_spectral_dataset(segmenter, dataset, protocol,
                                           n_clusters=args.spectral_clusters,
                                           max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
                                           feature_cache=args.feature_cache_dir, **common)
    else:
        if (args.spectral_clusters is not None or args.max_tokens is not None
                or args.feature_cache_dir is not None):
            raise ValueError("--spectral-clusters, --max-tokens and --feature-cache apply to "
                             "--method spectral-dataset only")
        result = evaluate(segmenter, dataset, protocol, method=args.method,
                          batch_size=batch_size, resolution=args.resolution, **common)
    print(format_table(result))
    meta = {"checkpoint": str(args.checkpoint), "root": str(args.root),
            "device": str(segmenter.device), "torch_threads": torch.get_num_threads(),
            "propagation_steps": segmenter.model.propagation.steps,
            "crf_workers": crf_workers if args.crf else None,
            "crf_backend": resolve_backend(args.crf_backend, segmenter.device) if args.crf
            else None}
    if args.json:
        path = write_json(args.json, {**meta, **result.to_dict()})
        print(f"JSON: {path}")
    if args.report_dir:
        paths = write_report(result, args.report_dir, meta=meta, n_examples=args.examples)
        print(f"report: {paths['report']}")
    return 0
