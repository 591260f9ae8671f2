"""A chat model's own prompt format: its Jinja chat template, rendered exactly as transformers renders it.

`ChatTemplate.render(messages, add_generation_prompt)` equals transformers'
`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`: the template is
compiled as `transformers.utils.chat_template_utils` compiles it (jinja2's `ImmutableSandboxedEnvironment`
with `trim_blocks`, `lstrip_blocks` and loop controls; `raise_exception` and `strftime_now` as globals; a
`tojson` filter that does not escape HTML; `{% generation %}` blocks render their body) and rendered with
the tokenizer's named special tokens (`bos_token`, `eos_token`, ...) as variables. One extra variable is
always set: `enable_thinking=False`, so a reasoning model (Qwen3) answers straight away, as a person does.

`prepare.prompt.Prompter` turns a conversation into messages and calls this module; nothing here knows
about chats or records. Imports only jinja2 (no torch): the server imports it on start-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
"""The named special tokens transformers passes to a chat template (`special_tokens_map`)."""
TEMPLATE_VARIABLES: dict[str, Any] = {"enable_thinking": False}
"""Set for every rendering (a template that does not read them ignores them)."""
PROBE_USER, PROBE_REPLY = "Hi!", "Hello there."
"""The conversation a template's end-of-turn marker and abilities are read from."""

Message = Mapping[str, str]


class ChatTemplateError(ValueError):
    """A chat template that cannot render a conversation the way training and serving need it."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant tokens with it): its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    """`source` compiled the way transformers compiles a chat template (cached: compiling is slow)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {e.lineno}): {e.message}"
        ) from None


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template with the special tokens it is rendered with."""

    source: str
    """The Jinja text (a checkpoint's `chat_template`)."""
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    """Named special tokens (`bos_token`, `eos_token`, ...) as text: template variables."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The conversation as text; a template's own refusal (`raise_exception`) is a `ChatTemplateError`."""
        template = compile_template(self.source)
        variables = {**self.special_tokens, **TEMPLATE_VARIABLES}
        try:
            return template.render(
                messages=list(messages),
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template refused the conversation: {e}") from None

    def reply_suffix(self, messages: Sequence[Message], reply: str, prompt: str | None = None) -> str:
        """What the template writes after `reply` as the assistant's answer to `messages` (its end-of-turn
        marker, e.g. `<|im_end|>\\n`), read off two renderings: the conversation with the generation
        prompt (`prompt`, if already rendered), and the conversation with the reply appended. The second
        must extend the first by the reply and then the suffix; anything else is a `ChatTemplateError`."""
        if prompt is None:
            prompt = self.render(messages, add_generation_prompt=True)
        full = self.render([*messages, {"role": "assistant", "content": reply}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ChatTemplateError(
                "the chat template renders a conversation with the assistant's reply differently from the "
                "same conversation with its generation prompt (not a prefix): the reply cannot be trained "
                "as a continuation of the prompt"
            )
        continuation = full[len(prompt) :]
        if not continuation.startswith(reply):
            raise ChatTemplateError(
                f"the chat template writes {continuation[:40]!r} after its generation prompt instead of the "
                "assistant's reply as it is"
            )
        return continuation[len(reply) :]

    @cached_property
    def takes_system(self) -> bool:
        """The template renders a `system` message (some refuse one, or drop it silently)."""
        marker = "SYSTEM-PROBE"
        try:
            text = self.render(
                [{"role": "system", "content": marker}, {"role": "user", "content": PROBE_USER}], True
            )
        except ChatTemplateError:
            return False
        return marker in text

    @cached_property
    def takes_assistant_first(self) -> bool:
        """After the system message, the conversation may open with the assistant (some templates insist
        that roles alternate starting with the user)."""
        messages = [
            {"role": "system", "content": "S"},
            {"role": "assistant", "content": PROBE_REPLY},
            {"role": "user", "content": PROBE_USER},
        ]
        try:
            self.render(messages if self.takes_system else messages[1:], True)
        except ChatTemplateError:
            return False
        return True

    @cached_property
    def end_of_turn(self) -> str:
        """The text the template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`, ...), without
        surrounding whitespace; "" when it writes nothing after the reply."""
        return self.reply_suffix([{"role": "user", "content": PROBE_USER}], PROBE_REPLY).strip()


def special_tokens_of(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens of a `tokenizer_config.json` (strings, or `{"content": ...}` objects)."""
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = tokenizer_config.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens
