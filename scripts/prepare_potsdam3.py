#!/usr/bin/env python
"""Verify IIC's Potsdam release for segeig's potsdam3 dataset."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segeig.data import DatasetLayoutError
from segeig.data.prepare import check_counts, extract_archive

STEGO_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip"
IIC_URL = "https://github.com/xu-ji/IIC"
ISPRS_URL = "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Check, or unzip and check, Potsdam-3 in IIC's layout: ROOT/imgs/<id>.mat "
            "('img', 200x200x4 uint8 RGB+IR), ROOT/gt/<id>.mat ('gt', ids 0..5) and the "
            "lists labelled_train.txt, unlabelled_train.txt, labelled_test.txt, all.txt; "
            "report the tile counts (train = labelled + unlabelled train, 7,695; val = "
            "labelled_test, 855)."
        ),
        epilog=(
            f"The tiles are IIC's processed release of ISPRS Potsdam ({IIC_URL}; source "
            f"imagery: {ISPRS_URL}), mirrored by STEGO as {STEGO_URL}. The test list must be "
            "IIC's released labelled_test.txt: IIC drew it at random without a seed, so "
            "re-running its preparation gives a different split and incomparable numbers."
        ),
    )
    parser.add_argument("--root", required=True, type=Path,
                        help="folder that holds imgs/, gt/ and the lists (or its parent)")
    parser.add_argument("--zip", type=Path, default=None, metavar="ARCHIVE",
                        help="potsdam.zip; extracted into ROOT first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.zip is not None:
            print(f"extracting {args.zip} into {args.root} ...")
            extract_archive(args.zip, args.root)
        counts, notes = check_counts("potsdam3", args.root)
    except (DatasetLayoutError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"potsdam3 {split}: {n} tiles")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print("Potsdam-3 is ready." if not notes
          else "Potsdam-3 is readable, but see the warnings above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
