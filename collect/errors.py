"""The one exception a user sees: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class CollectError(Exception):
    """Bad input or environment the user can fix; the message says which file and what to do.

    Messages never contain secrets (API hash, phone number, session contents) or message text.
    """
