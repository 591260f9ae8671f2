"""`common.files`: owner-only files, and atomic writes that leave no temp file behind when they fail.

The failures are real ones where they can be: a write cut off by the file-size limit (what a full disk
does to a write, `EFBIG` instead of `ENOSPC`), text that cannot be encoded, a block that raises halfway,
a target that is a folder, a folder that is missing or read-only. Only Ctrl-C is injected, at the rename.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import common.files
from common.files import open_private, open_private_atomic, write_private_atomic

ROOT = Path(__file__).resolve().parents[2]
OLD = "the previous, complete content\n"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    write_private_atomic(path, OLD)
    return path


def test_a_write_replaces_the_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_private_atomic(path, "one")
    write_private_atomic(path, b"two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_a_write_cut_off_by_the_file_size_limit_leaves_no_temp_file(target: Path) -> None:
    """A real failed write, in a child process (the limit and its signal stay there): RLIMIT_FSIZE makes
    the write past 64 KiB fail with EFBIG, as a full disk fails it with ENOSPC."""
    code = (
        "import resource, signal, sys\n"
        "from common.files import write_private_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    write_private_atomic(sys.argv[1], b'x' * (1 << 20))\n"
        "except OSError as e:\n"
        "    print(e.errno, e.filename, sep='\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    number, filename = done.stdout.split("\n")[:2]
    assert int(number) == errno.EFBIG  # the one-line "cannot write X: File too large" callers give
    assert filename == str(target)  # the file the person knows, not the temp name
    assert target.read_text() == OLD and leftovers(target.parent) == []


def test_text_that_cannot_be_encoded_leaves_no_temp_file(target: Path) -> None:
    with pytest.raises(UnicodeEncodeError):
        write_private_atomic(target, "fine so far " * 1000 + "\ud800 half a pair")
    assert target.read_text() == OLD and leftovers(target.parent) == []


def test_a_block_that_raises_halfway_leaves_no_temp_file(target: Path) -> None:
    with pytest.raises(RuntimeError, match="serialising failed"), open_private_atomic(target) as f:
        f.write("half of the new content")
        f.flush()  # on disk, in the temp file
        assert leftovers(target.parent) != []
        raise RuntimeError("serialising failed")
    assert target.read_text() == OLD and leftovers(target.parent) == []


def test_a_rename_onto_a_folder_fails_naming_the_target(tmp_path: Path) -> None:
    folder = tmp_path / "report.json"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError) as caught:
        write_private_atomic(folder, "data")
    assert caught.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert caught.value.filename == str(folder) and caught.value.filename2 is None
    assert leftovers(tmp_path) == [] and (folder / "inside").is_dir()


def test_ctrl_c_at_the_rename_leaves_no_temp_file(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(common.files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_private_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == OLD and leftovers(target.parent) == []


def test_a_missing_folder_fails_naming_the_target(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "out.json"
    with pytest.raises(FileNotFoundError) as caught:
        write_private_atomic(path, "data")
    assert caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_and_leaves_the_file(target: Path) -> None:
    target.parent.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as caught:
            write_private_atomic(target, "new")
    finally:
        target.parent.chmod(0o700)
    assert caught.value.filename == str(target)
    assert target.read_text() == OLD and leftovers(target.parent) == []


def test_open_private_closes_its_descriptor_when_the_mode_is_refused(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(ValueError):
            open_private(tmp_path / "f", "wq")
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_atomic_write_is_whole_file_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), open_private_atomic(tmp_path / "f", "a"):
        pass
    assert list(tmp_path.iterdir()) == []
