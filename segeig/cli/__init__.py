"""``segeig`` command line: a thin client of the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``
(which registers the parser and sets ``func``) so commands stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from segeig import __version__

#: Subcommand modules, in the order ``segeig --help`` lists them.
COMMANDS = ("segment", "fit", "train", "evaluate", "label", "demo", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segeig",
        description="Unsupervised semantic segmentation by learned neural eigenfunctions.",
    )
    parser.add_argument("--version", action="version", version=f"segeig {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"segeig.cli.{name}").add_parser(subparsers)
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segeig`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Library errors carry actionable messages; a traceback adds nothing
        # for users (rerun with -v to see it).
        if args.verbose:
            raise
        print(f"segeig {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
