#!/usr/bin/env python
"""Verify Cityscapes for segeig's cityscapes27 (and cityscapes) datasets."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segeig.data import DatasetLayoutError
from segeig.data.prepare import check_counts, extract_archive

PAGE_URL = "https://www.cityscapes-dataset.com/downloads/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Check, or unzip and check, Cityscapes laid out as "
            "ROOT/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png and "
            "ROOT/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png, and report the image "
            "counts (2,975 train, 500 val). cityscapes27 scores labelIds 7..33 as classes "
            "0..26 and ignores everything else."
        ),
        epilog=(
            f"Obtain leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from {PAGE_URL} "
            "(free registration). Example: python scripts/prepare_cityscapes27.py --root "
            "data/cityscapes --zip leftImg8bit_trainvaltest.zip gtFine_trainvaltest.zip"
        ),
    )
    parser.add_argument("--root", required=True, type=Path,
                        help="folder that holds (or will hold) leftImg8bit/ and gtFine/")
    parser.add_argument("--zip", type=Path, nargs="+", default=None, metavar="ARCHIVE",
                        help="the two archives; extracted into ROOT first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for archive in args.zip or ():
            print(f"extracting {archive} into {args.root} ...")
            extract_archive(archive, args.root)
        counts, notes = check_counts("cityscapes27", args.root)
    except (DatasetLayoutError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"cityscapes27 {split}: {n} images with labels")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print("Cityscapes is ready." if not notes
          else "Cityscapes is readable, but see the warnings above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
