"""Import Telegram Desktop's JSON export: for people without API keys.

Telegram Desktop > Settings > Advanced > Export Telegram data (or a chat's menu > Export chat history),
format "Machine-readable JSON", writes `result.json` in one of two shapes:

- a single chat: `{"name", "type", "id", "messages": [...]}`
- a full account: `{"personal_information": {"user_id", ...}, "chats": {"list": [<chat>, ...]}, ...}`

Only `personal_chat`s are imported (not bots, Saved Messages, groups or channels). The file is streamed
(`JsonStream`), so a 1M-message export never sits in memory whole.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from collect.errors import CollectError
from collect.jsonstream import CHUNK_CHARS, JsonStream
from collect.options import SERVICE_NOTIFICATIONS_ID, CollectOptions
from collect.records import RawMessage
from collect.store import RawStore

log = logging.getLogger(__name__)

EXPORT_FILE = "result.json"
PERSONAL_CHAT = "personal_chat"
SOURCE = "desktop"
DELETED_ACCOUNT = "Deleted Account"
NON_TEXT_FIELDS: dict[str, str] = {
    "poll": "poll",
    "todo_list": "to-do list",
    "contact_information": "contact",
    "game_title": "game",
    "invoice_information": "invoice",
    "giveaway_information": "giveaway",
    "giveaway_results": "giveaway",
}
"""Messages carrying these are not written words (their `text`, if any, is not the person's prose)."""
_NON_TEXT_KEYS = frozenset(NON_TEXT_FIELDS)
HOW_TO_EXPORT = (
    "Telegram Desktop > Settings > Advanced > Export Telegram data, tick 'Personal chats', "
    "format 'Machine-readable JSON'"
)
EXPECTED_SHAPE = (
    "expected Telegram Desktop's JSON export: a single chat {name, type, id, messages: [...]} "
    "or a full export {personal_information, chats: {list: [...]}}"
)


@dataclass
class ImportSummary:
    """What one import did."""

    out: Path
    dialogs: int = 0
    """Personal chats found in the export."""
    new_messages: int = 0
    """Messages written by this run (0 when the same export is imported again)."""
    total_messages: int = 0
    """Messages in the output files of those dialogs after this run."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Entries not written, by reason."""
    other_chats: Counter[str] = field(default_factory=Counter)
    """Chats left out, by Telegram's chat type."""

    def line(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) or "none"
        others = sum(self.other_chats.values())
        return (
            f"collect desktop: {self.dialogs} personal chats, {self.new_messages} new messages "
            f"({self.total_messages} in all) -> {self.out}/ ; skipped {skipped}; "
            f"{others} other chats left out"
        )


def find_export(path: str | Path) -> Path:
    """`path` itself, or `result.json` inside the folder `path`."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / EXPORT_FILE
        if candidate.is_file():
            return candidate
        if (path / "messages.html").exists() or (path / "export_results.html").exists():
            raise CollectError(
                f"{path}: this is an HTML export; export again choosing 'Machine-readable JSON'"
            )
        raise CollectError(
            f"{path}: no {EXPORT_FILE} in this folder; pass the export's result.json ({HOW_TO_EXPORT})"
        )
    if not path.exists():
        raise CollectError(f"{path}: no such file; pass the export's result.json or its folder")
    return path


def flatten_text(text: Any) -> str:
    """Desktop's `text`: a string, or a list of strings and `{type, text}` entities → plain text."""
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        parts = []
        for part in text:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def message_timestamp(entry: dict[str, Any]) -> float | None:
    """Seconds since the epoch: `date_unixtime` (UTC) if present, else `date` in this machine's time zone."""
    unix = entry.get("date_unixtime")
    if unix is not None:
        try:
            return int(unix)
        except (TypeError, ValueError):
            pass
    local = entry.get("date")
    if isinstance(local, str):
        try:
            return datetime.fromisoformat(local).timestamp()  # naive → local time zone (TZ)
        except ValueError:
            return None
    return None


def user_id(from_id: Any) -> int | None:
    """`"user123"` (current schema) or `123` (old schema) → 123; channels and the rest → None."""
    if isinstance(from_id, int) and not isinstance(from_id, bool):
        return from_id
    if isinstance(from_id, str) and from_id.startswith("user") and from_id[4:].isdigit():
        return int(from_id[4:])
    return None


@dataclass
class _Chat:
    name: Any = None
    type: Any = None
    id: Any = None

    def set(self, key: str, value: Any) -> None:
        setattr(self, key, value)


def import_desktop_export(
    path: str | Path,
    out: str | Path,
    *,
    me: int | None = None,
    options: CollectOptions | None = None,
    progress: bool | None = None,
    chunk_chars: int = CHUNK_CHARS,
) -> ImportSummary:
    """Import the personal chats of a Desktop export into `out`; re-importing adds only newer ids.

    `progress=None` shows a bar only on a terminal.
    """
    export = find_export(path)
    store = RawStore(out)
    importer = _DesktopImport(export, store, me, options or CollectOptions())
    size = export.stat().st_size
    with (
        open(export, encoding="utf-8-sig") as f,
        tqdm(total=size, unit="B", unit_scale=True, desc="importing", disable=_disable(progress)) as bar,
    ):
        try:
            importer.run(JsonStream(f, str(export), chunk_chars), bar, f)
        finally:
            store.flush_manifest()  # record the dialogs committed so far, even when stopped by an error
    return importer.summary


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


class _DesktopImport:
    def __init__(self, path: Path, store: RawStore, me: int | None, options: CollectOptions) -> None:
        self.path = path
        self.store = store
        self.me = me
        self.me_from = "--me" if me is not None else None
        self.options = options
        self.summary = ImportSummary(out=store.dir)
        self.chats_seen = 0
        self.entries_in_personal_chats = 0
        self.export_keys_seen = False
        self._bar: tqdm | None = None
        self._raw: IO[Any] | None = None

    # ---- structure ---------------------------------------------------------------------------
    def run(self, stream: JsonStream, bar: tqdm, f: IO[str]) -> None:
        self._bar, self._raw = bar, getattr(f, "buffer", None)
        first = stream.peek()
        if not first:
            raise CollectError(f"{self.path}: the file is empty; {EXPECTED_SHAPE} ({HOW_TO_EXPORT})")
        if first == "<":
            raise CollectError(
                f"{self.path}: this is HTML, not JSON; export again choosing 'Machine-readable JSON'"
            )
        if first != "{":
            raise CollectError(f"{self.path}: not a Telegram export; {EXPECTED_SHAPE}")
        top = _Chat()
        deferred: list[Any] | None = None
        for key in stream.object_keys():
            if key == "personal_information":
                self._read_personal_information(stream.value())
            elif key in ("chats", "left_chats"):
                self.export_keys_seen = True
                self._read_chat_list(stream, key)
            elif key in ("name", "type", "id"):
                top.set(key, stream.value())
            elif key == "messages":  # a single-chat export
                self.export_keys_seen = True
                deferred = self._read_messages(stream, top)
            else:
                stream.skip()
        if not stream.at_end():
            raise stream.error("unexpected data after the end of the JSON document")
        if deferred is not None:
            self._import_chat(top, deferred, stream)
        bar.update(bar.total - bar.n)
        self._check_found_something()

    def _read_personal_information(self, info: Any) -> None:
        self.export_keys_seen = True
        if self.me is None and isinstance(info, dict):
            uid = user_id(info.get("user_id"))
            if uid is not None:
                self.me, self.me_from = uid, "personal_information.user_id"

    def _read_chat_list(self, stream: JsonStream, key: str) -> None:
        if stream.peek() != "{":
            raise stream.error(f"not a Telegram export: '{key}' should be an object with a 'list'")
        for sub in stream.object_keys():
            if sub != "list":
                stream.skip()
                continue
            if stream.peek() != "[":
                raise stream.error(f"not a Telegram export: '{key}.list' should be a list of chats")
            for _ in stream.array_items():
                self._read_chat(stream)

    def _read_chat(self, stream: JsonStream) -> None:
        if stream.peek() != "{":
            raise stream.error("not a Telegram export: every entry of 'chats.list' should be a chat object")
        chat = _Chat()
        deferred: list[Any] | None = None
        for key in stream.object_keys():
            if key in ("name", "type", "id"):
                chat.set(key, stream.value())
            elif key == "messages":
                deferred = self._read_messages(stream, chat)
            else:
                stream.skip()
        if deferred is not None:
            self._import_chat(chat, deferred, stream)
        elif chat.type is None and chat.id is None:
            raise stream.error("not a Telegram export: a chat without 'type', 'id' and 'messages' ends")

    def _read_messages(self, stream: JsonStream, chat: _Chat) -> list[Any] | None:
        """Stream a chat's messages; if its type/id come after them (unusual key order), return them."""
        if stream.peek() != "[":
            raise stream.error("not a Telegram export: 'messages' should be a list")
        if chat.type is None or chat.id is None:
            return list(stream.array_values())
        self._import_chat(chat, stream.array_values(), stream)
        return None

    def _check_found_something(self) -> None:
        s = self.summary
        if not self.export_keys_seen:
            raise CollectError(f"{self.path}: not a Telegram export; {EXPECTED_SHAPE}")
        if self.chats_seen == 0:
            raise CollectError(f"{self.path}: the export contains no chats; export again ({HOW_TO_EXPORT})")
        if s.dialogs == 0:
            found = ", ".join(f"{n} {t}" for t, n in s.other_chats.most_common())
            raise CollectError(
                f"{self.path}: no personal chats in this export (found {found}); twin learns from one-to-one "
                f"chats with people: export again ({HOW_TO_EXPORT}), or export a one-to-one chat "
                "(its menu > Export chat history)"
            )
        if self.entries_in_personal_chats == 0:
            raise CollectError(
                f"{self.path}: the export is empty: its {s.dialogs} personal chat(s) hold no messages; "
                f"export again ({HOW_TO_EXPORT})"
            )

    # ---- one chat ----------------------------------------------------------------------------
    def _import_chat(self, chat: _Chat, entries: Iterable[Any], stream: JsonStream) -> None:
        self.chats_seen += 1
        if chat.type != PERSONAL_CHAT or chat.id == SERVICE_NOTIFICATIONS_ID:
            kind = "service notifications" if chat.id == SERVICE_NOTIFICATIONS_ID else str(chat.type)
            self.summary.other_chats[kind] += 1
            for _ in entries:  # consume (and check) the stream
                pass
            return
        if not isinstance(chat.id, int) or isinstance(chat.id, bool):
            raise stream.error(
                f"not a Telegram export: a personal chat's 'id' should be an integer, got {chat.id!r}"
            )
        name = chat.name if isinstance(chat.name, str) and chat.name else DELETED_ACCOUNT
        self.summary.dialogs += 1
        if self._bar is not None:
            self._bar.set_postfix_str(name[:24])
        last_id = self.store.resume(chat.id, name)
        with self.store.rewrite(chat.id, SOURCE) as writer:
            max_id = self._convert(chat.id, name, last_id, entries, writer.add, stream)
            writer.commit(max_id)
        self.summary.new_messages += writer.added
        self.summary.total_messages += self.store.dialogs[chat.id].count

    def _convert(
        self, dialog_id: int, name: str, last_id: int, entries: Iterable[Any], add: Any, stream: JsonStream
    ) -> int:
        """The hot loop: filter and convert each entry, hand kept ones to `add`; returns the max id seen."""
        skipped = self.summary.skipped
        keep_forwarded = self.options.keep_forwarded
        since_ts = self.options.since_ts
        me = self.me
        others: set[int] = set()
        max_id = last_id
        index = -1
        for index, entry in enumerate(entries):  # noqa: B007 (index is used after the loop)
            if index & 4095 == 4095:
                self._tick()
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
                raise stream.error(
                    f"not a Telegram export: message #{index + 1} of chat {dialog_id} has no integer 'id' "
                    "(the message ends just before)"
                )
            mid = entry["id"]
            if mid > max_id:
                max_id = mid
            if mid <= last_id:
                skipped["already collected"] += 1
                continue
            if entry.get("type") != "message":
                skipped["service or unsupported"] += 1
                continue
            if not keep_forwarded and "forwarded_from" in entry:
                skipped["forwarded"] += 1
                continue
            if entry.get("media_type") == "sticker":
                skipped["sticker"] += 1
                continue
            if not _NON_TEXT_KEYS.isdisjoint(entry):
                skipped[next(what for key, what in NON_TEXT_FIELDS.items() if key in entry)] += 1
                continue
            text = entry.get("text") if "text" in entry else entry.get("text_entities")
            if type(text) is not str:
                text = flatten_text(text)
            if not text.strip():
                skipped["media without caption or empty"] += 1
                continue
            ts = message_timestamp(entry)
            if ts is None:
                raise stream.error(
                    f"message id {mid} of chat {dialog_id} has no usable 'date_unixtime' or 'date' "
                    "(the message ends just before)"
                )
            if ts < since_ts:
                skipped["before --since"] += 1
                continue
            sender = user_id(entry.get("from_id"))
            if sender is None:
                skipped["unknown sender"] += 1
                continue
            if me is not None:
                out = sender == me
                if not out and sender != dialog_id:
                    others.add(sender)
            else:  # in a personal chat the partner's user id is the chat id; "me" is the other sender
                out = sender != dialog_id
                if out and sender not in others:
                    others.add(sender)
                    if len(others) > 1:
                        raise self._ambiguous_me(dialog_id, name, others)
            date = datetime.fromtimestamp(ts, UTC).isoformat()
            add(
                ts,
                RawMessage(id=mid, date=date, out=out, message=text, dialog_id=dialog_id, dialog_name=name),
            )
        self.entries_in_personal_chats += index + 1
        if me is not None and others:
            log.warning(
                "%s: chat %r (id %d) has messages from user(s) %s, who are neither you (%s = %d) nor the "
                "partner; if %d is not your user id, re-import into a fresh --out with the right --me",
                self.path, name, dialog_id, ", ".join(map(str, sorted(others))), self.me_from, me, me,
            )  # fmt: skip
        return max_id

    def _ambiguous_me(self, dialog_id: int, name: str, others: set[int]) -> CollectError:
        ids = ", ".join(str(i) for i in sorted(others))
        return CollectError(
            f"{self.path}: can't tell which sender is you in chat {name!r} (id {dialog_id}): "
            f"users {ids} both "
            "write there and neither is the chat's partner. Pass your Telegram user id, e.g. "
            f"--me {min(others)} (a full-account export has it in personal_information.user_id)"
        )

    def _tick(self) -> None:
        if self._bar is not None and self._raw is not None and not self._bar.disable:
            self._bar.update(self._raw.tell() - self._bar.n)
