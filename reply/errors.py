"""The one exception a user of `reply` sees: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class ReplyError(Exception):
    """A setup problem the user can fix (no secrets, no message text in the message)."""
