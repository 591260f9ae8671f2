"""`python -m collect telegram ...` / `python -m collect desktop PATH ...` (see collect/cli.py)."""

import sys

from collect.cli import main

sys.exit(main())
