"""`python -m collect ...` as a person runs it: summary on success, one line and exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collect.cli import main

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "telegram"


def collect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "collect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_desktop_import_prints_a_summary(tmp_path: Path) -> None:
    export = FIXTURES / "tkonverter_personal_result.json"
    result = collect("desktop", str(export), "--out", str(tmp_path / "raw"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and "1 personal chats, 9 new messages (9 in all)" in summary[0]
    assert str(tmp_path / "raw") in summary[0]

    # Filters apply to messages not looked at yet: the forward (id 2) was already looked at and skipped.
    again = collect("desktop", str(export), "--out", str(tmp_path / "raw"), "--keep-forwarded", cwd=tmp_path)
    assert again.returncode == 0 and "0 new messages (9 in all)" in again.stdout
    assert "87 already collected" in again.stdout


def test_dashed_flags_and_bool_switches(tmp_path: Path) -> None:
    export = FIXTURES / "tkonverter_personal_result.json"
    result = collect("desktop", str(export), "--out", str(tmp_path / "raw"), "--keep-forwarded", cwd=tmp_path)
    assert result.returncode == 0 and "10 new messages" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["desktop", str(FIXTURES / "tg2md_channel_result.json")],
            "no personal chats in this export (found 1 private_channel)",
        ),
        (["desktop", str(FIXTURES / "ambiguous_me_result.json")], "--me 1001"),
        (["desktop", "missing.json"], "missing.json: no such file"),
        (["desktop", str(FIXTURES / "full_account_result.json"), "--since", "yesterday"], "expected a date"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    result = collect(*args, "--out", str(tmp_path / "raw"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_flag_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["telegram", "-h"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    flags = ("--out", "--limit-dialogs", "--since", "--keep-forwarded", "--no-keep-forwarded", "--env-file")
    assert all(flag in help_text for flag in flags)
    assert "default: data/raw" in help_text and "default: .env" in help_text
    assert "export only the N most recent one-to-one chats" in help_text  # the docstring is the help
    assert main(["desktop", "-h"]) == 0
    assert "--me ME" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["desktop", "x.json", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["telegram", "--limit-dialogs", "many"], "--limit-dialogs: 'many' is not an integer"),
        (["desktop"], "the path argument is required"),
        (["fax"], "invalid choice: 'fax'"),
    ],
)
def test_bad_flags_and_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_underscore_spelling_and_negated_switch(tmp_path: Path) -> None:
    export = FIXTURES / "tkonverter_personal_result.json"
    argv = ["desktop", str(export), "--out", str(tmp_path / "raw"), "--keep_forwarded", "--no-keep-forwarded"]
    result = collect(*argv, cwd=tmp_path)
    assert result.returncode == 0 and "9 new messages" in result.stdout, result.stderr


def test_unusable_paths_and_broken_exports_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = str(FIXTURES / "full_account_result.json")
    raw = str(tmp_path / "raw")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder" / "result.json").mkdir(parents=True)
    deep = "[" * 100_000 + "]" * 100_000
    chat = '{"type": "personal_chat", "id": 5, "messages": [{"id": 1, "text": ' + deep + "}]}"
    (tmp_path / "deep.json").write_text('{"chats": {"list": [' + chat + "]}}")
    cases = [
        ([export, "--out", str(tmp_path / "a_file" / "raw")], "can't create or use the output folder"),
        ([str(tmp_path / "folder"), "--out", raw], "result.json: a folder, not the export file"),
        ([str(tmp_path / "deep.json"), "--out", raw], "nested too deeply"),
    ]
    for args, expected in cases:
        assert main(["desktop", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_old_export_through_the_cli(tmp_path: Path) -> None:
    shift = 1 << 32
    chat = {"name": "Telegram", "type": "personal_chat", "id": 777000 + shift, "messages": []}
    chat["messages"] = [
        {"id": 1, "type": "message", "date": "2020-05-01T10:00:00", "from_id": 777000, "text": "Code: 55555"}
    ]
    anna = {"name": "Anna", "type": "personal_chat", "id": 111 + shift, "messages": []}
    anna["messages"] = [
        {"id": 2, "type": "message", "date": "2020-05-01T10:00:00", "from_id": 111, "text": "hi"},
        {"id": 3, "type": "message", "date": "2020-05-01T10:01:00", "from_id": 999, "text": "hey"},
    ]
    export = tmp_path / "result.json"
    export.write_text(json.dumps({"personal_information": {"user_id": 999}, "chats": {"list": [chat, anna]}}))
    result = collect("desktop", str(export), "--out", str(tmp_path / "raw"), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "1 personal chats, 2 new messages" in result.stdout
    assert "1 other chats left out (1 Telegram service notifications (777000, login codes))" in result.stdout
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.jsonl")) == ["111.jsonl"]
