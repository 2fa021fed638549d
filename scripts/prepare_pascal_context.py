#!/usr/bin/env python
"""Build (from VOC2010 + trainval_merged.json) or verify PASCAL-Context for segeig."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segeig.data import DatasetLayoutError
from segeig.data.pascal_context import resolve_root
from segeig.data.prepare import (
    DETAIL_INSTALL_HINT,
    check_counts,
    convert_pascal_context,
    extract_archive,
)

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
JSON_URL = "https://codalabuser.blob.core.windows.net/public/trainval_merged.json"
PAGE_URL = "https://cs.stanford.edu/~roozbeh/pascal-context/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Prepare PASCAL-Context (59 classes + background) in the mmsegmentation layout "
            "ROOT/VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,"
            "ImageSets/SegmentationContext/{train,val}.txt}. With --json the labels are "
            "generated with the Detail API; without it an existing (e.g. mmseg-converted) "
            "folder is only verified."
        ),
        epilog=(
            f"Images: the VOC2010 train/val archive {VOC_URL}. Annotations: "
            f"trainval_merged.json from {JSON_URL} (PASCAL-Context page: {PAGE_URL}). "
            f"Conversion needs the Detail API: {DETAIL_INSTALL_HINT}."
        ),
    )
    parser.add_argument("--root", required=True, type=Path,
                        help="folder that holds VOCdevkit/ (or VOCdevkit/ or VOC2010/ itself)")
    parser.add_argument("--voc-tar", type=Path, default=None,
                        help="VOCtrainval_03-May-2010.tar; extracted into ROOT first")
    parser.add_argument("--json", type=Path, default=None,
                        help="trainval_merged.json; when given, labels and split lists are "
                             "(re)generated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.voc_tar is not None:
            print(f"extracting {args.voc_tar} into {args.root} ...")
            extract_archive(args.voc_tar, args.root)
        if args.json is not None:
            voc2010 = resolve_root(args.root)
            try:
                from tqdm import tqdm
            except ImportError:  # progress display is optional
                tqdm = None
            written = convert_pascal_context(voc2010, args.json, progress=tqdm)
            print(f"wrote labels: {written}")
        counts, notes = check_counts("pascal_context", args.root)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (DatasetLayoutError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"pascal_context {split}: {n} images with labels")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print("PASCAL-Context is ready." if not notes
          else "PASCAL-Context is readable, but see the warnings above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
