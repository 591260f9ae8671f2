"""Invariants over random chats (hypothesis; clock skew and impossible dates included): the vectorised
builder equals a plain-Python reference of the issue's rules; no context crosses a gap; every kept reply
is in exactly one record; train and val share no conversation; the split is deterministic."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prepare_helpers import reference_conversations, reference_records, write_raw

from common.scrub import PLACEHOLDER
from prepare.build import build_records
from prepare.config import PrepareConfig
from prepare.load import load_messages
from prepare.prompt import clip_text, render_turn
from prepare.split import split_conversations

T0 = datetime(2024, 3, 30, 22, 0, tzinfo=UTC)
TEXTS = st.sampled_from(["hi", "ok", "see you at 10:30", "  ", "😂", "пока", "a\nb", "", "yes!", "room 1204"])
OFFSETS = st.sampled_from([0, 3, -5, 5.5, 1, 2])  # hours; a dialog switching offsets mimics DST and travel
SKEWS = st.sampled_from([0] * 8 + [-1, -30, -60, -61, -3600])  # seconds a clock is behind; ids keep order
BROKEN = st.sampled_from([0] * 4 + [1, 5])  # the id of a message dated 1970 (0: none)
GAPS = st.one_of(
    st.integers(0, 600),  # seconds within a burst (0: same instant)
    st.sampled_from([86_400, 86_401, 86_400 + 120, 86_399, 3 * 3600, 30 * 3600]),  # around the 24 h gap
    st.integers(0, 10 * 86_400),
)


@st.composite
def chats(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages = []
    for dialog_id in range(1, draw(st.integers(1, 3)) + 1):
        t = T0 + timedelta(seconds=draw(st.integers(0, 86_400)))
        n = draw(st.integers(1, 25))
        broken = draw(BROKEN)
        for i in range(1, n + 1):
            t += timedelta(seconds=draw(GAPS))
            tz = timezone(timedelta(hours=draw(OFFSETS)))
            date = (t + timedelta(seconds=draw(SKEWS))).astimezone(tz).isoformat()
            messages.append(
                {
                    "id": i,
                    "date": "1970-01-01T00:00:00+00:00" if i == broken else date,
                    "out": draw(st.booleans()),
                    "message": draw(TEXTS),
                    "dialog_id": dialog_id,
                    "dialog_name": draw(st.sampled_from(["Anna", " Boris  B ", ""])),
                }
            )
    if draw(st.booleans()):  # a re-exported duplicate with new text
        dup = dict(draw(st.sampled_from(messages)))
        messages.append({**dup, "message": "edited"})
    return draw(st.permutations(messages))  # lines in any order


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chats(), st.sampled_from([24, 1, 0.5]), st.integers(0, 4), st.sampled_from([40, 1500]))
def test_records_follow_the_rules(
    messages: list[dict[str, Any]], gap_hours: float, max_turns: int, max_chars: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = write_raw(Path(tmp) / "raw", messages)
        config = PrepareConfig(
            raw=raw,
            out=Path(tmp) / "out",
            gap_hours=gap_hours,
            max_context_turns=max_turns,
            max_context_chars=max_chars,
        )
        built = build_records(load_messages(raw), config)

    # The vectorised builder gives exactly what the slow reference of the rules gives.
    expected = reference_records(messages, gap_hours, max_turns, max_chars)
    assert [r.to_dict() for r in built.records] == [r for r, _ in expected]

    # Every kept reply of the person appears in exactly one record (same order: dialog, then time).
    conversations = reference_conversations(messages, gap_hours)
    replies = [
        (c, k)
        for c in conversations
        for k, t in enumerate(c.turns)
        if t.speaker == "me" and k > 0 and PLACEHOLDER.sub("", t.text).strip()
    ]
    assert len(built.records) == len(replies)
    for record, (conv, k) in zip(built.records, replies, strict=True):
        assert (record.dialog_id, record.date, record.response) == (
            conv.dialog_id,
            conv.dates[k],
            conv.turns[k].text,
        )
        assert record.instruction == clip_text(conv.turns[k - 1].text)
        # No context crosses a gap: it is a run of the turns right before the instruction, all from the
        # reply's own conversation.
        lines = [render_turn(t, conv.partner) for t in conv.turns[: k - 1]]
        assert any(record.context == "\n".join(lines[j:]) for j in range(len(lines) + 1))

    # Every other turn of the person is a counted skip.
    my_turns = sum(t.speaker == "me" for c in conversations for t in c.turns)
    skips = ("reply_opens_conversation", "response_too_long", "response_only_placeholders")
    assert len(built.records) + sum(built.skipped[s] for s in skips) == my_turns

    # Records share a conversation number exactly when they share a conversation (the unit of the split).
    conv_index = {id(c): n for n, c in enumerate(conversations)}
    pairs = {(int(n), conv_index[id(c)]) for n, (c, _) in zip(built.conversation, replies, strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=200).map(sorted),
    st.floats(0, 0.99),
    st.integers(0, 2**32),
)
def test_split_shares_no_conversation_and_is_deterministic(
    conversation: list[int], fraction: float, seed: int
) -> None:
    conv = np.asarray(conversation)
    is_val = split_conversations(conv, fraction, seed)
    assert not set(conv[is_val].tolist()) & set(conv[~is_val].tolist())
    assert np.array_equal(is_val, split_conversations(conv, fraction, seed))
    n = len(set(conversation))
    n_val = len(set(conv[is_val].tolist()))
    if n >= 2 and fraction > 0:
        assert 1 <= n_val <= n - 1  # never all: there must be something to train on
        assert abs(n_val - n * fraction) <= 1 or n_val in (1, n - 1)
    else:
        assert n_val == 0
