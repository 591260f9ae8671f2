"""Owner-only files and folders: every stage writes private data through these helpers.

Folders are created 0700 and files 0600 *at creation* (no window where another user can read them),
and whole-file writes are atomic (write a temp file, fsync, rename) so a killed run never leaves a
half-written file behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) if missing and make it owner-only (0700)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: str | os.PathLike[str], mode: str = "a", encoding: str | None = "utf-8") -> IO:
    """Open a file for writing/appending, creating it 0600 if it does not exist (chmods an old one)."""
    flags = os.O_WRONLY | os.O_CREAT
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding)


def write_private_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace `path` with `data` atomically; the file is 0600 from its first byte."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    binary = isinstance(data, bytes)
    with open_private(tmp, "wb" if binary else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
