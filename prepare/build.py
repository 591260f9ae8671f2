"""Raw messages → conversations → turns → instruction records.

The per-message work is column operations on numpy/pandas (sorting, gap detection, run-length speaker
merging); Python loops run once per *turn* (join, scrub) and once per *record* (context), never per
message. Context is built with exactly `cap_turns(...)`, the function the server's
`Prompter.prompt_from_messages` uses, so a training prompt and a live prompt can never differ; a record
keeps those turns twice: rendered (`context`, twin-v1) and structured (`turns`, chat-template).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from common.scrub import PLACEHOLDER, Span, scrub_many_with_spans, scrub_secrets_with_spans

from .config import PrepareConfig
from .prompt import MAX_TURN_CHARS, Speaker, Turn, cap_turns, clean_text, clip_text, render_context
from .records import Record, is_blank

SKIP_REASONS: dict[str, str] = {
    "duplicate_message": "the same message (dialog id + message id) appeared again; the last copy was kept",
    "implausible_date": "dated before Telegram existed (August 2013; 1970: a zero timestamp) or over a year "
    "past this machine's clock (2100): no message's real date, and it would sit at the wrong end of its chat",
    "empty_message": "a message with nothing visible after cleaning (whitespace, invisible characters)",
    "reply_opens_conversation": "the person's turn opens a conversation, so there is nothing it replies to",
    "response_too_long": "the person's reply is longer than --max-response-chars (a paste, not a reply)",
    "response_only_placeholders": "the person's reply was empty once scrubbed: nothing but secrets",
}
"""Why an item was skipped: message-level reasons count messages, the others count reply turns."""

_SCRUB_CHUNK = 20_000

TELEGRAM_LAUNCH = datetime(2013, 8, 1, tzinfo=UTC)
"""No Telegram message is older (collect skips earlier dates the same way): an earlier one is a zero or
otherwise broken timestamp."""
FUTURE_SLACK_S = 366 * 86_400
"""A date this far past the machine's clock is broken (a clock can be off, but not by a year)."""
CLOCK_SKEW_S = 60
"""A message dated at most this many seconds before one with a lower id of its chat is put after it."""


@dataclass
class Built:
    """The records of one run, with the conversation each came from and what happened on the way."""

    records: list[Record]
    conversation: np.ndarray
    """Conversation number of each record (parallel to `records`): the unit of the train/val split."""
    counts: dict[str, int]
    skipped: Counter[str] = field(default_factory=Counter)
    scrubbed: Counter[str] = field(default_factory=Counter)
    scrub_report: list[dict[str, Any]] = field(default_factory=list)
    """Where each secret was replaced (kind and position, never the value); filled only when asked."""


def _ends(starts: np.ndarray, n: int) -> np.ndarray:
    """End (exclusive) of each run that begins at `starts`, in a sequence of length `n`."""
    return np.append(starts[1:], n) if len(starts) else starts


def _scrub_turns(texts: list[str], track: bool) -> tuple[list[str], Counter[str], list[list[Span]]]:
    out: list[str] = []
    total: Counter[str] = Counter()
    spans: list[list[Span]] = []
    with tqdm(total=len(texts), desc="scrubbing secrets", unit="turn", disable=None, leave=False) as bar:
        for lo in range(0, len(texts), _SCRUB_CHUNK):
            chunk, counts, found = scrub_many_with_spans(texts[lo : lo + _SCRUB_CHUNK], track=track)
            out += chunk
            total.update(counts)
            spans += found
            bar.update(len(chunk))
    return out, total, spans


def _turn_report(
    spans: list[list[Span]],
    texts: list[str],
    starts: list[int],
    ends: list[int],
    message_ids: list[int],
    dialogs: list[int],
    speakers: list[bool],
) -> list[dict[str, Any]]:
    """Each replaced span of a turn as a position in the raw messages it was joined from: the dialog's
    file, the message id and character offsets into that message's cleaned text (a span that runs on into
    the next message of the turn ends in `end_message_id`)."""
    rows: list[dict[str, Any]] = []
    for t, found in enumerate(spans):
        if not found:
            continue
        s, e = starts[t], ends[t]
        offsets = [0]  # where each message of the turn begins in the newline-joined turn text
        for k in range(s, e - 1):
            offsets.append(offsets[-1] + len(texts[k]) + 1)
        for a, b, kind in found:
            i = bisect_right(offsets, a) - 1
            j = bisect_right(offsets, b - 1) - 1
            rows.append(
                {
                    "kind": kind,
                    "file": f"{dialogs[s]}.jsonl",
                    "dialog_id": dialogs[s],
                    "speaker": "me" if speakers[s] else "partner",
                    "message_id": message_ids[s + i],
                    "start": a - offsets[i],
                    "end_message_id": message_ids[s + j],
                    "end": b - offsets[j],
                }
            )
    return rows


