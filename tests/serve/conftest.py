"""Fixtures of the serve tests: an adapter for the shared tiny checkpoint, settings, one started engine.

The engine (model worker thread) is started once per session and shared by every TestClient app; tests
that need other engine sizes build their own. Everything runs on the CPU with the real tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import ADAPTER_FILE, make_adapter, make_settings

from serve.app import create_app
from serve.service import TwinService, build_service
from serve.settings import Settings


@pytest.fixture(scope="session")
def lora_path(
    request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The finetune stage's tiny adapter when that fixture exists, else a random one of the same format."""
    try:
        adapter = Path(request.getfixturevalue("tiny_adapter"))
    except pytest.FixtureLookupError:
        return make_adapter(tiny_checkpoint, tmp_path_factory.mktemp("serve-adapter") / "twin")
    return adapter if adapter.is_file() else adapter / ADAPTER_FILE


@pytest.fixture(scope="session")
def serve_settings(tiny_checkpoint: Path, lora_path: Path) -> Settings:
    return make_settings(tiny_checkpoint, lora_path)


@pytest.fixture(scope="session")
def service(serve_settings: Settings) -> Iterator[TwinService]:
    """The tokenizer and a started, warmed-up engine (4 slots) on the tiny checkpoint + adapter."""
    service = build_service(serve_settings)
    service.engine.start()
    assert service.engine.wait_ready(timeout=120), service.engine.load_error
    yield service
    service.engine.stop()


@pytest.fixture(scope="module")
def client(serve_settings: Settings, service: TwinService) -> Iterator[TestClient]:
    with TestClient(create_app(serve_settings, service)) as client:
        yield client
