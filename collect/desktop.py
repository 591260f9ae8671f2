"""Import Telegram Desktop's JSON export: for people without API keys.

Telegram Desktop > Settings > Advanced > Export Telegram data (or a chat's menu > Export chat history),
format "Machine-readable JSON", writes `result.json` in one of two shapes:

- a single chat: `{"name", "type", "id", "messages": [...]}`
- a full account: `{"personal_information": {"user_id", ...}, "chats": {"list": [<chat>, ...]}, ...}`

Each export lands in a folder of its own (`ChatExport_<date>`, `DataExport_<date>`); given the folder
above several of them, all are imported one after another (an HTML one among them is left out, with a
warning). Only `personal_chat`s are imported (not bots, Saved Messages, groups, channels or the
"Telegram" service account 777000). The file is streamed (`JsonStream`, which also mends the invalid JSON
Desktop itself writes), so a 1M-message export never sits in memory whole.

Ids across Desktop versions. Before 2.8 (mid-2021) Desktop wrote a chat's `id` as its own internal peer
id: user id + 2^32 for a personal chat (+ 2^33 for groups and channels), `from_id` as a number (the bare
user id; from late 2020 the same + 2^32 form). Since then `id` is the bare id and `from_id` a string
(`"user123"`). User ids were 31-bit then, but today's reach past 2^32, so a big `id` alone says nothing:
a chat whose senders are numbers is read in the old scheme and its ids shifted back (`unshift`), so an
old and a new export of one account land in the same `<user id>.jsonl` and merge by message id.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from collect.errors import CollectError, os_reason
from collect.jsonstream import CHUNK_CHARS, TOO_DEEP, JsonStream
from collect.options import SERVICE_NOTIFICATIONS_ID, CollectOptions
from collect.records import RawMessage, dialog_path
from collect.store import RawStore

log = logging.getLogger(__name__)

EXPORT_FILE = "result.json"
PERSONAL_CHAT = "personal_chat"
SOURCE = "desktop"
USER_ID_SHIFT = 1 << 32
"""Desktop before 2.8 wrote a user's peer id as user id + 2^32 (groups and channels + 2^33)."""
OLD_SCHEME, NEW_SCHEME = "numeric sender ids", "user<id> sender ids"
MAX_ID = 1 << 63
"""Ids at or past this are not Telegram's (and do not fit the raw files' 64-bit integers)."""
TELEGRAM_LAUNCH = datetime(2013, 8, 1, tzinfo=UTC)
"""Telegram launched in August 2013: an earlier date (1970: a zero timestamp) cannot be a real message's,
so such messages are skipped, with a warning."""
LAST_DATE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
"""The last date the raw files can hold (ISO-8601 years have four digits); later ones are skipped too."""
FUTURE_SLACK_S = 86_400.0
"""Dates more than a day (any time zone) past this machine's clock are kept, with a warning: Telegram's
servers stamp the dates, so the clock here may well be the wrong one."""
IMPLAUSIBLE_DATE = "implausible date"
UNKNOWN_SENDER = "unknown sender"
BEFORE_SINCE = "before --since"
FORWARDED = "forwarded"
SERVICE_CHAT = "Telegram service notifications (777000, login codes)"
DELETED_ACCOUNT = "Deleted Account"
UNKNOWN_TYPE = "of unknown type"
"""Chats whose `type` is missing or null (Desktop writes null for a type it does not know)."""
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
    new_mine: int = 0
    """Of the new messages, those marked as the person's own (`out`)."""
    future_dated: int = 0
    """Messages written although dated more than a day past this machine's clock."""
    exports: int = 1
    """Export files read (several when `path` is a folder of export folders)."""
    html_exports: list[Path] = field(default_factory=list)
    """HTML export folders found beside the JSON ones and left out (twin reads only JSON)."""

    def line(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) or "none"
        others = ", ".join(f"{n} {kind}" for kind, n in self.other_chats.most_common())
        return (
            "collect desktop: "
            + (f"{self.exports} exports, " if self.exports > 1 else "")
            + f"{self.dialogs} personal chats, {self.new_messages} new messages "
            f"({self.total_messages} in all) -> {self.out}/ ; skipped {skipped}; "
            f"{sum(self.other_chats.values())} other chats left out"
            + (f" ({others})" if others else "")
            + (f"; {self.future_dated} kept dated in the future" if self.future_dated else "")
            + (
                f"; {len(self.html_exports)} HTML exports left out (export them again as JSON)"
                if self.html_exports
                else ""
            )
        )


