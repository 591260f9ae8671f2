"""The raw output folder: per-dialog JSONL files plus `manifest.json`, written so a kill never corrupts them.

Two ways to write a dialog:

- `RawStore.append` (live Telethon export, which may run for hours): append a batch, flush + fsync,
  then replace the manifest atomically. A kill between the two steps is repaired on the next run by
  `RawStore.resume`, which trusts the `.jsonl` file over the manifest (it drops a torn last line and
  takes the highest id found), so nothing is exported twice and nothing is lost.
- `RawStore.rewrite` (Desktop import, a local file): build the dialog's new file next to the old one
  and rename it into place in one step, so a dialog is either fully imported or untouched.

Files are sorted by date. Appends that arrive in date order keep a file sorted for free; otherwise the
dialog is re-sorted (in memory, that one dialog only) when it is finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from collect.errors import CollectError
from collect.records import MANIFEST_NAME, RawMessage, dialog_path
from common.files import make_private_dir, open_private, write_private_atomic
from common.text import valid_unicode

MANIFEST_VERSION = 1
MANIFEST_INTERVAL_S = 2.0
"""The Desktop import saves the manifest at most this often (and at the end)."""
_TMP_MARK = ".tmp-"


@dataclass
class DialogState:
    """One dialog's entry in `manifest.json` (documented in docs/data-format.md)."""

    name: str
    """The partner's display name at the last export."""
    count: int = 0
    """Lines (messages) in the dialog's `.jsonl` file."""
    last_id: int = 0
    """Highest Telegram message id already looked at, kept or skipped; the next run starts after it."""
    source: str = ""
    """`telegram` (live API export) or `desktop` (Telegram Desktop JSON import) — whichever wrote last."""
    bytes: int = 0
    """Size of the `.jsonl` file when the manifest was written; a mismatch means a run was cut short."""
    last_date: str | None = None
    """Date of the file's last line, to tell whether an append keeps the file sorted."""
    sorted: bool = True
    """False while the file holds an out-of-date-order append that has not been re-sorted yet."""
    updated: str = ""
    """When this entry was last written (UTC)."""
    synced: str | None = None
    """When the last complete live export of this dialog started (UTC): the next run looks for edits
    made since then (see collect/telegram.py). None until a live export has finished the dialog."""

    @classmethod
    def from_json(cls, obj: Any, where: str) -> DialogState:
        names = {f.name for f in fields(cls)}
        if not isinstance(obj, dict) or not {"name", "count", "last_id"} <= obj.keys():
            raise ValueError(f"{where}: expected an object with name, count and last_id")
        try:
            state = cls(**{k: v for k, v in obj.items() if k in names})
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        if not isinstance(state.last_id, int) or not isinstance(state.count, int):
            raise ValueError(f"{where}: count and last_id must be integers")
        return state


def encode_line(message: RawMessage) -> bytes:
    """One JSONL line (UTF-8, no ASCII escaping), newline included."""
    try:
        return orjson.dumps(message) + b"\n"
    except TypeError:  # a lone UTF-16 surrogate from a broken "\ud83d" escape: replace it
        obj = asdict(message) | {
            "message": valid_unicode(message.message),
            "dialog_name": valid_unicode(message.dialog_name),
        }
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace") + b"\n"


