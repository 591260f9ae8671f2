"""The one exception type whose message is meant for the person running twin (no traceback), and the
output-folder checks that raise it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """Bad input the user can fix; the CLI prints the message on one line and exits non-zero."""


# what the person can act on: a full disk, a read-only or foreign folder; anything else stays a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def check_out_dir(path: Path, flag: str) -> None:
    """Refuse, before any work, an output folder (`flag`: the option that names it) that cannot be made."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {parent} is a file; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: {parent} is not writable; choose another {flag}")


def make_out_dir(path: Path, flag: str) -> Path:
    """`common.files.make_private_dir` (owner-only, parents made) with its OSError as a `UserError`."""
    from common.files import make_private_dir

    check_out_dir(path, flag)
    try:
        return make_private_dir(path)
    except OSError as e:
        raise UserError(f"cannot create {flag} {path}: {e.strerror or e}; choose another {flag}") from None


@contextmanager
def write_errors(flag: str) -> Iterator[None]:
    """A full disk, a read-only or unwritable folder met while writing outputs, as one `UserError` line
    naming the file (what was written before stays: every output is written to a temp name and renamed)."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        raise UserError(
            f"cannot write{where}: {e.strerror or e}; free some space or choose another {flag}"
        ) from None
