"""What the person did with each twin draft: the feedback file `reply` writes and `prepare` reads (its
format lives here, with the other records prepare reads and writes).

One JSON object a line (owner-only, documented in docs/reply.md):
`{"version": 1, "source": "reply", "outcome": "unchanged" | "edited" | "replaced" | "discarded" |
"superseded", "dialog_id": int, "partner": str, "date": str, "instruction": str, "turns": [{"speaker",
"text"}, ...], "draft": str, "response": str | null, "similarity": float}`.

`source: "reply"` is the flag that marks a record as learned from an approval. `response` is what the
person finally sent (their burst of messages, newline-joined as prepare merges a turn); it is null when
nothing was sent (the draft was cleared, or a newer draft replaced it). The sent ones are training records:
the person's own words in answer to `instruction` after `turns` — an edited draft is the best label there
is. This module imports nothing heavy: `prepare` reads the file through it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Literal

from common.files import make_private_dir, open_private
from prepare.jsonl import read_jsonl
from prepare.prompt import clean_text
from prepare.records import SPEAKERS, Turn

VERSION = 1
SOURCE = "reply"
Outcome = Literal["unchanged", "edited", "replaced", "discarded", "superseded"]
SENT: tuple[Outcome, ...] = ("unchanged", "edited", "replaced")
OUTCOMES: tuple[Outcome, ...] = (*SENT, "discarded", "superseded")
EDITED_SIMILARITY = 0.5
"""A sent reply this similar to the draft (difflib's ratio) was an edit of it; less: a replacement."""


@dataclass(frozen=True)
class Feedback:
    """One twin draft and what became of it."""

    outcome: Outcome
    dialog_id: int
    """The chat (the partner's Telegram user id)."""
    partner: str
    date: str
    """ISO-8601 with offset: when the person's reply was sent (for unsent drafts: when it was dropped)."""
    instruction: str
    """The partner's message (turn) the draft answered."""
    turns: tuple[Turn, ...]
    """The conversation before it, oldest first (prepare caps it as it caps its own records)."""
    draft: str
    response: str | None
    """What the person sent (None: nothing)."""
    similarity: float = 0.0
    version: int = VERSION
    source: str = SOURCE
    """The flag: this record was learned from an approval in `reply`."""

    def to_json(self) -> str:
        obj = asdict(self)
        obj["turns"] = [{"speaker": t.speaker, "text": t.text} for t in self.turns]
        return json.dumps(obj, ensure_ascii=False)


@dataclass
class _Check:
    where: str
    problems: list[str] = field(default_factory=list)


def parse_feedback(obj: Any, where: str) -> Feedback:
    """Validate one decoded line; errors name `where` (file:line) and fields, never the text."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object (a reply feedback record)")
    check = _Check(where)
    for name, typ in (("dialog_id", int), ("partner", str), ("date", str), ("instruction", str),
                      ("draft", str), ("version", int)):  # fmt: skip
        value = obj.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            check.problems.append(f"field {name!r} must be {typ.__name__}")
    if obj.get("outcome") not in OUTCOMES:
        check.problems.append(f"field 'outcome' must be one of {', '.join(OUTCOMES)}")
    response = obj.get("response")
    if response is not None and not isinstance(response, str):
        check.problems.append("field 'response' must be a string or null")
    turns = obj.get("turns")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and t.get("speaker") in SPEAKERS and isinstance(t.get("text"), str) for t in turns
    ):
        check.problems.append('field \'turns\' must be a list of {"speaker": "me" or "partner", "text": str}')
    if obj.get("version") not in (None, VERSION) and isinstance(obj.get("version"), int):
        check.problems.append(f"version {obj['version']} is not {VERSION}: written by another twin version")
    if check.problems:
        raise ValueError(f"{where}: {'; '.join(check.problems)}")
    similarity = obj.get("similarity", 0.0)
    return Feedback(
        outcome=obj["outcome"],
        dialog_id=obj["dialog_id"],
        partner=obj["partner"],
        date=obj["date"],
        instruction=obj["instruction"],
        turns=tuple(Turn(t["speaker"], t["text"]) for t in turns),  # type: ignore[union-attr]
        draft=obj["draft"],
        response=response,
        similarity=float(similarity) if isinstance(similarity, int | float) else 0.0,
    )


def read_feedback(path: str | Path) -> list[Feedback]:
    """Every record of a feedback file (none if it does not exist); a bad line is a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    return [
        parse_feedback(obj, f"{path}:{number}") for number, obj in read_jsonl(path, fix="delete that line")
    ]


def append_feedback(path: str | Path, record: Feedback) -> None:
    """Add one record; the folder is created 0700 and the file 0600."""
    path = Path(path)
    make_private_dir(path.parent)
    with open_private(path, "a") as f:
        f.write(record.to_json() + "\n")
        f.flush()


def normalize(text: str) -> str:
    """A reply compared line by line: cleaned as prepare cleans, blank lines and edge spaces ignored."""
    lines = (line.strip() for line in clean_text(text).split("\n"))
    return "\n".join(line for line in lines if line)


def classify(draft: str, sent: str) -> tuple[Outcome, float]:
    """How the sent text relates to the draft: unchanged, edited (similar) or replaced; and the similarity."""
    a, b = normalize(draft), normalize(sent)
    if a == b:
        return "unchanged", 1.0
    ratio = SequenceMatcher(None, a, b, autojunk=False).ratio()
    return ("edited" if ratio >= EDITED_SIMILARITY else "replaced"), round(ratio, 3)


def draft_stats(path: str | Path) -> dict[str, Any]:
    """How drafts fared: counts per outcome, and how often a draft was sent unchanged — of all drafts and
    of the drafts that led to a reply."""
    counts = Counter(r.outcome for r in read_feedback(path))
    drafts = sum(counts.values())
    sent = sum(counts[o] for o in SENT)
    return {
        "drafts": drafts,
        "sent": sent,
        **{outcome: counts[outcome] for outcome in OUTCOMES},
        "unchanged_share": round(counts["unchanged"] / drafts, 3) if drafts else None,
        "unchanged_share_of_sent": round(counts["unchanged"] / sent, 3) if sent else None,
    }