def timestamp(iso_date: str) -> float:
    return datetime.fromisoformat(iso_date).timestamp()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RawStore:
    """The output folder (0700) with its `.jsonl` files and manifest (0600)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise CollectError(f"{self.dir}: is a file; --out must be a folder (e.g. data/raw)")
        make_private_dir(self.dir)
        self.manifest_path = self.dir / MANIFEST_NAME
        self._saved_at = float("-inf")
        self._dirty = False
        for leftover in self.dir.glob(f".*{_TMP_MARK}*"):  # half-built files of a killed run
            leftover.unlink(missing_ok=True)
        self.dialogs: dict[int, DialogState] = self._load_manifest()

    # ---- manifest ----------------------------------------------------------------------------
    def _load_manifest(self) -> dict[int, DialogState]:
        if not self.manifest_path.exists():
            return {}
        fix = f"delete {self.manifest_path} and re-run: it is rebuilt from the .jsonl files beside it"
        try:
            obj = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CollectError(f"{self.manifest_path}: not valid JSON ({e}); {fix}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("dialogs"), dict):
            raise CollectError(f"{self.manifest_path}: expected {{'version', 'dialogs': {{...}}}}; {fix}")
        if obj.get("version") != MANIFEST_VERSION:
            raise CollectError(
                f"{self.manifest_path}: manifest version {obj.get('version')!r}, this twin writes "
                f"{MANIFEST_VERSION}; {fix}"
            )
        dialogs = {}
        for key, entry in obj["dialogs"].items():
            try:
                dialogs[int(key)] = DialogState.from_json(entry, f"dialog {key}")
            except ValueError as e:
                raise CollectError(f"{self.manifest_path}: {e}; {fix}") from None
        return dialogs

    def save_manifest(self) -> None:
        """Replace manifest.json atomically with the current state."""
        obj = {
            "version": MANIFEST_VERSION,
            "dialogs": {str(k): vars(v) for k, v in sorted(self.dialogs.items())},
        }
        write_private_atomic(self.manifest_path, orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
        self._saved_at = time.monotonic()
        self._dirty = False

    def save_manifest_soon(self) -> None:
        """Save now if the last save is older than `MANIFEST_INTERVAL_S`, else at the next chance.

        A manifest that lags behind the files is safe: `resume` notices the size mismatch and rescans.
        """
        self._dirty = True
        if time.monotonic() - self._saved_at >= MANIFEST_INTERVAL_S:
            self.save_manifest()

    def flush_manifest(self) -> None:
        if self._dirty:
            self.save_manifest()

    # ---- resume ------------------------------------------------------------------------------
    def resume(self, dialog_id: int, name: str, *, keep_empty: bool = False) -> int:
        """The id after which this dialog continues; repairs what a killed run left behind.

        A dialog without a file starts from scratch, unless `keep_empty` and the manifest says it was
        looked at before with nothing kept (media only, service messages): then its cursor stands, so
        the live export does not fetch the whole chat again on every run. (The Desktop import reads a
        local file, so it starts such a dialog afresh: a later import without --since fills it in.)
        """
        path = dialog_path(self.dir, dialog_id)
        state = self.dialogs.get(dialog_id)
        if not path.exists():
            if keep_empty and state is not None and state.count == 0:
                state.name = name
                return state.last_id
            # Never exported, or the user deleted the file to export this dialog afresh.
            self.dialogs[dialog_id] = DialogState(name=name)
            return 0
        if state is None or state.bytes != path.stat().st_size:
            state = self._rescan(path, name, state)
            self.dialogs[dialog_id] = state
            self.save_manifest()
        state.name = name
        if not state.sorted:
            self._sort_file(dialog_id)
        return state.last_id

    def _rescan(self, path: Path, name: str, old: DialogState | None) -> DialogState:
        """Rebuild a dialog's entry from its file, dropping a torn last line (killed mid-write)."""
        with open(path, "rb") as f:
            data = f.read()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            os.truncate(path, good_end)
            data = data[:good_end]
        count, max_id, last_ts, in_order, last_date = 0, 0, float("-inf"), True, None
        for lineno, line in enumerate(data.splitlines(), 1):
            where = f"{path}:{lineno}"
            try:
                record = RawMessage.from_dict(orjson.loads(line), where)
            except orjson.JSONDecodeError:
                raise CollectError(
                    f"{where}: not a JSON line; fix or delete {path.name} "
                    "(that dialog is then exported again)"
                ) from None
            except ValueError as e:
                raise CollectError(
                    f"{e}; fix or delete {path.name} (that dialog is then exported again)"
                ) from None
            ts = timestamp(record.date)
            in_order = in_order and ts >= last_ts
            last_ts, last_date = ts, record.date
            count += 1
            max_id = max(max_id, record.id)
        return DialogState(
            name=name,
            count=count,
            last_id=max(max_id, old.last_id if old else 0),
            source=old.source if old else "",
            bytes=len(data),
            last_date=last_date,
            sorted=in_order,
            updated=_now(),
            synced=old.synced if old else None,
        )

    # ---- live export: append batches ---------------------------------------------------------
    def append(
        self, dialog_id: int, source: str, batch: Sequence[tuple[float, RawMessage]], last_id: int
    ) -> None:
        """Append `batch` (timestamp, message) durably, then record `last_id` in the manifest."""
        state = self.dialogs[dialog_id]
        if batch:
            path = dialog_path(self.dir, dialog_id)
            with open_private(path, "ab") as f:
                f.write(b"".join(encode_line(m) for _, m in batch))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            last_ts = timestamp(state.last_date) if state.last_date else float("-inf")
            for ts, _ in batch:
                state.sorted = state.sorted and ts >= last_ts
                last_ts = ts
            state.count += len(batch)
            state.bytes = size
            state.last_date = batch[-1][1].date
        state.last_id = max(state.last_id, last_id)
        state.source = source
        state.updated = _now()
        self.save_manifest()

    def finish(self, dialog_id: int, synced: str | None = None) -> None:
        """Re-sort the dialog's file if an append broke date order; record when this pass started."""
        state = self.dialogs[dialog_id]
        if synced is not None:
            state.synced = synced
            self.save_manifest()
        if not state.sorted:
            self._sort_file(dialog_id)

    def replace(
        self,
        dialog_id: int,
        source: str,
        changed: Sequence[tuple[float, RawMessage]],
        removed: Collection[int] = (),
    ) -> int:
        """Put `changed` messages in place of the lines with their ids (adding those not there yet) and
        drop the `removed` ids; the file is rebuilt sorted and swapped in atomically.

        Returns how many lines actually changed; an unchanged file is not rewritten.
        """
        state = self.dialogs[dialog_id]
        path = dialog_path(self.dir, dialog_id)
        old = path.read_bytes().splitlines(keepends=True) if path.exists() else []
        lines = {int(orjson.loads(line)["id"]): line for line in old}
        edits = 0
        for _, message in changed:
            line = encode_line(message)
            if lines.get(message.id) != line:
                lines[message.id] = line
                edits += 1
        for mid in removed:
            if lines.pop(mid, None) is not None:
                edits += 1
        if edits == 0:
            return 0
        write_private_atomic(path, b"".join(_sorted_lines(list(lines.values()))))
        state.count = len(lines)
        state.bytes = path.stat().st_size
        state.last_date = _last_date(path)
        state.sorted = True
        state.source = source
        state.updated = _now()
        self.save_manifest()
        return edits

    def _sort_file(self, dialog_id: int) -> None:
        path = dialog_path(self.dir, dialog_id)
        lines = path.read_bytes().splitlines(keepends=True)
        write_private_atomic(path, b"".join(_sorted_lines(lines)))
        state = self.dialogs[dialog_id]
        state.sorted = True
        state.bytes = path.stat().st_size
        state.last_date = _last_date(path)
        self.save_manifest()

    # ---- Desktop import: rebuild a dialog's file in one step ----------------------------------
    @contextmanager
    def rewrite(self, dialog_id: int, source: str) -> Iterator[DialogRewrite]:
        """Collect a dialog's new messages and swap them in atomically on success."""
        writer = DialogRewrite(self, dialog_id, source)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise


