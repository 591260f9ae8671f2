"""`python -m prepare`: outputs, permissions, stats, the summary, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prepare_helpers import msg, read_jsonl, write_raw

from common.scrub import KINDS
from prepare.__main__ import cli
from prepare.config import PrepareConfig
from prepare.records import RECORD_FIELDS, Record, read_records

ROOT = Path(__file__).resolve().parents[2]


def chat(n_conversations: int = 12) -> list[dict]:
    """Conversations a day apart, each: partner asks, the person answers twice, one with a secret."""
    messages = []
    for c in range(n_conversations):
        t = c * 60 * 30  # 30 hours apart: each is its own conversation
        messages += [
            msg(4 * c + 1, t, False, f"question {c}?"),
            msg(4 * c + 2, t + 1, True, f"answer {c}"),
            msg(4 * c + 3, t + 2, False, "and your email?"),
            msg(4 * c + 4, t + 3, True, f"it's me{c}@example.com"),
        ]
    return messages


def test_run_writes_records_stats_and_config_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_raw(tmp_path / "raw", chat())
    out = tmp_path / "data" / "prepared"
    assert cli(["--raw", str(raw), "--out", str(out), "--val-fraction", "0.25", "--seed", "7"]) == 0

    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("train.jsonl", "val.jsonl", "stats.json", "prepare_config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    train, val = read_records(out / "train.jsonl"), read_records(out / "val.jsonl")
    assert len(train) == 18 and len(val) == 6  # 3 of 12 conversations, 2 records each
    assert all(isinstance(r, Record) for r in train + val)
    assert list(read_jsonl(out / "train.jsonl")[0]) == [*RECORD_FIELDS, "turns"]
    assert not {r.dialog_id for r in val} - {1}
    assert not any("@example.com" in r.response for r in train + val)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == 24 and stats["train_records"] == 18 and stats["val_records"] == 6
    assert (
        stats["conversations"] == 12 and stats["train_conversations"] == 9 and stats["val_conversations"] == 3
    )
    assert stats["scrubbed"]["EMAIL"] == 12 and set(stats["scrubbed"]) == set(KINDS)
    assert stats["skipped"]["reply_opens_conversation"] == 0
    assert set(stats["length_chars"]) == {"instruction", "context", "response"}
    assert set(stats["length_chars"]["response"]) == {"p50", "p90", "p99", "max"}
    config = json.loads((out / "prepare_config.json").read_text())
    assert config["val_fraction"] == 0.25 and config["seed"] == 7 and config["raw"] == str(raw)

    printed = capsys.readouterr().out
    assert "scrubbed: <EMAIL>" in printed
    assert f"Wrote 18 train and 6 val records to {out}/" in printed


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", chat(40))
    vals = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert (
            cli(
                [
                    "--raw",
                    str(raw),
                    "--out",
                    str(tmp_path / name),
                    "--seed",
                    str(seed),
                    "--val_fraction",
                    "0.2",
                ]
            )
            == 0
        )
        vals.append((tmp_path / name / "val.jsonl").read_text())
    assert vals[0] == vals[1]
    assert vals[0] != vals[2]


def test_zero_val_fraction_writes_an_empty_val_file(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", chat(3))
    assert cli(["--raw", str(raw), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    assert (tmp_path / "out" / "val.jsonl").read_text() == ""
    assert len(read_records(tmp_path / "out" / "train.jsonl")) == 6


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([msg(1, 0, False, "hi"), msg(2, 1, False, "anyone?")], "none of the messages is yours"),
        (
            [msg(1, 0, True, "hi"), msg(2, 60 * 48, False, "sorry, just saw this")],  # a longer gap helps
            "each of your messages opens a conversation",
        ),
        ([msg(1, 0, False, "  "), msg(2, 1, True, "\u200b")], "every message is empty"),
        ([msg(1, 0, False, "email?"), msg(2, 1, True, "a@example.com")], "response_only_placeholders"),
    ],
)
def test_zero_records_explains_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], messages: list[dict], why: str
) -> None:
    raw = write_raw(tmp_path / "raw", messages)
    assert cli(["--raw", str(raw), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no training records" in err and why in err
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_invalid_settings_are_collected_into_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_raw(tmp_path / "raw", chat(2))
    code = cli(["--raw", str(raw), "--out", str(raw), "--gap-hours", "0", "--val-fraction", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--gap-hours must be > 0" in err and "--val-fraction must be in [0, 1)" in err
    assert "--out must differ from --raw" in err


def test_cli_subprocess_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "5.jsonl").write_text('{"id": 1, "message": "my password is hunter2"\n')
    result = subprocess.run(
        [sys.executable, "-m", "prepare", "--raw", str(raw), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"prepare: {raw / '5.jsonl'}:1: line is not valid JSON")
    assert "hunter2" not in result.stderr + result.stdout


def test_cli_subprocess_missing_raw_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prepare", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "does not exist: run `make collect` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_out_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw", chat(2))
    (tmp_path / "taken").write_text("a file, not a folder")
    assert cli(["--raw", str(raw), "--out", str(tmp_path / "taken")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_dashed_flags_with_equals_sign(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", chat(2))
    assert cli([f"--raw={raw}", f"--out={tmp_path / 'out'}", "--max-context-turns=1", "--gap-hours=0.5"]) == 0
    config = json.loads((tmp_path / "out" / "prepare_config.json").read_text())
    assert config["max_context_turns"] == 1 and config["gap_hours"] == 0.5


def test_help_lists_every_flag_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["-h"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    defaults = PrepareConfig()
    for name in ("raw", "out", "gap_hours", "max_context_turns", "max_context_chars", "max_response_chars"):
        flag = "--" + name.replace("_", "-")
        assert flag in help_text and f"default: {getattr(defaults, name)})" in help_text, flag
    assert "--val-fraction" in help_text and "--seed" in help_text and "--gap_hours" not in help_text
    assert "starts a new conversation" in help_text  # the docstring is the help


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gap-hourz", "3"], "unrecognized arguments: --gap-hourz 3"),
        (["--gap-hours", "soon"], "--gap-hours: 'soon' is not a number"),
        (["--seed", "1.5"], "--seed: '1.5' is not an integer"),
    ],
)
def test_bad_flags_and_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