def _partner_names(
    dialog: np.ndarray,
    row: np.ndarray,
    names: pd.Series,
    scrubbed: Counter[str],
    report: list[dict[str, Any]] | None = None,
) -> dict[int, str]:
    """Each dialog's partner name: its latest display name, whitespace-normalised and scrubbed (a
    Telegram name can be a phone number; a name that was nothing but a secret, or blank letters such as
    "ㅤ", becomes "", which the prompt shows as a neutral default)."""
    last = np.flatnonzero(np.append(dialog[1:] != dialog[:-1], True)) if len(dialog) else dialog
    partners: dict[int, str] = {}
    for i, raw_name in zip(last.tolist(), names.iloc[row[last]].tolist(), strict=True):
        dialog_id = int(dialog[i])
        name, spans = scrub_secrets_with_spans(" ".join(raw_name.split()))
        scrubbed.update(kind for _, _, kind in spans)
        if report is not None:
            report += [
                {"kind": kind, "file": f"{dialog_id}.jsonl", "dialog_id": dialog_id, "field": "dialog_name",
                 "start": a, "end": b}
                for a, b, kind in spans
            ]  # fmt: skip
        partners[dialog_id] = "" if is_blank(PLACEHOLDER.sub("", name)) else name  # "ㅤ": an invisible name
    return partners


def clipped_turn(turn: Turn) -> Turn:
    """`turn` as a record keeps it: clipped as the prompt clips it (most turns are short: the same one)."""
    return turn if len(turn.text) <= MAX_TURN_CHARS else Turn(turn.speaker, clip_text(turn.text))


def plausible_dates(ts: np.ndarray, now: float | None = None) -> np.ndarray:
    """Which instants (µs since the epoch, UTC) can be a real message's: from Telegram's launch to a year
    past `now` (this machine's clock by default)."""
    now = time.time() if now is None else now
    earliest = int(TELEGRAM_LAUNCH.timestamp()) * 1_000_000
    latest = int(now + FUTURE_SLACK_S) * 1_000_000
    return (ts >= earliest) & (ts <= latest)


def conversation_instants(dialog: np.ndarray, ts: np.ndarray, msg_id: np.ndarray) -> np.ndarray:
    """The instant each message is placed at: its own, except for clock skew.

    Telegram numbers a chat's messages in the order its server received them. Where a chat's ids and
    dates disagree only by small steps back in time (a message dated at most `CLOCK_SKEW_S` before one
    with a lower id: a reply stamped by a clock a few seconds behind the sender's), the ids are right and
    the message counts as sent at the latest instant before it in id order, so it sorts after what it
    answers. A chat with a larger disagreement (a history imported into Telegram, another tool's ids) keeps
    its dates as they are: its ids say nothing about time."""
    if len(ts) == 0:
        return ts
    by_id = np.lexsort((msg_id, dialog))
    d, t = dialog[by_id], ts[by_id]
    latest = pd.Series(t).groupby(d, sort=False).cummax().to_numpy()  # the newest date so far, in id order
    # how far each message is dated before an earlier-numbered one of its chat (0: not at all)
    lag = np.zeros(len(t), dtype=np.int64)
    lag[1:] = np.where(d[1:] == d[:-1], np.maximum(latest[:-1] - t[1:], 0), 0)
    trusted = ~np.isin(d, d[lag > CLOCK_SKEW_S * 1_000_000])
    placed = ts.copy()
    placed[by_id[trusted]] = latest[trusted]  # the message's own date wherever nothing was skewed
    return placed


