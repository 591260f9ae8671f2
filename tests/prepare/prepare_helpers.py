"""Small builders for raw chats and a plain-Python reference of the prepare rules, for prepare's tests."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prepare.prompt import Turn, cap_turns, clean_text, clip_text, render_context
from prepare.scrub import PLACEHOLDER, scrub_secrets

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


def reference_records(
    messages: list[dict[str, Any]],
    gap_hours: float = 24,
    max_turns: int = 8,
    max_chars: int = 1500,
    max_response_chars: int = 2000,
) -> list[tuple[dict[str, Any], int]]:
    """The issue's rules written the slow, obvious way: (record, conversation key) in output order.

    Per dialog: keep the last copy of each id; drop blank messages; sort by instant, then id; a silence
    of more than `gap_hours` (total seconds) starts a new conversation; merge runs of one speaker; each
    of the person's turns after a partner turn is a record, context = earlier turns of the conversation.
    """
    out: list[tuple[dict[str, Any], int]] = []
    dialogs: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for m in messages:
        dialogs[m["dialog_id"]][m["id"]] = m  # the last copy wins
    conv_key = 0
    for dialog_id in sorted(dialogs):
        kept = [m for m in dialogs[dialog_id].values() if clean_text(m["message"])]
        kept.sort(key=lambda m: (datetime.fromisoformat(m["date"]), m["id"]))
        if not kept:
            continue
        partner = scrub_secrets(" ".join(kept[-1]["dialog_name"].split()))
        conversations: list[list[dict[str, Any]]] = [[kept[0]]]
        for prev, cur in zip(kept, kept[1:], strict=False):
            gap = datetime.fromisoformat(cur["date"]) - datetime.fromisoformat(prev["date"])
            if gap.total_seconds() > gap_hours * 3600:
                conversations.append([cur])
            else:
                conversations[-1].append(cur)
        for conv in conversations:
            turns: list[tuple[bool, list[dict[str, Any]]]] = []
            for m in conv:
                if turns and turns[-1][0] == m["out"]:
                    turns[-1][1].append(m)
                else:
                    turns.append((m["out"], [m]))
            texts = [scrub_secrets("\n".join(clean_text(m["message"]) for m in ms)) for _, ms in turns]
            prompt_turns = [Turn("me" if o else "partner", t) for (o, _), t in zip(turns, texts, strict=True)]
            for k, (is_me, ms) in enumerate(turns):
                if not is_me or k == 0:
                    continue
                response = texts[k]
                if len(response) > max_response_chars or not PLACEHOLDER.sub("", response).strip():
                    continue
                context = render_context(
                    cap_turns(prompt_turns[: k - 1], max_turns, max_chars, partner), partner
                )
                record = {
                    "instruction": clip_text(texts[k - 1]),
                    "context": context,
                    "response": response,
                    "dialog_id": dialog_id,
                    "date": ms[0]["date"],
                    "partner": partner,
                }
                out.append((record, conv_key))
            conv_key += 1
    return out
