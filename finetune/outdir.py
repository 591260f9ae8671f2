"""Output folders written whole: `python -m finetune.export`'s model folder and the quality report.

Everything is written into a hidden sibling folder (`.NAME.partial-PID`, owner-only), which takes the
output's name in one rename once its last file is complete. A folder that was there before (an earlier
export or report) is moved aside first (`.NAME.previous-PID`) and deleted only after that rename. So a run
stopped at any point — an error, a full disk, Ctrl-C, a kill — never leaves a half-written output under
the final name, and loses nothing written before: the earlier output stays as it was. The next run
removes what a killed run left beside the output, and puts an earlier output back if a kill caught it
between the two renames.

An existing output folder is replaced only when it is empty, or holds an earlier output of the same kind
(its marker file) and nothing the tool does not write itself: a folder of other files (the adapter's own
out-dir, prepare's data, notes) is refused, naming one of them, instead of being mixed or deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.files import make_private_dir
from finetune.errors import UserError, check_out_dir

log = logging.getLogger(__name__)

PARTIAL, PREVIOUS = "partial", "previous"
TEMP_FILE = re.compile(r"^\.(.+)\.tmp-\d+$")
"""`common.files.write_private_atomic`'s temp name for a file (`.report.md.tmp-PID`)."""


@dataclass(frozen=True)
class OutputKind:
    """What a tool writes into its output folder."""

    noun: str
    """What one output is called in messages ("export", "report")."""
    marker: str
    """The file every complete output holds (export.json, report.json)."""
    owned: re.Pattern[str]
    """Names (files and folders directly in the output) the tool writes."""


def target(out: Path) -> Path:
    """The folder `out` names, absolute (`.` has no name to put beside it), through a symlink."""
    return out.resolve() if out.is_symlink() else Path(os.path.abspath(out))


def sibling(out: Path, state: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{state}-{pid}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(out: Path) -> None:
    """Clean up after a killed run on `out`: its partial folder goes; an earlier output it had moved aside
    comes back when `out` is missing (killed between the two renames), else goes too."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.({PARTIAL}|{PREVIOUS})-(\d+)$")
    for path in sorted(out.parent.iterdir()):
        m = pattern.match(path.name)
        if m is None or not path.is_dir() or pid_alive(int(m.group(2))):
            continue
        if m.group(1) == PREVIOUS and not out.exists():
            os.rename(path, out)
            log.warning("put back %s: a run killed while replacing it had moved it aside", out)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by a run that was killed before it finished", path)


def check_output_folder(out: Path, flag: str, kind: OutputKind) -> bool:
    """Refuse, before any work, an output folder (`flag` names it) that cannot be made or must not be
    replaced. True when it holds an earlier output, which a finished run replaces."""
    check_out_dir(out, flag)
    folder = target(out)
    remove_leftovers(folder)
    earlier = False
    if folder.is_dir() and (names := sorted(p.name for p in folder.iterdir())):
        foreign = [name for name in names if not kind.owned.fullmatch(name)]
        if kind.marker not in names:
            example = (foreign or names)[0] + (", …" if len(names) > 1 else "")
            raise UserError(
                f"{flag} {out} already holds files that are not an earlier {kind.noun} ({example}): choose "
                f"another {flag}; only an empty folder or an earlier {kind.noun} is replaced"
            )
        if foreign:
            raise UserError(
                f"{flag} {out} holds an earlier {kind.noun} and {foreign[0]}, which the {kind.noun} does not "
                f"write (replacing the folder would delete it): move it out, or choose another {flag}"
            )
        earlier = True
    parent = folder.parent
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {out} cannot be written: {parent} is not writable (the {kind.noun} is written beside "
            f"{folder.name} and renamed into place); choose another {flag}"
        )
    return earlier


def final_name(filename: str, staging: Path, out: Path) -> str:
    """A path inside the staging folder as the user will know it: under `out`, without a temp name."""
    path = Path(filename)
    try:
        path = out / path.relative_to(staging)
    except ValueError:
        return filename
    if m := TEMP_FILE.match(path.name):
        path = path.with_name(m.group(1))
    return str(path)


@contextmanager
def staged_folder(out: Path, flag: str) -> Iterator[Path]:
    """Yield an empty owner-only folder to write the whole output into; when the body returns, it becomes
    `out` (replacing what was there). On any error or interruption it is deleted and `out` stays as it
    was; an `OSError` then names the file under `out` (or `out` itself when the error names none)."""
    folder = target(out)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_private_dir(sibling(folder, PARTIAL, os.getpid()))
    except OSError as e:
        raise UserError(f"cannot create {flag} {out}: {e.strerror or e}; choose another {flag}") from None
    try:
        yield staging
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        e.filename = final_name(str(e.filename), staging, out) if e.filename else str(out)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        previous = sibling(folder, PREVIOUS, os.getpid())
        os.rename(folder, previous)
        os.rename(staging, folder)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.rename(staging, folder)