def find_exports(path: str | Path) -> tuple[list[Path], list[Path]]:
    """The export files `path` stands for, and the HTML export folders found beside them (left out).

    `path` is a `result.json`, the folder holding one, or a folder of exports: Telegram Desktop puts each
    export in a folder of its own (`ChatExport_2024-05-01`, `ChatExport_2024-05-01 (1)`, `DataExport_...`),
    so exporting chats one by one leaves them side by side; they are read in the order of their names.
    """
    path = Path(path).expanduser()
    try:
        return _find_exports(path)
    except OSError as e:  # e.g. a folder without read/search permission
        raise CollectError(f"{e.filename or path}: can't read it ({os_reason(e)}); {HOW_TO_READ}") from None


HOW_TO_READ = "check that you may read it (ls -l; chmod u+r, u+rx for a folder) or pass a copy you can read"
HTML_PAGES = ("messages.html", "export_results.html")
"""What Desktop's "Human-readable HTML" format writes in place of result.json (a chat; a full export)."""
AS_JSON = (
    "twin reads only the JSON format: export again in Telegram Desktop (a chat's menu, top right > Export "
    "chat history, or Settings > Advanced > Export Telegram data) with Format: 'Machine-readable JSON'"
)


def _find_exports(path: Path) -> tuple[list[Path], list[Path]]:
    if not path.is_dir():
        if not path.exists():
            raise CollectError(f"{path}: no such file; pass the export's result.json or its folder")
        if not path.is_file():
            raise CollectError(f"{path}: not a regular file; pass the export's result.json or its folder")
        return [path], []
    candidate = path / EXPORT_FILE
    if candidate.is_file():
        return [candidate], []
    if candidate.is_dir():
        raise CollectError(f"{candidate}: a folder, not the export file; pass the export's result.json")
    if page := _html_page(path):
        raise CollectError(f"{page}: an HTML export; {AS_JSON}")
    # A folder of exports (e.g. Downloads/Telegram Desktop, holding ChatExport_* folders)
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    inside = [p / EXPORT_FILE for p in folders if (p / EXPORT_FILE).is_file()]
    html = [p for p in folders if p / EXPORT_FILE not in inside and _html_page(p)]  # not format "Both"
    if inside:
        return inside, html
    if html:
        raise CollectError(f"{path}: the exports in this folder are HTML ({_listed(html)}); {AS_JSON}")
    for above in (path.parent, path.parent.parent):  # a folder inside an export (chats/, photos/)
        if (above / EXPORT_FILE).is_file():
            raise CollectError(
                f"{path}: no {EXPORT_FILE} in this folder, but in {above}: pass {above / EXPORT_FILE}"
            )
    raise CollectError(
        f"{path}: no {EXPORT_FILE} in this folder; pass the export's result.json ({HOW_TO_EXPORT})"
    )


def _html_page(folder: Path) -> Path | None:
    return next((folder / name for name in HTML_PAGES if (folder / name).exists()), None)


