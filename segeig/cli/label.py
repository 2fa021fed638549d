"""``segeig label``: store a cluster → class map in a checkpoint (see docs/segment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from segeig.cli.common import check_out_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from segeig.config import LABELLED_DATASETS, PROTOCOL_NAMES

    parser = subparsers.add_parser(
        "label", help="name a checkpoint's clusters: fit a cluster-to-class map once",
        description=(
            "Write DIR/checkpoint.safetensors: the same model plus a cluster-to-class map, "
            "either fitted on a labelled split (--dataset, --root) or read from a hand-written "
            "JSON file {cluster id: name} (--names). Afterwards `segeig segment` writes class "
            "label maps, the demo shows class names and `segeig evaluate --match fixed` scores "
            "with the stored map. See docs/segment.md."),
    )
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint.safetensors or the directory holding it")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory (or .safetensors file) of the labelled checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output checkpoint, also the input checkpoint "
                             "itself when --out is its directory")
    parser.add_argument("--method", action="append", metavar="METHOD",
                        help="method to label; repeatable, or 'all' (default: the checkpoint's "
                             "default method)")
    fit = parser.add_argument_group("fit on a labelled split")
    fit.add_argument("--dataset", choices=LABELLED_DATASETS)
    fit.add_argument("--root", help="dataset root (standard layout)")
    fit.add_argument("--split", default="val", help="split to fit on (default: val)")
    fit.add_argument("--protocol", choices=PROTOCOL_NAMES, default="native",
                     help="how images are predicted (default native: as `segeig segment` does)")
    fit.add_argument("--match", choices=("auto", "hungarian", "majority"), default="auto",
                     help="auto (default: hungarian when segments equal classes, else majority: "
                          "several clusters may share a class), hungarian, majority")
    fit.add_argument("--max-images", type=int, metavar="N", help="fit on the first N images")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    fit.add_argument("--backbone-weights", default=None,
                     help="override the checkpoint's backbone weight source (hub, FILE, random); "
                          "the labelled checkpoint keeps the recorded one")
    fit.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    fit.add_argument("--workers", type=int, default=0, help="image loading processes")
    names = parser.add_argument_group("or name clusters by hand")
    names.add_argument("--names", metavar="FILE",
                       help='JSON {"cluster id": "name"} (e.g. from the demo); unnamed clusters '
                            "are unassigned, clusters sharing a name share a class")
    parser.set_defaults(func=run)


def _methods(args: argparse.Namespace, available: list[str], default: str) -> list[str]:
    asked = args.method or [default]
    if "all" in asked:
        return list(available)
    unknown = [m for m in asked if m not in available]
    if unknown:
        raise ValueError(f"method {unknown[0]!r} is not in this checkpoint; it has "
                         f"{', '.join(available)}")
    return list(dict.fromkeys(asked))


def _from_names(args: argparse.Namespace):
    from segeig.checkpoint import UNASSIGNED, read_config, segment_counts
    from segeig.evaluation import class_map_from_names, read_names

    counts = segment_counts(args.checkpoint)
    methods = _methods(args, list(counts), read_config(args.checkpoint)["methods"][0])
    if len(methods) != 1:
        raise ValueError("a names file names the clusters of one method: pass one --method")
    method = methods[0]
    path = Path(args.names)
    names = read_names(path, counts[method])
    class_map = class_map_from_names(names, counts[method], method, {"file": path.name})
    table = class_map.maps[method]
    print(f"{method}: {len(names)} of {len(table)} clusters named, "
          f"{len(class_map.names)} classes; {int((table == UNASSIGNED).sum())} clusters unassigned")
    return class_map


def _from_dataset(args: argparse.Namespace):
    from segeig.checkpoint import UNASSIGNED
    from segeig.cli.progress import ProgressBars
    from segeig.evaluation import fit_class_map, load_eval_dataset, resolve_protocol
    from segeig.evaluation.report import match_description
    from segeig.predictor import load

    if not args.dataset or not args.root:
        raise ValueError("pass --dataset and --root (a labelled split to fit the map on) or "
                         "--names FILE")
    for name in ("max_images", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        raise ValueError("--workers must be >= 0")
    protocol = resolve_protocol(args.protocol, args.dataset)
    dataset = load_eval_dataset(protocol, args.root, args.split)
    segmenter = load(args.checkpoint, device=args.device, backbone_weights=args.backbone_weights)
    methods = _methods(args, segmenter.methods, segmenter.model.default_method)
    with ProgressBars(disable=args.quiet) as bars:
        class_map, results = fit_class_map(
            segmenter, dataset, protocol, methods, args.match, max_images=args.max_images,
            progress=lambda it, total: bars.wrap(it, total, "label"),
            batch_size=args.batch_size, loader_workers=args.workers)
    for method, result in results.items():
        table = class_map.maps[method]
        print(f"{method}: {len(table)} clusters -> {len(set(table.tolist()) - {UNASSIGNED})} of "
              f"{len(class_map.names)} classes ({match_description(result)} matching on "
              f"{dataset.name} {dataset.split}, {result.n_images} images, {protocol.name} "
              f"protocol): mIoU {result.scores.miou:.1f}, pixel accuracy "
              f"{result.scores.pixel_acc:.1f}; {int((table == UNASSIGNED).sum())} clusters "
              "unassigned")
    return class_map


def run(args: argparse.Namespace) -> int:
    from segeig.checkpoint import class_map_destination, save_class_map

    check_out_dir(args.out, allow_file_suffix=".safetensors")
    class_map_destination(args.checkpoint, args.out, args.overwrite)  # fail before fitting
    if args.names:
        if args.dataset or args.root:
            raise ValueError("--names and --dataset/--root are two ways of labelling; pass one")
        class_map = _from_names(args)
    else:
        class_map = _from_dataset(args)
    path = save_class_map(args.checkpoint, args.out, class_map, overwrite=args.overwrite)
    shown = ", ".join(class_map.names[:12]) + (", ..." if len(class_map.names) > 12 else "")
    print(f"wrote {path}: {len(class_map.names)} classes ({shown}) for "
          f"{', '.join(class_map.methods)}")
    return 0
