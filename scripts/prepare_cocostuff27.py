#!/usr/bin/env python
"""Verify COCO-Stuff-27 for segeig, or regenerate its curated lists from the annotations."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segeig.data import DatasetLayoutError
from segeig.data.prepare import check_counts, regenerate_curated_lists

IMAGES_URL = "http://images.cocodataset.org/zips/{train2017,val2017}.zip"
STUFF_URL = ("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
             "stuffthingmaps_trainval2017.zip")
STUFF_PAGE = "https://github.com/nightrome/cocostuff"
IIC_URL = "https://github.com/xu-ji/IIC (datasets/)"
STEGO_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/cocostuff.zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Check a COCO-Stuff-27 root laid out as ROOT/images/{train2017,val2017}/<id>.jpg, "
            "ROOT/annotations/{train2017,val2017}/<id>.png (stuffthingmaps, fine ids 0..181) "
            "and the curated lists ROOT/curated/train2017/Coco164kFull_Stuff_Coarse.txt and "
            "ROOT/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt, and report the image "
            "counts. Only listed images belong to a split."
        ),
        epilog=(
            f"Images: the COCO 2017 archives {IMAGES_URL} (cocodataset.org). Annotations: "
            f"stuffthingmaps_trainval2017.zip from {STUFF_URL} (the cocostuff GitHub "
            f"README, {STUFF_PAGE}); unzip it into ROOT/annotations. Curated lists: IIC's "
            f"curated COCO-Stuff release, {IIC_URL}; the same 'curated' folder ships in "
            f"STEGO's {STEGO_URL}. Use the released lists for numbers comparable with the "
            "papers. --regenerate-lists rebuilds them from the annotations with IIC's rule "
            "(>= 75%% of all pixels stuff, fine ids 91..181; both sides >= 360 px)."
        ),
    )
    parser.add_argument("--root", required=True, type=Path, help="the COCO-Stuff root")
    parser.add_argument("--regenerate-lists", action="store_true",
                        help="(re)write the two curated lists from ROOT/annotations "
                             "(deterministic; replaces existing lists)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.regenerate_lists:
            try:
                from tqdm import tqdm
            except ImportError:  # progress display is optional
                tqdm = None
            kept = regenerate_curated_lists(args.root, progress=tqdm)
            for split, n in kept.items():
                print(f"curated/{split}: {n} images kept")
        counts, notes = check_counts("cocostuff27", args.root)
    except (DatasetLayoutError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"cocostuff27 {split}: {n} images with annotations")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print("COCO-Stuff-27 is ready." if not notes
          else "COCO-Stuff-27 is readable, but see the warnings above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
