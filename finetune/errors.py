"""The one exception type whose message is meant for the person running twin (no traceback)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the CLI prints the message on one line and exits non-zero."""
