"""The chat-template prompt format: rendered as transformers renders it, shaped into the base's own chat,
trained with the template's end-of-turn marker. Real models' templates (tests/fixtures/chat_templates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prepare.chat_template import ChatTemplate, ChatTemplateError, special_tokens_of
from prepare.prompt import (
    CHAT_TEMPLATE,
    SYSTEM_LINE,
    Prompter,
    Turn,
    clip_text,
    render_context,
)
from prepare.records import Record, parse_record

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
END_OF_TURN = {
    "chatml": "<|im_end|>",  # SmolLM2-Instruct's own
    "chatml_generation": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
    "mistral": "</s>",
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"), TOKENS)


def prompter(name: str) -> Prompter:
    return Prompter(CHAT_TEMPLATE, template(name))


def transformers_render(source: str, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """transformers' own rendering (what `apply_chat_template(..., tokenize=False)` returns)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=source,
        add_generation_prompt=generation_prompt,
        **TOKENS,
        enable_thinking=False,
    )
    return rendered[0]


CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are chatting with Anna on Telegram."},
        {"role": "user", "content": "  hi!\nare you around?  "},
        {"role": "assistant", "content": "yes 😀 <b>here</b>"},
        {"role": "user", "content": "dinner at 7?"},
    ],
    [{"role": "assistant", "content": "hey"}, {"role": "user", "content": "yo"}],
]


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_renders_exactly_as_transformers(name: str) -> None:
    ours = template(name)
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            try:
                expected = transformers_render(ours.source, messages, generation_prompt)
            except Exception as e:  # the template's own refusal (raise_exception): ours says the same
                with pytest.raises(ChatTemplateError, match="refused the conversation") as refused:
                    ours.render(messages, generation_prompt)
                assert str(e) in str(refused.value)
                continue
            assert ours.render(messages, generation_prompt) == expected


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_end_of_turn_marker_is_read_off_the_template(name: str) -> None:
    ours = prompter(name)
    assert ours.template is not None and ours.template.end_of_turn == END_OF_TURN[name]
    assert ours.stop_strings == [END_OF_TURN[name]]


def record(turns: tuple[Turn, ...] | None, instruction: str = "dinner at 7?", reply: str = "sure!") -> Record:
    context = render_context(turns or (), "Anna")
    return Record(instruction, context, reply, 1, "2024-05-01T09:31:00+00:00", "Anna", turns)


def test_partner_is_user_person_is_assistant_after_a_system_line() -> None:
    turns = (Turn("partner", "hi"), Turn("me", "hey :)"))
    prompt, response = prompter("chatml").render_record(record(turns))
    system = SYSTEM_LINE.format(partner="Anna")
    assert prompt == (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhey :)<|im_end|>\n"
        "<|im_start|>user\ndinner at 7?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the loss covers the reply and the end of the turn: the twin learns to stop
    assert response == "sure!<|im_end|>\n"
    assert "Anna" in system and len(system) < 100


def test_a_template_without_a_system_role_gets_the_line_in_the_first_user_message() -> None:
    gemma = prompter("gemma")
    system = SYSTEM_LINE.format(partner="Anna")
    prompt, response = gemma.render_record(record((Turn("partner", "hi"), Turn("me", "hey"))))
    assert prompt.startswith(
        f"<s><start_of_turn>user\n{system}\n\nhi<end_of_turn>\n<start_of_turn>model\nhey"
    )
    assert prompt.endswith("<start_of_turn>user\ndinner at 7?<end_of_turn>\n<start_of_turn>model\n")
    assert response == "sure!<end_of_turn>\n"
    # a context that opens with the person: the line is a user message of its own (roles still alternate)
    prompt, _ = gemma.render_record(record((Turn("me", "morning"),)))
    assert prompt.startswith(f"<s><start_of_turn>user\n{system}<end_of_turn>\n<start_of_turn>model\nmorning")
    # Mistral's template refuses a system role and insists on alternation too; its turn ends with EOS
    prompt, response = prompter("mistral").render_record(record((Turn("me", "morning"),)))
    assert prompt == f"<s>[INST] {system} [/INST]morning</s>[INST] dinner at 7? [/INST]"
    assert response == "sure!</s>"


def test_long_turns_are_clipped_as_in_twin_v1() -> None:
    long = "word " * 400
    prompt, _ = prompter("chatml").render_record(record((Turn("partner", long), Turn("me", "ok")), long))
    assert prompt.count(clip_text(long).strip()) == 2 and long.strip() not in prompt


def test_a_template_that_does_not_extend_its_generation_prompt_is_refused() -> None:
    thinking = template("thinking")
    with pytest.raises(ChatTemplateError, match="instead of the assistant's reply"):
        _ = thinking.end_of_turn
    with pytest.raises(ChatTemplateError, match="instead of the assistant's reply"):
        Prompter(CHAT_TEMPLATE, thinking).render_record(record(()))
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}").render([], True)


def test_records_without_turns_need_a_new_prepare_for_chat_template_only() -> None:
    old = record(None)
    with pytest.raises(ValueError, match=r"no `turns`.*re-run `make prepare`"):
        prompter("chatml").render_record(old)
    assert Prompter().render_record(old)[1] == "sure!"  # twin-v1 renders the context text


def test_records_carry_their_turns_through_json() -> None:
    turns = (Turn("partner", "hi\nthere"), Turn("me", "hey"))
    obj: dict[str, Any] = record(turns).to_dict()
    assert obj["turns"] == [{"speaker": "partner", "text": "hi\nthere"}, {"speaker": "me", "text": "hey"}]
    assert parse_record(obj, "f:1") == record(turns)
    assert render_context(parse_record(obj, "f:1").turns or (), "Anna") == obj["context"]
    old = {k: v for k, v in obj.items() if k != "turns"}  # written before the field existed
    assert parse_record(old, "f:1").turns is None and "turns" not in record(None).to_dict()
    with pytest.raises(ValueError, match=r"f:2: field 'turns' must be a list"):
        parse_record(obj | {"turns": [{"speaker": "bot", "text": "x"}]}, "f:2")


def test_special_tokens_of_a_tokenizer_config() -> None:
    config = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "pad_token": None}
    assert special_tokens_of(config) == {"bos_token": "<s>", "eos_token": "</s>"}
