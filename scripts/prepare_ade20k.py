#!/usr/bin/env python
"""Unpack (optionally) and verify the ADE20K SceneParsing dataset for segeig."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segeig.data import DatasetLayoutError
from segeig.data.prepare import check_counts, extract_archive

URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Check, or unzip and check, ADE20K SceneParsing (ADEChallengeData2016) so that "
            "segeig can read it from ROOT/ADEChallengeData2016/{images,annotations}/"
            "{training,validation}/."
        ),
        epilog=(
            f"Obtain the official archive from {URL} (see also "
            "http://sceneparsing.csail.mit.edu/). Example: "
            "python scripts/prepare_ade20k.py --root data/ade --zip ~/Downloads/"
            "ADEChallengeData2016.zip"
        ),
    )
    parser.add_argument("--root", required=True, type=Path,
                        help="folder that holds (or will hold) ADEChallengeData2016/")
    parser.add_argument("--zip", type=Path, default=None,
                        help="path to ADEChallengeData2016.zip; extracted into ROOT first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.zip is not None:
        print(f"extracting {args.zip} into {args.root} ...")
        try:
            extract_archive(args.zip, args.root)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        counts, notes = check_counts("ade20k", args.root)
    except DatasetLayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        if args.zip is None:
            print(f"hint: download {URL} and pass it with --zip", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"ade20k {split}: {n} images with annotations")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print("ADE20K is ready." if not notes else "ADE20K is readable, but see the warnings above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