class DialogRewrite:
    """New messages of one dialog, written to a temp copy of its file; `commit` renames it into place."""

    def __init__(self, store: RawStore, dialog_id: int, source: str) -> None:
        self.store = store
        self.dialog_id = dialog_id
        self.source = source
        self.state = store.dialogs[dialog_id]
        self.path = dialog_path(store.dir, dialog_id)
        self.tmp = store.dir / f".{self.path.name}{_TMP_MARK}{os.getpid()}"
        self.added = 0
        self._file: IO[bytes] | None = None
        self._last_ts = timestamp(self.state.last_date) if self.state.last_date else float("-inf")
        self._sorted = self.state.sorted
        self._last_date = self.state.last_date

    def add(self, ts: float, message: RawMessage) -> None:
        if self._file is None:
            self._file = open_private(self.tmp, "wb")
            if self.path.exists():
                with open(self.path, "rb") as old:
                    while chunk := old.read(1 << 20):
                        self._file.write(chunk)
        self._file.write(encode_line(message))
        if ts < self._last_ts:
            self._sorted = False
        else:
            self._last_ts, self._last_date = ts, message.date
        self.added += 1

    def commit(self, last_id: int) -> None:
        """Swap the new file into place (if anything was added) and record `last_id`."""
        state = self.state
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            if not self._sorted:
                lines = self.tmp.read_bytes().splitlines(keepends=True)
                write_private_atomic(self.tmp, b"".join(_sorted_lines(lines)))
            os.replace(self.tmp, self.path)
            state.count += self.added
            state.bytes = self.path.stat().st_size
            state.last_date = self._last_date if self._sorted else _last_date(self.path)
            state.sorted = True
        elif last_id <= state.last_id:
            return  # nothing new: leave the manifest alone
        state.last_id = max(state.last_id, last_id)
        state.source = self.source
        state.updated = _now()
        self.store.save_manifest_soon()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp.unlink(missing_ok=True)


def _sorted_lines(lines: list[bytes]) -> list[bytes]:
    """Lines sorted by (date, id); Python's sort is stable, so equal keys keep file order."""

    def key(line: bytes) -> tuple[float, int]:
        obj = orjson.loads(line)
        return timestamp(obj["date"]), obj["id"]

    return sorted(lines, key=key)


def _last_date(path: Path) -> str | None:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read().splitlines()
    return str(orjson.loads(tail[-1])["date"]) if tail else None
