"""The conversation as data: what the page keeps in `st.session_state`, sends, and lets you download.

Roles follow the server's OpenAI contract: the person at the keyboard types as the chat *partner*
(`user`), and the twin answers as the person it was trained on (`assistant`). The partner's name is not
stored per message; it is attached as the OpenAI `name` field of every `user` message when the history
is sent, so renaming the partner in the sidebar applies to the whole conversation at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal, TypedDict

EXPORT_VERSION = 1
"""Bumped whenever the downloaded JSON's layout changes (see the README's ui section)."""


class Message(TypedDict):
    """One chat bubble: `user` = the partner (you, typing), `assistant` = the twin."""

    role: Literal["user", "assistant"]
    content: str


def clean_partner(name: str | None) -> str:
    """The partner's name with whitespace collapsed; empty means "let the server pick its default"."""
    return " ".join((name or "").split())


def request_messages(history: Sequence[Message], partner: str | None) -> list[dict[str, str]]:
    """The OpenAI `messages` list for `history`, with the partner's name on every `user` message."""
    name = clean_partner(partner)
    messages: list[dict[str, str]] = []
    for m in history:
        message = {"role": m["role"], "content": m["content"]}
        if name and m["role"] == "user":
            message["name"] = name
        messages.append(message)
    return messages


def export_conversation(
    history: Sequence[Message], partner: str | None, temperature: float, max_tokens: int, model: str
) -> str:
    """The conversation with twin `model` as pretty JSON; its `model` and `messages` can be replayed
    against the API as they are."""
    document = {
        "version": EXPORT_VERSION,
        "model": model,
        "partner": clean_partner(partner) or None,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "messages": request_messages(history, partner),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
