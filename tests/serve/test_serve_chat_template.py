"""Serving a twin trained on its base's chat template (SmolLM2-135M-Instruct): the live chat is rendered
with the template recorded beside the adapter, tokenized as training did, and the reply ends at the
end of the person's turn (<|im_end|>) — no run-on into invented next turns."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, user

from finetune.twin import CHAT_TEMPLATE_FILE, TwinError
from serve.app import create_app
from serve.service import TwinService, build_service

pytestmark = pytest.mark.slow

CHAT = [
    user("hey! are you around?", name="Anna"),
    {"role": "assistant", "content": "yes, what's up"},
    user("What is the capital of France?", name="Anna"),
]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def chat_service(smollm2_checkpoint: Path, smollm2_adapter: Path) -> Iterator[TwinService]:
    settings = make_settings(
        smollm2_checkpoint, smollm2_adapter, default_stop=None, max_input_tokens=256, max_new_tokens=64,
        max_batch_size=1, log_content=True,
    )  # fmt: skip
    service = build_service(settings)
    service.engine.start()
    assert service.engine.wait_ready(timeout=300), service.engine.load_error
    yield service
    service.engine.stop()


def test_the_adapters_format_and_end_of_turn_are_served(chat_service: TwinService) -> None:
    assert chat_service.prompter.format == "chat-template"
    assert chat_service.stop == ["<|im_end|>"]  # settings' default_stop none: the format's
    assert 2 in chat_service.engine.eos_ids  # <|im_end|> ends a reply as a token


def test_reply_is_rendered_with_the_template_and_stops_at_im_end(
    chat_service: TwinService, smollm2_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer

    from prepare.prompt import SYSTEM_LINE

    app = create_app(chat_service.settings, chat_service)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="serve.routes.chat"):
        r = client.post(
            "/v1/chat/completions", json={"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    reply = body["choices"][0]["message"]["content"]
    # ended by the model at the end of its turn, well before the cap, with nothing of a next turn
    assert body["choices"][0]["finish_reason"] == "stop"
    assert 0 < body["usage"]["completion_tokens"] < MAX_TOKENS
    assert "paris" in reply.lower()
    for marker in ("<|im_end|>", "<|im_start|>", "\nuser", "\nassistant"):
        assert marker not in reply
    assert chat_service.engine.finished["stop"] >= 1

    # the prompt is SmolLM2's own chat template over the chat, with the system line naming the partner
    hf = AutoTokenizer.from_pretrained(smollm2_checkpoint)
    messages = [
        {"role": "system", "content": SYSTEM_LINE.format(partner="Anna")},
        {"role": "user", "content": "hey! are you around?"},
        {"role": "assistant", "content": "yes, what's up"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert f"prompt={text!r}" in caplog.text  # the prompt the server rendered (TWIN_LOG_CONTENT)
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_a_missing_or_altered_template_file_is_refused(
    smollm2_checkpoint: Path, smollm2_adapter: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(smollm2_adapter, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    template = run / CHAT_TEMPLATE_FILE
    template.write_text(template.read_text() + " ")
    with pytest.raises(TwinError, match="was altered"):
        build_service(make_settings(smollm2_checkpoint, run))
    template.unlink()
    with pytest.raises(TwinError, match="is missing"):
        build_service(make_settings(smollm2_checkpoint, run))


def test_a_base_without_adapter_is_served_in_its_own_format(
    smollm2_checkpoint: Path, tiny_checkpoint: Path
) -> None:
    chat_base = build_service(make_settings(smollm2_checkpoint, None, default_stop=None))
    assert chat_base.prompter.format == "chat-template" and chat_base.stop == ["<|im_end|>"]
    plain_base = build_service(make_settings(tiny_checkpoint, None, default_stop=None))
    assert plain_base.prompter.format == "twin-v1" and plain_base.stop == ["\n###"]
    assert plain_base.engine.eos_ids == {plain_base.tokenizer.eos_id}
