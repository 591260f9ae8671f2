"""The one exception a user sees: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class CollectError(Exception):
    """Bad input or environment the user can fix; the message says which file and what to do.

    Messages never contain secrets (API hash, phone number, session contents) or message text.
    """


def os_reason(error: OSError) -> str:
    """What went wrong, in the system's words, without the file name (messages name it first):
    `permission denied`, `not a directory`, `no space left on device`."""
    reason = error.strerror or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:]
