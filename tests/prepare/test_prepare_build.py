"""Conversations, turns and records: one test (or two) per rule of the issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prepare_helpers import msg, write_raw

from prepare.build import build_records
from prepare.config import PrepareConfig
from prepare.load import load_messages
from prepare.records import Record


def build(
    tmp_path: Path, messages: list[dict[str, Any]], **config: Any
) -> tuple[list[Record], dict[str, Any]]:
    raw = write_raw(tmp_path / "raw", messages)
    built = build_records(load_messages(raw), PrepareConfig(raw=raw, out=tmp_path / "out", **config))
    return built.records, {"skipped": built.skipped, "scrubbed": built.scrubbed, **built.counts}


def test_reply_becomes_a_record_with_labelled_context(tmp_path: Path) -> None:
    records, _ = build(
        tmp_path,
        [
            msg(1, 0, False, "hi"),
            msg(2, 1, True, "hey"),
            msg(3, 2, False, "dinner at 7?"),
            msg(4, 3, True, "sure"),
        ],
    )
    assert [(r.instruction, r.context, r.response) for r in records] == [
        ("hi", "", "hey"),
        ("dinner at 7?", "Anna: hi\nMe: hey", "sure"),
    ]
    assert records[1].dialog_id == 1 and records[1].partner == "Anna"
    assert records[1].date == "2024-05-01T09:03:00+00:00"


def test_consecutive_messages_of_one_sender_merge_newline_joined(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "hi"),
            msg(2, 0.5, False, "are you there?"),
            msg(3, 1, True, "yes"),
            msg(4, 1.2, True, "  just woke up  "),
        ],
    )
    assert [(r.instruction, r.response) for r in records] == [("hi\nare you there?", "yes\njust woke up")]
    assert records[0].date == "2024-05-01T09:01:00+00:00"  # the reply's first message
    assert stats["turns"] == 2


def test_gap_longer_than_gap_hours_starts_a_new_conversation(tmp_path: Path) -> None:
    day = 24 * 60
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "first"),
            msg(2, 1, True, "reply one"),
            msg(3, 1 + day + 2, False, "a day and two minutes later"),  # > 24 h: new conversation
            msg(4, 2 + day + 2, True, "reply two"),
        ],
    )
    assert [r.context for r in records] == ["", ""]
    assert stats["conversations"] == 2


def test_gap_of_exactly_gap_hours_or_less_stays_in_the_conversation(tmp_path: Path) -> None:
    day = 24 * 60
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "first"),
            msg(2, 1, True, "reply one"),
            msg(3, 1 + day, False, "exactly a day later"),
            msg(4, 2 + day, True, "reply two"),
        ],
    )
    assert records[1].context == "Anna: first\nMe: reply one"
    assert stats["conversations"] == 1


def test_gap_hours_setting(tmp_path: Path) -> None:
    messages = [msg(1, 0, False, "a"), msg(2, 1, True, "b"), msg(3, 120, False, "c"), msg(4, 121, True, "d")]
    one_hour, _ = build(tmp_path / "1", messages, gap_hours=1)
    three_hours, _ = build(tmp_path / "3", messages, gap_hours=3)
    assert one_hour[1].context == "" and three_hours[1].context == "Anna: a\nMe: b"


def test_instants_not_wall_clock_decide_order_and_gaps(tmp_path: Path) -> None:
    # Written in different UTC offsets (travel, DST): by wall clock the reply would come first and the
    # gap would look like 7 hours; as instants it comes a minute after, in the same conversation.
    records, stats = build(
        tmp_path,
        [
            msg(2, 1, True, "reply", tz_hours=-5),  # 04:01-05:00 == 09:01Z
            msg(1, 0, False, "question", tz_hours=3),  # 12:00+03:00 == 09:00Z
            msg(4, 60 * 23, True, "next day reply", tz_hours=3),
            msg(3, 60 * 23 - 1, False, "next day question", tz_hours=-4),
        ],
    )
    assert [(r.instruction, r.response) for r in records] == [
        ("question", "reply"),
        ("next day question", "next day reply"),
    ]
    assert records[1].context == "Anna: question\nMe: reply"
    assert stats["conversations"] == 1


def test_equal_timestamps_keep_message_id_order(tmp_path: Path) -> None:
    records, _ = build(
        tmp_path,
        [msg(3, 0, True, "reply"), msg(2, 0, False, "question"), msg(1, 0, False, "hello")],
    )
    assert [(r.instruction, r.response) for r in records] == [("hello\nquestion", "reply")]


def test_a_reply_that_opens_a_conversation_is_skipped_and_counted(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path, [msg(1, 0, True, "hey, you up?"), msg(2, 1, False, "yes"), msg(3, 2, True, "ok")]
    )
    assert [(r.instruction, r.context, r.response) for r in records] == [("yes", "Me: hey, you up?", "ok")]
    assert stats["skipped"]["reply_opens_conversation"] == 1


def test_blank_messages_are_dropped_and_counted(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "hi"),
            msg(2, 1, True, " \n\t "),  # whitespace only: not a reply
            msg(3, 2, False, "\u200b"),  # zero-width space only
            msg(4, 3, False, "hello?"),
            msg(5, 4, True, "😂"),  # emoji-only is a real reply
        ],
    )
    assert [(r.instruction, r.response) for r in records] == [("hi\nhello?", "😂")]
    assert stats["skipped"]["empty_message"] == 2


def test_duplicate_messages_keep_the_last_copy(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path, [msg(1, 0, False, "hi"), msg(2, 1, True, "old text"), msg(2, 1, True, "edited text")]
    )
    assert [r.response for r in records] == ["edited text"]
    assert stats["skipped"]["duplicate_message"] == 1


def test_context_is_capped_to_the_most_recent_turns(tmp_path: Path) -> None:
    messages = [msg(i, i, i % 2 == 1, f"turn {i}") for i in range(12)]
    records, _ = build(tmp_path / "a", messages, max_context_turns=3)
    last = records[-1]
    assert last.instruction == "turn 10" and last.response == "turn 11"
    assert last.context == "Me: turn 7\nAnna: turn 8\nMe: turn 9"
    by_chars, _ = build(tmp_path / "b", messages, max_context_chars=len("Anna: turn 8\nMe: turn 9"))
    assert by_chars[-1].context == "Anna: turn 8\nMe: turn 9"
    none, _ = build(tmp_path / "c", messages, max_context_turns=0)
    assert {r.context for r in none} == {""}


def test_long_pastes(tmp_path: Path) -> None:
    paste = "lorem ipsum " * 400
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, paste),
            msg(2, 1, True, "too long, didn't read"),
            msg(3, 2, False, "ok"),
            msg(4, 3, True, paste),  # the person pasting an article is not their voice
        ],
    )
    assert len(records) == 1
    instruction = records[0].instruction
    assert len(instruction) <= 1000 and " […] " in instruction  # clipped in its middle
    assert instruction.startswith("lorem ipsum") and instruction.endswith("lorem ipsum")
    assert stats["skipped"]["response_too_long"] == 1


def test_secrets_are_scrubbed_from_every_field(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "what's the wifi password?", name="+7 912 345-67-89"),
            msg(2, 1, True, "пароль от вайфая: Qwerty123", name="+7 912 345-67-89"),
            msg(3, 2, False, "and your email?", name="+7 912 345-67-89"),
            msg(4, 3, True, "ivan@example.com", name="+7 912 345-67-89"),  # nothing left but a placeholder
            msg(5, 4, False, "card?", name="+7 912 345-67-89"),
            msg(6, 5, True, "4111 1111 1111 1111 — don't tell anyone", name="+7 912 345-67-89"),
        ],
    )
    assert [r.response for r in records] == ["пароль от вайфая: <PASSWORD>", "<CARD> — don't tell anyone"]
    assert records[1].context.splitlines() == [
        "Friend: what's the wifi password?",
        "Me: пароль от вайфая: <PASSWORD>",
        "Friend: and your email?",
        "Me: <EMAIL>",
    ]
    assert {r.partner for r in records} == {""}  # the name was a phone number: the prompt says "Friend"
    assert stats["skipped"]["response_only_placeholders"] == 1
    assert stats["scrubbed"]["PASSWORD"] == 1 and stats["scrubbed"]["CARD"] == 1


def test_a_secret_split_over_two_messages_is_scrubbed_once_merged(tmp_path: Path) -> None:
    records, _ = build(
        tmp_path,
        [msg(1, 0, False, "password?"), msg(2, 1, True, "my password is"), msg(3, 1.1, True, "hunter2")],
    )
    assert records[0].response == "my password is\n<PASSWORD>"


def test_partner_name_is_whitespace_normalised(tmp_path: Path) -> None:
    records, _ = build(
        tmp_path, [msg(1, 0, False, "hi", name="  Dr.\n Who "), msg(2, 1, True, "hey", name="  Dr.\n Who ")]
    )
    assert records[0].partner == "Dr. Who"


def test_dialogs_are_kept_apart(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "from anna", dialog_id=1, name="Anna"),
            msg(1, 1, False, "from boris", dialog_id=2, name="Boris"),
            msg(2, 2, True, "to anna", dialog_id=1, name="Anna"),
            msg(2, 3, True, "to boris", dialog_id=2, name="Boris"),
            msg(1, 0, False, "nobody answers me", dialog_id=3, name="Carol"),
        ],
    )
    assert [(r.dialog_id, r.partner, r.instruction, r.response) for r in records] == [
        (1, "Anna", "from anna", "to anna"),
        (2, "Boris", "from boris", "to boris"),
    ]
    assert stats["dialogs"] == 3 and stats["dialogs_without_replies"] == 1


@pytest.mark.parametrize("max_turns", [0, 1, 2, 8])
def test_long_conversation_context_matches_the_uncapped_reference(tmp_path: Path, max_turns: int) -> None:
    from prepare_helpers import reference_records

    messages = [msg(i, i, (i * 7) % 3 == 0, f"message number {i} " * (i % 5 + 1)) for i in range(60)]
    records, _ = build(tmp_path, messages, max_context_turns=max_turns, max_context_chars=400)
    expected = reference_records(messages, max_turns=max_turns, max_chars=400)
    assert [r.to_dict() for r in records] == [r for r, _ in expected]
