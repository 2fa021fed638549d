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
    except Exception as err:  # noqa: BLE001 - every failure ends in one line, not a trace
        if args.verbose:
            raise
        print(f"segeig {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, EXPECTED_ERRORS) else 1


#: Errors whose message is meant for users (bad input, files, devices, weights);
#: anything else is a bug in segeig, reported as such.
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, ImportError, MemoryError)


def error_line(err: BaseException) -> str:
    """One line describing ``err`` for the terminal.

    Library errors carry actionable messages; file-system errors are shown as
    ``reason: path``; anything unexpected is named as a bug (``-v`` shows the
    traceback).
    """
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        text = f"{err.strerror}{where}"
    elif isinstance(err, MemoryError):
        text = "out of memory (try fewer --workers, a smaller --batch-size or --max-side)"
    elif isinstance(err, EXPECTED_ERRORS):
        text = str(err) or type(err).__name__
        if "Original Traceback" in text:  # a DataLoader worker's error: keep its last line
            head, _, trace = text.partition("Original Traceback")
            lines = trace.strip().splitlines()
            text = f"{head.strip()} {lines[-1] if lines else ''}"
        if "shared memory" in text:
            text += (" (/dev/shm is too small, e.g. Docker's 64 MB default: rerun with "
                     "--workers 0, or give the container more with docker run --shm-size 1g)")
    else:
        text = (f"unexpected {type(err).__name__}: {err} (a bug in segeig; rerun with -v for "
                "the traceback and please report it)")
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
