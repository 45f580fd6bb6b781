"""``python -m clipforge`` (also what ``torchrun -m clipforge train`` runs)."""

import sys

from .cli import main

sys.exit(main())
