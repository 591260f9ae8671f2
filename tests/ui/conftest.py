"""Fixtures of the ui tests (helpers live in `ui_standin.py` and `ui_browser.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_browser import RealTwin, twin_server
from ui_standin import StandIn, free_port, running_standin


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A stand-in twin server on 127.0.0.1; set `.answer` to script it."""
    with running_standin() as server:
        yield server


@pytest.fixture(scope="session")
def real_twin(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealTwin]:
    """The real twin server (`python -m serve`) on 127.0.0.1: the tiny checkpoint with its tiny LoRA
    adapter (so it answers in the twin's voice), behind an API key."""
    key = "ui-test-key"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    lora = tiny_adapter / "lit_model_lora_finetuned.pth"
    with twin_server(tiny_checkpoint, free_port(), key, log, lora=lora) as url:
        yield RealTwin(url, key)
