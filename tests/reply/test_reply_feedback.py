"""The feedback file: outcomes, its statistics, and its records flowing through `prepare` into train.jsonl."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collect.records import RawMessage
from prepare.__main__ import cli as prepare_cli
from prepare.feedback import Feedback, append_feedback, classify, draft_stats, read_feedback
from prepare.records import Turn, read_records
from reply.cli import main as reply_main

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def write_raw(raw: Path, dialog_id: int = 7, name: str = "Anna") -> None:
    """One chat of 4 exchanges: the partner asks, the person answers."""
    raw.mkdir(parents=True)
    lines = []
    for i in range(8):
        out = i % 2 == 1
        text = f"my answer {i}" if out else f"question {i}?"
        date = (T0 + timedelta(minutes=i)).isoformat()
        lines.append(RawMessage(i + 1, date, out, text, dialog_id, name).to_json())
    (raw / f"{dialog_id}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def feedback(outcome: str, response: str | None, **kw: object) -> Feedback:
    values: dict = {
        "outcome": outcome,
        "dialog_id": 7,
        "partner": "Anna",
        "date": "2024-03-02T10:00:00+00:00",
        "instruction": "dinner tonight?",
        "turns": (Turn("partner", "hey"), Turn("me", "hi!")),
        "draft": "sure, at 8",
        "response": response,
        **kw,
    }
    return Feedback(**values)


def test_classify_unchanged_edited_replaced() -> None:
    assert classify("omw\n5 min", "  omw \n\n5 min ") == ("unchanged", 1.0)
    outcome, similarity = classify("sure, see you at 8", "sure, see you at 9!")
    assert outcome == "edited" and 0.5 <= similarity < 1
    assert classify("sure, see you at 8", "can't tonight, sorry")[0] == "replaced"


def test_feedback_records_flow_through_prepare_into_train(tmp_path: Path) -> None:
    raw, out, path = tmp_path / "raw", tmp_path / "prepared", tmp_path / "feedback" / "feedback.jsonl"
    write_raw(raw)
    append_feedback(path, feedback("edited", "sure, at 9\nbring wine"))
    append_feedback(path, feedback("unchanged", "sure, at 8", instruction="and tomorrow?"))
    append_feedback(path, feedback("replaced", "my card is 4111 1111 1111 1111", instruction="pay?"))
    append_feedback(path, feedback("discarded", None))  # nothing sent: no record
    append_feedback(path, feedback("unchanged", "my answer 3"))  # already in the raw chats: no twice

    assert prepare_cli(["--raw", str(raw), "--out", str(out), "--val-fraction", "0",
                        "--feedback", str(path)]) == 0  # fmt: skip
    train = read_records(out / "train.jsonl")
    learned = [r for r in train if r.date.startswith("2024-03-02")]
    assert [r.response for r in learned] == ["sure, at 9\nbring wine", "sure, at 8", "my card is <CARD>"]
    first = learned[0]
    assert first.instruction == "dinner tonight?" and first.partner == "Anna" and first.dialog_id == 7
    assert first.turns == (Turn("partner", "hey"), Turn("me", "hi!"))
    assert first.context == "Anna: hey\nMe: hi!"  # rendered by training's own prompt module
    stats = json.loads((out / "stats.json").read_text())
    assert stats["feedback"] == {"file": str(path), "records": 3, "not_sent": 1, "duplicates": 1,
                                 "skipped": 0, "edited": 1, "unchanged": 1, "replaced": 1}  # fmt: skip
    assert stats["train_records"] == 4 + 3 and stats["scrubbed"]["CARD"] == 1

    assert prepare_cli(["--raw", str(raw), "--out", str(out), "--feedback", "none"]) == 0
    assert len(read_records(out / "train.jsonl")) + len(read_records(out / "val.jsonl")) == 4


def test_prepare_names_a_bad_feedback_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, path = tmp_path / "raw", tmp_path / "feedback.jsonl"
    write_raw(raw)
    path.write_text('{"outcome": "edited", "response": "secret words"}\n', encoding="utf-8")
    assert prepare_cli(["--raw", str(raw), "--out", str(tmp_path / "out"), "--feedback", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1" in err and "--feedback none" in err and "secret words" not in err


def test_stats_count_how_often_drafts_were_sent_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "feedback.jsonl"
    assert draft_stats(path)["drafts"] == 0 and read_feedback(path) == []
    for outcome, response in [("unchanged", "a"), ("unchanged", "b"), ("edited", "c"), ("discarded", None)]:
        append_feedback(path, feedback(outcome, response))
    stats = draft_stats(path)
    assert stats["drafts"] == 4 and stats["sent"] == 3 and stats["unchanged"] == 2
    assert stats["unchanged_share"] == 0.5 and stats["unchanged_share_of_sent"] == 0.667
    assert reply_main(["stats", "--feedback", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "unchanged share" in printed and "50%" in printed
