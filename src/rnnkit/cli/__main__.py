"""``python -m rnnkit.cli`` (also what ``torchrun -m rnnkit.cli`` runs on every rank)."""

import sys

from rnnkit.cli import main

sys.exit(main())
