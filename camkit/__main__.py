"""``python -m camkit`` (and ``torchrun -m camkit``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