def _listed(paths: list[Path], most: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


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
    """Seconds since the epoch: `date_unixtime` (UTC) if present, else `date` in this machine's time zone.

    None when neither is there or readable; a date too far out for the calendar is ±inf (implausible)."""
    unix = entry.get("date_unixtime")
    if unix is not None:
        try:
            return int(unix)
        except OverflowError:  # a JSON 1e400 is a float infinity
            return float(unix)
        except (TypeError, ValueError):
            pass
    local = entry.get("date")
    if isinstance(local, str):
        try:
            parsed = datetime.fromisoformat(local)
        except ValueError:
            return None
        try:
            return parsed.timestamp()  # naive → local time zone (TZ)
        except (ValueError, OverflowError, OSError):  # year 1 in a zone east of UTC, and the like
            return float("-inf") if parsed.year < 1970 else float("inf")
    return None


def user_id(from_id: Any) -> int | None:
    """A sender's user id: `"user123"` (current scheme) → 123; a number (old scheme) → itself, or with
    Desktop's +2^32 taken off; channels, groups and the rest → None."""
    if isinstance(from_id, str):
        return int(from_id[4:]) if from_id.startswith("user") and from_id[4:].isdigit() else None
    if isinstance(from_id, int) and not isinstance(from_id, bool) and 0 < from_id < 2 * USER_ID_SHIFT:
        return from_id - USER_ID_SHIFT if from_id >= USER_ID_SHIFT else from_id
    return None  # + 2^33: a group or channel in the old scheme


def sender_scheme(entry: Any) -> str | None:
    """Which id scheme an entry's `from_id` / `actor_id` is written in; None if it has neither."""
    if isinstance(entry, dict):
        for key in ("from_id", "actor_id"):
            value = entry.get(key)
            if isinstance(value, str):
                return NEW_SCHEME
            if isinstance(value, int) and not isinstance(value, bool):
                return OLD_SCHEME
    return None


def unshift(peer_id: int, scheme: str | None) -> int:
    """A user's id as Telegram knows it: an old-scheme export's user id + 2^32 → the user id.

    Only in the old scheme (user ids were 31-bit then); today's ids can be above 2^32 themselves."""
    if scheme == OLD_SCHEME and USER_ID_SHIFT <= peer_id < USER_ID_SHIFT + (1 << 31):
        return peer_id - USER_ID_SHIFT
    return peer_id


class WrittenIds:
    """The ids written for one chat, kept small: a sorted array while the export's ids ascend (Desktop
    writes them in order: 8 bytes an id), a set from the first id that goes back."""

    __slots__ = ("top", "ordered", "unordered")

    def __init__(self) -> None:
        self.top = -MAX_ID
        self.ordered = array("q")
        self.unordered: set[int] | None = None

    def add(self, mid: int) -> bool:
        """Remember `mid`; False if it was there already."""
        if mid > self.top:
            self.top = mid
            if self.unordered is None:
                self.ordered.append(mid)
            else:
                self.unordered.add(mid)
            return True
        if self.unordered is None:
            at = bisect_left(self.ordered, mid)
            if at < len(self.ordered) and self.ordered[at] == mid:
                return False
            self.unordered, self.ordered = set(self.ordered), array("q")
        if mid in self.unordered:
            return False
        self.unordered.add(mid)
        return True


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
    """Import the personal chats of a Desktop export (or of a folder of exports, one after another) into
    `out`; re-importing adds only newer ids.

    `progress=None` shows a bar only on a terminal.
    """
    exports, html = find_exports(path)
    importer = _DesktopImport(out, me, options or CollectOptions())
    for number, export in enumerate(exports, 1):
        try:
            importer.import_file(export, progress, chunk_chars)
        except CollectError as e:
            if len(exports) == 1:
                raise
            raise CollectError(
                f"{e} [export {number} of {len(exports)} in {path}: the ones before it are imported; fix "
                "this one or move its folder away, then run the same command again]"
            ) from None
    importer.summary.exports = len(exports)
    importer.summary.html_exports = html
    importer.finish(exports[0] if len(exports) == 1 else Path(path))
    return importer.summary


_OTHER_FORMATS: dict[bytes, str] = {
    b"PK\x03\x04": "a zip archive: unzip it and pass the result.json inside",
    b"\x1f\x8b": "a gzip archive: unpack it (gunzip) and pass the result.json inside",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: unpack it and pass the result.json inside",
    b"Rar!\x1a\x07": "a RAR archive: unpack it and pass the result.json inside",
    b"\x89PNG": "a PNG image, not the export: pass the export's result.json",
    b"\xff\xd8\xff": "a JPEG image, not the export: pass the export's result.json",
    b"%PDF": "a PDF document, not the export: pass the export's result.json",
    b"\xff\xfe": "UTF-16 text, not UTF-8 (re-saved by an editor?): export again, or convert it with "
    "`iconv -f UTF-16 -t UTF-8`",
    b"\xfe\xff": "UTF-16 text, not UTF-8 (re-saved by an editor?): export again, or convert it with "
    "`iconv -f UTF-16 -t UTF-8`",
}
"""Files people pass by mistake, told apart by their first bytes, and what to do instead."""


def _refuse_other_formats(export: Path) -> None:
    with open(export, "rb") as f:
        head = f.read(8)
    for magic, what in _OTHER_FORMATS.items():
        if head.startswith(magic):
            raise CollectError(f"{export}: this is {what}")


def open_store(out: str | Path) -> RawStore:
    """The output folder, created if needed; a one-line error if it cannot be."""
    try:
        return RawStore(out)
    except OSError as e:
        raise CollectError(
            f"{e.filename or out}: can't create or use the output folder ({os_reason(e)}); pass an --out "
            "folder you can write to (its parent must be a folder you may write in)"
        ) from None


def _what_to_do_about(skipped: Counter[str]) -> str:
    """The fix for an import that kept nothing, by its commonest reason."""
    top = skipped.most_common(1)[0][0] if skipped else ""
    if top == BEFORE_SINCE:
        return "pass an earlier --since, or leave it out"
    if top == FORWARDED:
        return "pass --keep-forwarded to keep forwarded messages (they are not your own words, though)"
    if top == UNKNOWN_SENDER:
        return "the messages carry no sender ('from_id'): export again from Telegram Desktop"
    return (
        "twin learns from written text (media without a caption, stickers, polls and service entries are "
        f"left out): export chats in which you write ({HOW_TO_EXPORT})"
    )


def _shown(value: Any) -> str:
    """A field's value for an error message: ids and dates only, cut short (never message text)."""
    return repr(value)[:40] if value is None or isinstance(value, int | float | str) else type(value).__name__


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


class _DesktopImport:
    """One import run: one export file after another (`import_file`) into one store, then `finish`."""

    def __init__(self, out: str | Path, me: int | None, options: CollectOptions) -> None:
        self.out = out
        self._store: RawStore | None = None
        self.given_me = me
        self.options = options
        self.now = time.time()
        self.summary = ImportSummary(out=Path(out))
        self.dialog_ids: set[int] = set()
        self.chats_seen = 0
        self.entries_in_personal_chats = 0
        self.you: dict[str, None] = {}
        """Who was taken to be "you", per export (an ordered set, for the warning below)."""
        # per export file
        self.path = Path()
        self.me = me
        self.me_from = "--me" if me is not None else None
        self.scheme: str | None = None
        """The id scheme of the chats read so far (see `unshift`)."""
        self.export_keys_seen = False
        self._bar: tqdm | None = None
        self._raw: IO[Any] | None = None

    @property
    def store(self) -> RawStore:
        """The output folder, created when the first export file could be opened."""
        if self._store is None:
            self._store = open_store(self.out)
            self.summary.out = self._store.dir
        return self._store

    def import_file(self, export: Path, progress: bool | None, chunk_chars: int) -> None:
        try:
            _refuse_other_formats(export)
            f = open(export, encoding="utf-8-sig")  # closed by the `with f` below
        except OSError as e:
            raise CollectError(f"{export}: can't read it ({os_reason(e)}); {HOW_TO_READ}") from None
        self.path, self.scheme, self.export_keys_seen = export, None, False
        self.me, self.me_from = self.given_me, "--me" if self.given_me is not None else None
        with f:
            store = self.store
            try:
                size = os.fstat(f.fileno()).st_size
                bar = tqdm(
                    total=size, unit="B", unit_scale=True, desc="importing", disable=_disable(progress)
                )
                with bar:
                    try:
                        self.run(JsonStream(f, str(export), chunk_chars), bar, f)
                    finally:
                        store.flush_manifest()  # record the dialogs committed so far, even when stopped
            except OSError as e:  # reading errors are CollectErrors already: this is the output
                raise CollectError(
                    f"{e.filename or store.dir}: can't write the output ({os_reason(e)}); free some space, "
                    "fix its permissions or pass another --out (chats finished so far are kept; re-run to "
                    "continue)"
                ) from None
            except RecursionError:  # a backstop: JsonStream limits nesting itself
                raise CollectError(f"{export}: {TOO_DEEP}") from None

    # ---- structure ---------------------------------------------------------------------------
    def run(self, stream: JsonStream, bar: tqdm, f: IO[str]) -> None:
        self._bar, self._raw = bar, getattr(f, "buffer", None)
        first = stream.peek()
        if not first:
            raise CollectError(f"{self.path}: the file is empty; {EXPECTED_SHAPE} ({HOW_TO_EXPORT})")
        if first == "<":
            raise CollectError(f"{self.path}: this is HTML, not JSON; {AS_JSON}")
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
        if not self.export_keys_seen:
            raise CollectError(f"{self.path}: not a Telegram export; {EXPECTED_SHAPE}")
        if stream.mended:
            log.info(
                "%s: mended %d place(s) where Telegram Desktop wrote invalid JSON (a control character as "
                "\\xHH, or an unquoted custom emoji document_id); nothing was lost",
                self.path, stream.mended,
            )  # fmt: skip

    def finish(self, where: Path) -> None:
        """Check that the run found something to learn from, and warn about what looks wrong; `where`
        names the export (or the folder of exports) in the messages."""
        self.summary.dialogs = len(self.dialog_ids)
        if self._store is not None:
            self.summary.total_messages = sum(self.store.dialogs[d].count for d in self.dialog_ids)
        self._check_found_something(where)
        if implausible := self.summary.skipped[IMPLAUSIBLE_DATE]:
            log.warning(
                "%s: skipped %d message(s) dated before Telegram existed (%s) or past the year 9999: "
                "a broken timestamp in the export; the other messages are imported",
                where, implausible, TELEGRAM_LAUNCH.strftime("%Y-%m"),
            )  # fmt: skip
        if unknown := self.summary.skipped[UNKNOWN_SENDER]:
            log.warning(
                "%s: skipped %d message(s) of personal chats whose sender is not a user ('from_id' missing, "
                "or a channel's): if the file was edited or converted by another tool, export it again "
                "from Telegram Desktop",
                where, unknown,
            )  # fmt: skip
        if self.summary.new_messages and not self.summary.new_mine:
            log.warning(
                "%s: none of the %d new messages is marked as yours (you: %s); if you wrote in these "
                "chats, re-import into a fresh --out with --me YOUR_TELEGRAM_USER_ID",
                where, self.summary.new_messages, "; ".join(self.you),
            )  # fmt: skip
        if future := self.summary.future_dated:
            log.warning(
                "%s: kept %d message(s) dated more than a day after this machine's clock (%s UTC); "
                "if the clock is right, the export is broken: check those chats' last messages",
                where, future, datetime.fromtimestamp(self.now, UTC).strftime("%Y-%m-%d %H:%M"),
            )  # fmt: skip
        if html := self.summary.html_exports:
            log.warning(
                "%s: left out %d HTML export(s) (%s); %s",
                where, len(html), _listed(html), AS_JSON,
            )  # fmt: skip

    def _read_personal_information(self, info: Any) -> None:
        self.export_keys_seen = True
        if self.me is None and isinstance(info, dict):
            uid = info.get("user_id")  # a bare number in every scheme (unshifted per chat, like --me)
            if isinstance(uid, str):
                uid = user_id(uid) or (int(uid) if uid.isdigit() else None)
            if isinstance(uid, int) and not isinstance(uid, bool) and 0 < uid < MAX_ID:
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

    def _check_found_something(self, where: Path) -> None:
        s = self.summary
        many = s.exports > 1
        export = "these exports" if many else "the export"
        if self.chats_seen == 0:
            contain = "contain" if many else "contains"
            raise CollectError(f"{where}: {export} {contain} no chats; export again ({HOW_TO_EXPORT})")
        if s.dialogs == 0:
            found = ", ".join(f"{n} {t}" for t, n in s.other_chats.most_common())
            this = "these exports" if many else "this export"
            raise CollectError(
                f"{where}: no personal chats in {this} (found {found}); "
                f"twin learns from one-to-one chats with people: export again ({HOW_TO_EXPORT}), or export a "
                "one-to-one chat (its menu > Export chat history)"
            )
        if self.entries_in_personal_chats == 0:
            raise CollectError(
                f"{where}: {export} {'are' if many else 'is'} empty: {'their' if many else 'its'} "
                f"{s.dialogs} personal chat(s) hold no messages; export again ({HOW_TO_EXPORT})"
            )
        if s.total_messages == 0:  # nothing on disk for any chat: prepare would only say "run collect"
            reasons = "skipped: " + ", ".join(f"{n} {why}" for why, n in s.skipped.most_common())
            raise CollectError(
                f"{where}: nothing to import: none of the {self.entries_in_personal_chats} entries of "
                f"its {s.dialogs} personal chat(s) is a text message twin can learn from ({reasons}); "
                + _what_to_do_about(s.skipped)
            )

    # ---- one chat ----------------------------------------------------------------------------
    def _import_chat(self, chat: _Chat, entries: Iterable[Any], stream: JsonStream) -> None:
        self.chats_seen += 1
        if chat.type != PERSONAL_CHAT:
            service = chat.id in (SERVICE_NOTIFICATIONS_ID, SERVICE_NOTIFICATIONS_ID + USER_ID_SHIFT)
            kind = chat.type if isinstance(chat.type, str) and chat.type else UNKNOWN_TYPE
            self._leave_out(SERVICE_CHAT if service else kind, entries)
            return
        if not isinstance(chat.id, int) or isinstance(chat.id, bool) or not 0 < chat.id < MAX_ID:
            raise stream.error(
                f"not a Telegram export: a personal chat's 'id' should be a positive integer, got {chat.id!r}"
            )
        entries, scheme = self._sniff_scheme(entries)
        dialog_id = unshift(chat.id, scheme)
        if dialog_id == SERVICE_NOTIFICATIONS_ID:  # login codes: never the person's words
            self._leave_out(SERVICE_CHAT, entries)
            return
        name = chat.name if isinstance(chat.name, str) and chat.name else DELETED_ACCOUNT
        self.dialog_ids.add(dialog_id)
        self.you[
            f"{self.me_from} = {self.me}" if self.me is not None else "the sender who is not the partner"
        ] = None
        if self._bar is not None:
            self._bar.set_postfix_str(name[:24])
        last_id = self.store.resume(dialog_id, name)
        me = None if self.me is None else unshift(self.me, scheme)
        with self.store.rewrite(dialog_id, SOURCE) as writer:
            max_id = self._convert(dialog_id, name, me, last_id, entries, writer.add, stream)
            writer.commit(max_id)
        self.summary.new_messages += writer.added
        self._warn_about_an_old_copy(dialog_id, name)

    def _warn_about_an_old_copy(self, dialog_id: int, name: str) -> None:
        """Before twin read old exports' ids back, it filed their chats under user id + 2^32."""
        if dialog_id >= 1 << 31:  # not a user id of the old exports' days
            return
        old_copy = dialog_path(self.store.dir, dialog_id + USER_ID_SHIFT)
        if old_copy.exists():
            new_copy = dialog_path(self.store.dir, dialog_id).name
            log.warning(
                "%s: chat %r is also in %s, where an earlier import filed it under Telegram Desktop's old "
                "id (user id + 2^32); it now goes to %s: delete %s (after moving over any message missing "
                "from %s) so that prepare does not read the chat twice",
                self.store.dir, name, old_copy.name, new_copy, old_copy.name, new_copy,
            )  # fmt: skip

    def _leave_out(self, kind: str, entries: Iterable[Any]) -> None:
        self.summary.other_chats[kind] += 1
        for _ in entries:  # consume (and check) the stream
            pass

    def _sniff_scheme(self, entries: Iterable[Any]) -> tuple[Iterator[Any], str | None]:
        """The chat's id scheme, read off its first entry with a sender (the entries before it are held
        back and handed on); a chat without senders takes the scheme its export's other chats use."""
        rest = iter(entries)
        head: list[Any] = []
        for entry in rest:
            head.append(entry)
            if scheme := sender_scheme(entry):
                self.scheme = scheme
                return chain(head, rest), scheme
        return iter(head), self.scheme

    def _convert(
        self,
        dialog_id: int,
        name: str,
        me: int | None,
        last_id: int,
        entries: Iterable[Any],
        add: Any,
        stream: JsonStream,
    ) -> int:
        """The hot loop: filter and convert each entry, hand kept ones to `add`; returns the max id seen."""
        skipped = self.summary.skipped
        keep_forwarded = self.options.keep_forwarded
        since_ts = self.options.since_ts
        earliest, latest = TELEGRAM_LAUNCH.timestamp(), LAST_DATE.timestamp()
        future = self.now + FUTURE_SLACK_S
        others: set[int] = set()
        written = WrittenIds()  # to write a message an export lists twice only once
        mine = 0
        max_id = last_id
        index = -1
        for index, entry in enumerate(entries):  # noqa: B007 (index is used after the loop)
            if index & 4095 == 4095:
                self._tick()
            mid = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(mid, int) or isinstance(mid, bool) or not 0 < mid < MAX_ID:
                # Telegram's message ids are positive; a zero or negative one would also pass for
                # "already collected" (the resume cursor starts at 0) and vanish without a word
                raise stream.error(
                    f"not a Telegram export: message #{index + 1} of chat {dialog_id} has no positive "
                    f"integer 'id' (got {_shown(mid)}); the file is damaged or was edited: export again "
                    f"({HOW_TO_EXPORT}); the message ends just before"
                )
            if mid > max_id:
                max_id = mid
            if mid <= last_id:
                skipped["already collected"] += 1
                continue
            if entry.get("type") != "message":
                skipped["service or unsupported"] += 1
                continue
            if not keep_forwarded and "forwarded_from" in entry:
                skipped[FORWARDED] += 1
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
                    f"(got {_shown(entry.get('date_unixtime'))} and {_shown(entry.get('date'))}); the file "
                    f"is damaged or was edited: export again ({HOW_TO_EXPORT}); the message ends just before"
                )
            if not earliest <= ts <= latest:
                skipped[IMPLAUSIBLE_DATE] += 1
                continue
            if ts > future:
                self.summary.future_dated += 1
            if ts < since_ts:
                skipped[BEFORE_SINCE] += 1
                continue
            sender = user_id(entry.get("from_id"))
            if sender is None:
                skipped[UNKNOWN_SENDER] += 1
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
            if not written.add(mid):
                skipped["duplicate id"] += 1
                continue
            date = datetime.fromtimestamp(ts, UTC).isoformat()
            add(
                ts,
                RawMessage(id=mid, date=date, out=out, message=text, dialog_id=dialog_id, dialog_name=name),
            )
            mine += out
        self.entries_in_personal_chats += index + 1
        self.summary.new_mine += mine
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
