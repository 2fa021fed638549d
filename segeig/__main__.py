"""``python -m segeig`` (also what ``torchrun -m segeig`` runs)."""

import sys

from segeig.cli import main

sys.exit(main())
