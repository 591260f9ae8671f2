"""`python -m reply`: see reply/cli.py."""

import sys

from reply.cli import main

if __name__ == "__main__":
    sys.exit(main())
