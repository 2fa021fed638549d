#!/usr/bin/env python
"""Write a synthetic labelled dataset in segeig's ``custom`` layout.

Each class is a colour + texture family; images have a two-class background
and several foreground objects (see :mod:`segeig.data.synthetic`).

    python scripts/make_synthetic_dataset.py data/synth --train 200 --val 100 \
        --size 320 427 --classes 8
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm

from segeig.data.synthetic import make_synthetic_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--train", type=int, default=64, help="training images")
    parser.add_argument("--val", type=int, default=32, help="validation images")
    parser.add_argument("--size", type=int, nargs="+", default=[320],
                        help="S (square) or H W (default 320)")
    parser.add_argument("--classes", type=int, default=8, help="number of classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-jitter", type=float, default=0.0,
                        help="scale each side by a random factor in [1-j, 1+j]")
    parser.add_argument("--ignore-width", type=int, default=0,
                        help="pixels of 255 (ignore) along class boundaries")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2) or min(args.size) < 8:
        parser.error("--size takes S or H W, each at least 8")
    if not 0 <= args.size_jitter < 1:
        parser.error("--size-jitter must be in [0, 1)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])

    def progress(jobs):
        return tqdm(jobs, desc="images", unit="img", file=sys.stderr)

    try:
        root = make_synthetic_dataset(args.root, args.train, args.val, size, args.classes,
                                      args.seed, size_jitter=args.size_jitter,
                                      ignore_width=args.ignore_width, progress=progress)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {args.train} train + {args.val} val images, {args.classes} classes, to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