def build_records(
    messages: pd.DataFrame, config: PrepareConfig, report: bool = False, now: float | None = None
) -> Built:
    """Turn a frame of raw messages (as `load.load_messages` returns) into instruction records; with
    `report`, also say where each secret was replaced (`Built.scrub_report`). Dates past a year after
    `now` (seconds since the epoch; this machine's clock by default) are dropped as implausible."""
    skipped: Counter[str] = Counter()
    n_read = len(messages)

    # Re-exported messages: keep the last copy of each (dialog_id, id). lexsort is stable, so within a
    # run of equal keys the rows stay in file order and all but the run's last are duplicates.
    by_key = np.lexsort((messages["id"].to_numpy(), messages["dialog_id"].to_numpy()))
    d_sorted, i_sorted = messages["dialog_id"].to_numpy()[by_key], messages["id"].to_numpy()[by_key]
    duplicate = np.zeros(len(messages), dtype=bool)
    duplicate[by_key[:-1]] = (d_sorted[:-1] == d_sorted[1:]) & (i_sorted[:-1] == i_sorted[1:])
    skipped["duplicate_message"] = int(duplicate.sum())
    if duplicate.any():
        messages = messages[~duplicate]

    # 1970 (a zero timestamp), year 2100: no place in a chat's timeline is right for them.
    plausible = plausible_dates(messages["ts"].to_numpy(), now)
    skipped["implausible_date"] = int((~plausible).sum())
    cleaned = [clean_text(t) for t in messages["message"].tolist()]
    visible = np.fromiter((bool(t) for t in cleaned), dtype=bool, count=len(cleaned))
    skipped["empty_message"] = int((plausible & ~visible).sum())
    visible &= plausible

    dialog_all = messages["dialog_id"].to_numpy()
    ts = messages["ts"].to_numpy()[visible]
    dialog = dialog_all[visible]
    msg_id = messages["id"].to_numpy()[visible]
    out = messages["out"].to_numpy()[visible]

    # Chronological within each dialog; equal instants keep Telegram's id order, and so does a few
    # seconds' clock skew. `row` maps each kept, sorted message back to its row in `messages` (dates and
    # names are fetched only where needed).
    ts = conversation_instants(dialog, ts, msg_id)
    order = np.lexsort((msg_id, ts, dialog))
    ts, dialog, out = ts[order], dialog[order], out[order]
    row = np.flatnonzero(visible)[order]
    texts = [cleaned[i] for i in row.tolist()]
    del cleaned
    n = len(texts)

    # A new conversation starts at each dialog's first message and after every silence > gap (instants,
    # in microseconds: a gap of 1 day and 2 minutes is a gap).
    gap_us = int(round(config.gap_hours * 3600 * 1_000_000))
    new_conv = np.ones(n, dtype=bool)
    new_conv[1:] = (dialog[1:] != dialog[:-1]) | ((ts[1:] - ts[:-1]) > gap_us)
    # A new turn starts with each conversation and whenever the speaker changes.
    new_turn = new_conv.copy()
    new_turn[1:] |= out[1:] != out[:-1]

    starts = np.flatnonzero(new_turn)
    ends = _ends(starts, n)
    turn_texts = [
        texts[s] if e - s == 1 else "\n".join(texts[s:e])
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    turn_texts, scrubbed, turn_spans = _scrub_turns(turn_texts, track=report)
    scrub_report: list[dict[str, Any]] = []
    if report:
        message_ids = messages["id"].to_numpy()[row].tolist()
        scrub_report = _turn_report(
            turn_spans, texts, starts.tolist(), ends.tolist(), message_ids, dialog.tolist(), out.tolist()
        )
    del turn_spans
    partners = _partner_names(
        dialog, row, messages["dialog_name"], scrubbed, scrub_report if report else None
    )

    turn_out = out[starts].tolist()
    turn_dialog = dialog[starts].tolist()
    turn_date = messages["date"].iloc[row[starts]].tolist()
    conv_of_turn = np.cumsum(new_conv)[starts] - 1
    conv_starts = np.flatnonzero(new_conv[starts])
    conv_ends = _ends(conv_starts, len(starts))

    records: list[Record] = []
    record_conv: list[int] = []
    max_turns, max_chars = config.max_context_turns, config.max_context_chars
    speaker: dict[bool, Speaker] = {True: "me", False: "partner"}
    with tqdm(total=len(starts), desc="building records", unit="turn", disable=None, leave=False) as bar:
        for a, b in zip(conv_starts.tolist(), conv_ends.tolist(), strict=True):
            bar.update(b - a)
            if not any(turn_out[a:b]):
                continue
            partner = partners[turn_dialog[a]]
            turns = [Turn(speaker[o], t) for o, t in zip(turn_out[a:b], turn_texts[a:b], strict=True)]
            for k in range(b - a):
                if not turn_out[a + k]:
                    continue
                if k == 0:
                    skipped["reply_opens_conversation"] += 1
                    continue
                response = turn_texts[a + k]
                if len(response) > config.max_response_chars:
                    skipped["response_too_long"] += 1
                    continue
                if is_blank(PLACEHOLDER.sub("", response)):  # it would teach the twin to say nothing
                    skipped["response_only_placeholders"] += 1
                    continue
                # Turn k-1 is the partner's message; the context is what came before it. cap_turns only
                # looks at the last `max_turns` turns, so hand it just that tail (long chats stay linear).
                earlier = turns[max(0, k - 1 - max_turns) : k - 1] if max_turns > 0 else []
                kept = cap_turns(earlier, max_turns, max_chars, partner)
                records.append(
                    Record(
                        instruction=clip_text(turn_texts[a + k - 1]),
                        context=render_context(kept, partner),
                        response=response,
                        dialog_id=turn_dialog[a + k],
                        date=turn_date[a + k],
                        partner=partner,
                        turns=tuple(clipped_turn(t) for t in kept),
                    )
                )
                record_conv.append(int(conv_of_turn[a + k]))

    dialogs_with_replies = len(np.unique(dialog[out])) if n else 0
    counts = {
        "dialogs": int(len(np.unique(dialog_all))),
        "dialogs_without_replies": int(len(np.unique(dialog_all))) - dialogs_with_replies,
        "messages_read": n_read,
        "messages_kept": n,
        "my_messages": int(out.sum()),
        "conversations": len(conv_starts),
        "turns": len(starts),
        "unanswered_partner_turns": int(sum(1 for e in conv_ends.tolist() if e > 0 and not turn_out[e - 1])),
    }
    return Built(records, np.asarray(record_conv, dtype=np.int64), counts, +skipped, scrubbed, scrub_report)
