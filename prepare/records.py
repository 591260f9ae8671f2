"""The instruction record: what `prepare` writes to train.jsonl / val.jsonl and `finetune` reads.

One JSON object a line, these fields (documented in docs/data-format.md):
`{"instruction": str, "context": str, "response": str, "dialog_id": int, "date": str, "partner": str,
"turns": [{"speaker": "me" | "partner", "text": str}, ...]}`. `turns` is the context as structured turns
(what the chat-template prompt format renders); records written before it existed lack it and still
read (as `turns=None`): the twin-v1 format renders their `context`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from .jsonl import read_jsonl

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
STATS_FILE = "stats.json"
CONFIG_FILE = "prepare_config.json"

Speaker = Literal["me", "partner"]


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive messages of one speaker, newline-joined."""

    speaker: Speaker
    text: str


@dataclass(frozen=True)
class Exchange:
    """One past exchange: what the partner said, what the person replied (`prepare.memory` retrieves
    them into prompts)."""

    message: str
    reply: str


@dataclass(frozen=True, slots=True)
class Record:
    """One reply of the person, with what it answers and the conversation before it."""

    instruction: str
    """The partner's message the person replied to (one merged, scrubbed turn)."""
    context: str
    """Earlier turns of the same conversation, oldest first, rendered by `prompt.render_context`."""
    response: str
    """The person's reply (one merged, scrubbed turn): what the twin learns to write."""
    dialog_id: int
    """The chat it comes from (the partner's Telegram id)."""
    date: str
    """When the reply was sent: the raw ISO-8601 date (with its UTC offset) of its first message."""
    partner: str
    """The partner's display name, whitespace-normalised and scrubbed ("" when unknown)."""
    turns: tuple[Turn, ...] | None = None
    """The turns `context` renders (the same capped turns, oldest first, each clipped as the prompt
    clips it); None for a record written before prepare recorded them."""

    def to_dict(self) -> dict[str, Any]:
        """The record as its JSON object (`turns` left out when not recorded)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "turns"}
        if self.turns is not None:
            out["turns"] = [{"speaker": t.speaker, "text": t.text} for t in self.turns]
        return out


RECORD_FIELDS: dict[str, type] = {
    "instruction": str,
    "context": str,
    "response": str,
    "dialog_id": int,
    "date": str,
    "partner": str,
}
"""The fields every record has (`turns` is optional: see `Record.turns`)."""
SPEAKERS = ("me", "partner")


_BLANK = re.compile(
    r"[\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f]*"
)
"""Characters that show nothing: whitespace, control and format characters (zero-width, bidi marks, BOM),
variation selectors, and the blank letters chat apps let through as "empty" messages (U+3164 Hangul filler,
U+2800 braille blank, U+115F/U+1160/U+FFA0)."""


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing at all (empty, whitespace, invisible or blank-looking characters)."""
    return _BLANK.fullmatch(text) is not None


def parse_record(obj: Any, where: str) -> Record:
    """Validate one decoded line of train/val JSONL; `where` (`file:line`) goes into the error."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(RECORD_FIELDS)}")
    problems = []
    for name, typ in RECORD_FIELDS.items():
        value = obj.get(name)
        if name not in obj:
            problems.append(f"missing field {name!r}")
        elif typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"field {name!r} must be an integer")
        elif typ is not int and not isinstance(value, typ):
            problems.append(f"field {name!r} must be {typ.__name__}")
    turns = obj.get("turns")
    if turns is not None and not (
        isinstance(turns, list)
        and all(
            isinstance(t, dict) and t.get("speaker") in SPEAKERS and isinstance(t.get("text"), str)
            for t in turns
        )
    ):
        problems.append('field \'turns\' must be a list of {"speaker": "me" or "partner", "text": str}')
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}; re-run `make prepare`")
    parsed = None if turns is None else tuple(Turn(t["speaker"], t["text"]) for t in turns)
    return Record(**{name: obj[name] for name in RECORD_FIELDS}, turns=parsed)


def read_records(path: str | Path) -> list[Record]:
    """All records of a train/val JSONL file, validated; errors name the file and line, not its text.

    A UTF-8 BOM is skipped; a file in another encoding is named as such (`prepare.jsonl`). A record whose
    reply is empty (or shows nothing) would teach the twin to answer with nothing: prepare never writes
    one, so the file was edited or made by another tool, and reading it is an error that names the first
    such line and how many there are (all of them are counted first, so one fix covers them)."""
    path = Path(path)
    records = []
    empty: list[int] = []
    for number, obj in read_jsonl(path, fix="re-run `make prepare`", redo="re-run `make prepare`"):
        record = parse_record(obj, f"{path}:{number}")
        if is_blank(record.response):
            empty.append(number)
        records.append(record)
    if empty:
        more = f" (and {len(empty) - 1} more line{'s' if len(empty) > 2 else ''})" if len(empty) > 1 else ""
        raise ValueError(
            f"{path}:{empty[0]}: field 'response' is empty{more}: a record teaches the twin its reply, and "
            "an empty one teaches it to say nothing; delete those lines or re-run `make prepare`"
        )
    return records
