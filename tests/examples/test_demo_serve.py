"""`make demo`'s last step on the tiny twin: a real server on a free loopback port, two replies, stopped."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("twin_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ask_twin_starts_answers_and_stops(
    demo: ModuleType, tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    paths = demo.Paths(
        raw=tmp_path / "raw",
        prepared=tmp_path / "prepared",
        checkpoint=tiny_checkpoint,
        twin=tiny_adapter,
        report=tmp_path / "report",
        log=tmp_path / "out" / "serve.log",
    )
    timings: dict[str, float] = {}
    questions = [("Anna", "Are you free on friday?"), ("Boris", "How was your day?")]  # the fixture's chats
    replies = demo.ask_twin(paths, timings, questions)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert "serve: start, answer, stop" in timings
    log = paths.log.read_text(encoding="utf-8")
    assert "Uvicorn running on http://127.0.0.1:" in log
    port = int(log.split("Uvicorn running on http://127.0.0.1:")[1].split()[0])
    with socket.socket() as s:  # the server is gone: its port can be bound again
        s.bind(("127.0.0.1", port))
    assert (paths.log.stat().st_mode & 0o777) == 0o600


def test_a_broken_server_is_reported_with_its_log(
    demo: ModuleType, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    paths = demo.Paths.under(tmp_path / "data", tiny_checkpoint, tmp_path / "out")  # no adapter trained there
    with pytest.raises(demo.DemoError, match="the server exited") as err:
        demo.ask_twin(paths, {})
    assert "lit_model_lora_finetuned.pth" in str(err.value)
