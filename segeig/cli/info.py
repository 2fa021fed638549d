"""``segeig info CKPT``: print what a checkpoint contains."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="describe a checkpoint",
        description="Print a checkpoint's backbone, head, methods and training settings.",
    )
    parser.add_argument("checkpoint", help="checkpoint.safetensors or the directory holding it")
    parser.add_argument("--json", action="store_true", help="print the full JSON description")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segeig.checkpoint import check_checkpoint, checkpoint_resolution

    # Exactly the loaders' checks: a checkpoint `segeig segment` or the demo would
    # refuse is refused here too (exit 1, naming the problem), not described.
    config = check_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(config, indent=2))
        return 0
    backbone, head = config["backbone"], config.get("head")
    print(f"backbone : {backbone['name']} (weights: {backbone['weights']}, "
          f"D={backbone['embed_dim']}, patch {backbone['patch_size']}, "
          f"layers {backbone['layers']})")
    if head:
        print(f"head     : {head['kind']}, K={head['k']}, tau_min={head['tau_min']}")
    else:
        print("head     : none (baseline without a head)")
    print(f"methods  : {', '.join(config['methods'])}")
    resolution = checkpoint_resolution(config)
    derived = "" if "resolution" in config else " (derived from the training settings)"
    print(f"working resolution: {resolution.describe()}{derived}")
    spectral = config.get("spectral")
    if spectral:
        print(f"spectral : {spectral['segments_per_image']} segments per image from "
              f"{spectral['n_eigenvectors']} eigenvectors, k_feat {spectral['k_feat']}")
    classes = config.get("classes")
    if classes is not None:
        from segeig.checkpoint import UNASSIGNED, ClassMap

        class_map = ClassMap.from_dict(classes)  # validates the untrusted section
        source = class_map.source
        origin = (f"fitted on {source.get('dataset')} {source.get('split')} "
                  f"({source.get('n_images')} images, {source.get('match')} matching)"
                  if source.get("kind") == "dataset" else
                  f"named by hand ({source.get('file', 'names file')})")
        print(f"classes  : {len(class_map.names)}, {origin}")
        for method, table in class_map.maps.items():
            print(f"  {method}: {len(table)} clusters -> "
                  f"{len(set(table.tolist()) - {UNASSIGNED})} classes, "
                  f"{int((table == UNASSIGNED).sum())} unassigned")
        for i, name in enumerate(class_map.names):
            r, g, b = class_map.palette[i]
            print(f"  {i:3d} {name}  (#{r:02x}{g:02x}{b:02x})")
    training = config.get("training")
    if training:
        print(f"training : {json.dumps(training)}")
    return 0
