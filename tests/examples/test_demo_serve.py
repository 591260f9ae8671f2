"""`make demo`'s serving step on the tiny twin: a real server on a free loopback port, replies, stopped."""

from __future__ import annotations

import runpy
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest


def test_ask_starts_answers_and_stops(
    demo: ModuleType, tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    log = tmp_path / "out" / "serve-twin.log"
    questions = [("Anna", "Are you free on friday?"), ("Boris", "How was your day?")]  # the fixture's chats
    replies = demo.ask(tiny_checkpoint, tiny_adapter, questions, log, max_tokens=8)
    assert len(replies) == 2
    assert all(isinstance(r.text, str) and r.finish_reason in ("stop", "length") for r in replies)
    text = log.read_text(encoding="utf-8")
    assert "Uvicorn running on http://127.0.0.1:" in text
    port = int(text.split("Uvicorn running on http://127.0.0.1:")[1].split()[0])
    with socket.socket() as s:  # the server is gone: its port can be bound again
        s.bind(("127.0.0.1", port))
    assert (log.stat().st_mode & 0o777) == 0o600


def test_a_broken_server_is_reported_with_its_log(
    demo: ModuleType, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    paths = demo.Paths.under(tmp_path / "data", tiny_checkpoint, tmp_path / "out")  # no adapter trained there
    with pytest.raises(demo.DemoError, match="the server exited") as err:
        demo.ask(paths.checkpoint, paths.twin, [("Anna", "hi")], paths.logs / "serve-twin.log")
    assert "lit_model_lora_finetuned.pth" in str(err.value)


def test_every_demo_command_parses(
    demo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags the demo passes are ones its stages accept (a typo would only show minutes into a run):
    each stage's own CLI parses them and prints its config (`--print-config=`), here in this process."""
    paths = demo.Paths.under(tmp_path / "data", tmp_path / "base", tmp_path / "out")
    for title, cmd in demo.pipeline(paths):
        assert cmd[:2] == ["python", "-m"], title
        monkeypatch.setattr(sys, "argv", [cmd[2], *cmd[3:], "--print-config="])
        with pytest.raises(SystemExit) as done:
            runpy.run_module(cmd[2], run_name="__main__", alter_sys=True)
        assert done.value.code == 0, f"{title}: {capsys.readouterr().err}"
