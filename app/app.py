"""Start the web demo as a script: ``python app/app.py [segeig demo options]``.

This is the Hugging Face Spaces convention (a Space runs ``app.py``); it does
exactly what ``segeig demo`` does, with the same options. The demo's code is
the package ``segeig.app`` (this folder, installed under the segeig name), so
segeig must be installed first (``pip install .``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """``segeig demo`` with ``argv`` (default: this script's arguments)."""
    try:
        from segeig.cli import main as segeig_main
    except ModuleNotFoundError as err:  # run from a checkout without installing it
        print(f"{err}: install segeig first (`pip install .` in the repository), then run "
              "`python app/app.py` or `segeig demo`", file=sys.stderr)
        return 2
    return segeig_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
