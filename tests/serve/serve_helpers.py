"""Helpers of the serve tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import uvicorn
import yaml
from litgpt import lora
from litgpt.config import Config

from serve.engine import Engine
from serve.settings import Settings

ADAPTER_FILE = "lit_model_lora_finetuned.pth"
LORA_HPARAMS = {
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_query": True,
    "lora_key": True,
    "lora_value": True,
    "lora_projection": True,
    "lora_mlp": True,
    "lora_head": True,
}


def make_adapter(
    checkpoint_dir: Path,
    out: Path,
    seed: int = 0,
    scale: float = 0.05,
    head: bool = True,
    rank: int = 4,
    **layers: bool,
) -> Path:
    """An out-dir like finetune's, with random (non-zero) LoRA tensors of rank `rank` on every LoRA-able
    layer (the output head too unless `head` is False: several twins on one base refuse an adapted head)
    but those `layers` (`lora_mlp=False`, ...) turn off."""
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    hparams = LORA_HPARAMS | {"lora_r": rank, "lora_alpha": 2 * rank, "lora_head": head} | layers
    torch.manual_seed(seed)
    model = lora.GPT(lora.Config(**asdict(config), **hparams))
    tensors = {
        k: torch.randn_like(v) * scale for k, v in model.state_dict().items() if lora.lora_filter(k, v)
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, out / ADAPTER_FILE)
    (out / "hyperparameters.yaml").write_text(
        yaml.safe_dump({**hparams, "checkpoint_dir": str(checkpoint_dir)})
    )
    return out / ADAPTER_FILE


def make_settings(checkpoint_dir: Path, lora_path: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "checkpoint_dir": checkpoint_dir,
        "lora_path": lora_path,
        "api_key": None,
        "device": "cpu",
        "compile": False,
        "max_input_tokens": 160,
        "max_new_tokens": 48,
        "default_max_tokens": 12,
        "max_batch_size": 4,
        "max_queue": 16,
        "request_timeout": 60.0,
        "default_stop": [],
        "cors_origins": [],
        "log_content": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_in_thread(app: Any, **options: Any) -> Iterator[int]:
    """`app` behind a real uvicorn on 127.0.0.1 (in a thread of this process, sharing its engine), with
    uvicorn.Config `options`; yields the port once the server has started, stops it afterwards."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def user(content: str, name: str | None = None) -> dict[str, str]:
    message = {"role": "user", "content": content}
    if name is not None:
        message["name"] = name
    return message


def pause_worker(engine: Engine, only_if: Callable[[], bool] | None = None) -> threading.Event:
    """Hold the engine's worker between two decode steps (`run_in_worker`) until the event is set. With
    `only_if`, the worker is held only if that is true when it gets there (else it goes on at once): a
    test never waits for work that a held worker cannot do."""
    paused, resume = threading.Event(), threading.Event()

    def pause(runner: Any) -> None:
        hold = only_if is None or only_if()
        paused.set()
        if hold:
            resume.wait(timeout=30)

    engine.run_in_worker(pause)
    assert paused.wait(timeout=30)
    return resume
