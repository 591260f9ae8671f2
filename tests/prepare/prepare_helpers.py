"""Small builders for raw chats and a plain-Python reference of the prepare rules, for prepare's tests."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from common.scrub import PLACEHOLDER, scrub_secrets
from prepare.prompt import Turn, cap_turns, clean_text, clip_text, render_context
from prepare.records import is_blank

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def msg(
    id: int,
    minutes: float,
    out: bool,
    text: str,
    dialog_id: int = 1,
    name: str = "Anna",
    tz_hours: float = 0,
) -> dict[str, Any]:
    """A raw message `minutes` after T0, written with a UTC offset of `tz_hours`."""
    tz = UTC if tz_hours == 0 else timezone(timedelta(hours=tz_hours))
    date = (T0 + timedelta(minutes=minutes)).astimezone(tz).isoformat()
    return {"id": id, "date": date, "out": out, "message": text, "dialog_id": dialog_id, "dialog_name": name}


def write_raw(raw: Path, messages: list[dict[str, Any]]) -> Path:
    """One `<dialog_id>.jsonl` per dialog, lines in the given order."""
    raw.mkdir(parents=True, exist_ok=True)
    by_dialog: dict[int, list[str]] = defaultdict(list)
    for m in messages:
        by_dialog[m["dialog_id"]].append(json.dumps(m, ensure_ascii=False))
    for dialog_id, lines in by_dialog.items():
        (raw / f"{dialog_id}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return raw


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plausible_date(date: str) -> bool:
    """From Telegram's launch (2013-08) to a year past this machine's clock."""
    return (
        datetime(2013, 8, 1, tzinfo=UTC)
        <= datetime.fromisoformat(date)
        <= datetime.now(UTC) + timedelta(days=366)
    )


def placed_instants(kept: list[dict[str, Any]], skew_s: float = 60) -> dict[int, datetime]:
    """Each message's instant by id: its date, or, when the chat's ids and dates never disagree by more
    than `skew_s`, the latest date among the chat's messages up to it in id order (clock skew)."""
    at = {m["id"]: datetime.fromisoformat(m["date"]) for m in kept}
    latest: dict[int, datetime] = {}
    newest: datetime | None = None
    for mid in sorted(at):
        if newest is not None and (newest - at[mid]).total_seconds() > skew_s:
            return at  # the ids say nothing about time here
        newest = at[mid] if newest is None else max(newest, at[mid])
        latest[mid] = newest
    return latest


@dataclass
class RefConversation:
    dialog_id: int
    partner: str
    turns: list[Turn]
    """Merged, scrubbed turns of the conversation, oldest first."""
    dates: list[str]
    """Raw date of each turn's first message."""


def reference_conversations(messages: list[dict[str, Any]], gap_hours: float = 24) -> list[RefConversation]:
    """The issue's rules written the slow, obvious way, per dialog: keep the last copy of each id; drop
    blank messages and impossible dates; sort by instant (clock skew put right by id), then id; a silence
    of more than `gap_hours` (total seconds) starts a new conversation; runs of one speaker merge into a
    turn (newline-joined, then scrubbed)."""
    dialogs: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for m in messages:
        dialogs[m["dialog_id"]][m["id"]] = m  # the last copy wins
    conversations: list[RefConversation] = []
    for dialog_id in sorted(dialogs):
        kept = [
            m for m in dialogs[dialog_id].values() if clean_text(m["message"]) and plausible_date(m["date"])
        ]
        at = placed_instants(kept)
        kept.sort(key=lambda m: (at[m["id"]], m["id"]))
        if not kept:
            continue
        partner = scrub_secrets(" ".join(kept[-1]["dialog_name"].split()))
        partner = "" if is_blank(PLACEHOLDER.sub("", partner)) else partner
        groups: list[list[dict[str, Any]]] = [[kept[0]]]
        for prev, cur in zip(kept, kept[1:], strict=False):
            gap = at[cur["id"]] - at[prev["id"]]
            if gap.total_seconds() > gap_hours * 3600:
                groups.append([cur])
            else:
                groups[-1].append(cur)
        for group in groups:
            runs: list[list[dict[str, Any]]] = []
            for m in group:
                if runs and runs[-1][0]["out"] == m["out"]:
                    runs[-1].append(m)
                else:
                    runs.append([m])
            turns = [
                Turn(
                    "me" if run[0]["out"] else "partner",
                    scrub_secrets("\n".join(clean_text(m["message"]) for m in run)),
                )
                for run in runs
            ]
            conversations.append(RefConversation(dialog_id, partner, turns, [run[0]["date"] for run in runs]))
    return conversations


def reference_records(
    messages: list[dict[str, Any]],
    gap_hours: float = 24,
    max_turns: int = 8,
    max_chars: int = 1500,
    max_response_chars: int = 2000,
) -> list[tuple[dict[str, Any], int]]:
    """(record, conversation number) in output order: each of the person's turns after a partner turn,
    with the uncapped earlier turns handed to `cap_turns`."""
    out: list[tuple[dict[str, Any], int]] = []
    for number, conv in enumerate(reference_conversations(messages, gap_hours)):
        for k, turn in enumerate(conv.turns):
            if turn.speaker != "me" or k == 0:
                continue
            if len(turn.text) > max_response_chars or is_blank(PLACEHOLDER.sub("", turn.text)):
                continue
            kept = cap_turns(conv.turns[: k - 1], max_turns, max_chars, conv.partner)
            context = render_context(kept, conv.partner)
            record = {
                "instruction": clip_text(conv.turns[k - 1].text),
                "context": context,
                "response": turn.text,
                "dialog_id": conv.dialog_id,
                "date": conv.dates[k],
                "partner": conv.partner,
                "turns": [{"speaker": t.speaker, "text": clip_text(t.text)} for t in kept],
            }
            out.append((record, number))
    return out
