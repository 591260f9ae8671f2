"""The one exception type for user errors: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class PrepareError(Exception):
    """Bad input or configuration the user can fix; the message says where and how."""
