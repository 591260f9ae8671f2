"""Owner-only files and folders: every stage writes private data through these helpers.

Folders are created 0700 and files 0600 *at creation* (no window where another user can read them),
and whole-file writes are atomic (write a temp file beside the target, fsync, rename) so a killed run
never leaves a half-written file behind. A write that fails — a full disk, an exception while the data is
written, Ctrl-C — removes its temp file (private data in a stray file is a leak of its own) and re-raises;
the target keeps what it held.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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
    try:
        os.fchmod(fd, FILE_MODE)
        if "b" in mode:
            return os.fdopen(fd, mode)
        return os.fdopen(fd, mode, encoding=encoding)
    except BaseException:
        os.close(fd)  # fdopen did not take it over: do not leak the descriptor
        raise


def temp_path(path: Path) -> Path:
    """The temp file an atomic write of `path` goes through (`.name.tmp-PID`, beside it: same filesystem,
    so the rename is atomic; finetune.outdir knows the pattern)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def open_private_atomic(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Write `path` whole or not at all: yields a 0600 temp file (`mode` "w" or "wb") that replaces `path`
    once the block ends (flushed, fsynced, renamed).

    Any failure — an `OSError` (a full disk, a read-only folder), an exception from the block, Ctrl-C —
    removes the temp file and re-raises; `path` is untouched. An `OSError` that names no file, or names the
    temp file, is made to name `path` (as Python's own writes do), so callers' one-line messages point at
    the file the person knows."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_private_atomic writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open_private(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (e.filename is None or os.fspath(e.filename) == os.fspath(tmp)):
            e.filename, e.filename2 = os.fspath(path), None
        raise


def write_private_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace `path` with `data` atomically; the file is 0600 from its first byte. On any failure the temp
    file is removed and `path` keeps its old content (see `open_private_atomic`)."""
    with open_private_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
