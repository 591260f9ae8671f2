"""The one prompt format, shared by `finetune` (training text) and `serve` (live chats).

A record is (partner's new message = instruction, earlier turns = context, person's reply = response).
Training renders `render_prompt(...) + response`; the server turns an OpenAI-style message list
(`user` = the partner, `assistant` = the person) into the very same prompt with `prompt_from_messages`.
Everything that shapes the text — text cleaning, speaker labels, how turns are joined, how long turns
are clipped, how context is capped — lives here so the two sides can never drift apart.

This module imports nothing heavy (no pandas, no torch): the server imports it on start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prepare.records import Record

Speaker = Literal["me", "partner"]

ME_LABEL = "Me"
DEFAULT_PARTNER = "Friend"
NO_CONTEXT = "(this is the start of the conversation)"
MAX_CONTEXT_TURNS = 8
"""Default cap on earlier turns kept as context (most recent first to survive)."""
MAX_CONTEXT_CHARS = 1500
"""Default cap on the rendered context's length in characters."""
MAX_TURN_CHARS = 1000
"""A turn longer than this (a pasted article, a log) is clipped to its head plus an ellipsis when it is
rendered into a prompt, so one paste cannot crowd out the rest of the conversation."""
CLIP_MARK = " […]"

PromptFormat = Literal["twin-v1"]
"""The prompt formats a twin can be trained with (finetune records its one next to the adapter)."""
PROMPT_FORMAT: PromptFormat = "twin-v1"
"""The format `TEMPLATE` renders: the only one so far."""

TEMPLATE = (
    "You are me, chatting with {partner} on Telegram. Write my reply to their new message, "
    "in my own words and style.\n\n"
    "### Our previous messages:\n{context}\n\n"
    "### {partner}'s new message:\n{instruction}\n\n"
    "### My reply:\n"
)

# Control characters (except tab and newline) and invisible format characters that carry no meaning
# in a chat but would make two otherwise equal texts differ: zero-width spaces/joiners, word joiner,
# BOM, bidi marks and embeddings.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive messages of one speaker, newline-joined."""

    speaker: Speaker
    text: str


def clean_text(text: str) -> str:
    """One message as the prompt sees it: newlines normalised, invisible characters dropped, stripped.

    Returns "" for a message with nothing visible in it (whitespace only, zero-width characters).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isprintable():  # fast path: most chat messages are a single printable line
        text = _INVISIBLE.sub("", text)
    return text.strip()


def clip_text(text: str, max_chars: int = MAX_TURN_CHARS) -> str:
    """`text` if it fits in `max_chars`, else its head and a clip mark (never longer than `max_chars`).

    Idempotent: clipping a clipped text changes nothing.
    """
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - len(CLIP_MARK))].rstrip() + CLIP_MARK


def partner_label(partner: str | None) -> str:
    """The name the prompt uses for the chat partner (a neutral default when unknown)."""
    name = " ".join((partner or "").split())
    return name or DEFAULT_PARTNER


def _line(turn: Turn, label: str) -> str:
    text = turn.text if len(turn.text) <= MAX_TURN_CHARS else clip_text(turn.text)
    return f"{ME_LABEL if turn.speaker == 'me' else label}: {text}"


def render_turn(turn: Turn, partner: str | None = None) -> str:
    """One labelled line block: `Me: ...` or `<partner>: ...` (long turns clipped)."""
    return _line(turn, partner_label(partner))


def cap_turns(
    turns: Sequence[Turn],
    max_turns: int = MAX_CONTEXT_TURNS,
    max_chars: int = MAX_CONTEXT_CHARS,
    partner: str | None = None,
) -> list[Turn]:
    """The most recent turns that fit both caps, oldest first (never splits a turn).

    Only the last `max_turns` turns are ever looked at, so callers may pass just that tail.
    """
    label_len = len(partner_label(partner))
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns[-max_turns:] if max_turns > 0 else []):
        # == len(_line(turn, label)) + the newline joining it to the next line, without building the line
        text = turn.text
        size = len(text) if len(text) <= MAX_TURN_CHARS else len(clip_text(text))
        cost = (len(ME_LABEL) if turn.speaker == "me" else label_len) + 2 + size + (1 if kept else 0)
        if used + cost > max_chars:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


def render_context(turns: Iterable[Turn], partner: str | None = None) -> str:
    """Earlier turns, oldest first, one labelled turn per block (already capped by the caller)."""
    label = partner_label(partner)
    return "\n".join([_line(t, label) for t in turns])


def render_prompt(instruction: str, context: str, partner: str | None = None) -> str:
    """The prompt for one reply; the training text is this plus the response (and EOS)."""
    return TEMPLATE.format(
        partner=partner_label(partner),
        context=context or NO_CONTEXT,
        instruction=clip_text(instruction),
    )


def render_record(record: Record | Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of an instruction record: a `Record`, or a decoded line of train/val JSONL."""
    if isinstance(record, Mapping):
        prompt = render_prompt(record["instruction"], record["context"], record.get("partner"))
        return prompt, record["response"]
    return render_prompt(record.instruction, record.context, record.partner), record.response


def merge_turns(messages: Iterable[tuple[Speaker, str]]) -> list[Turn]:
    """Merge consecutive messages of one speaker into one turn, newline-joined.

    Each message goes through `clean_text` first; messages with nothing visible are dropped (so the
    messages on either side of a blank one can merge).
    """
    turns: list[Turn] = []
    for speaker, text in messages:
        text = clean_text(text)
        if not text:
            continue
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(speaker, f"{turns[-1].text}\n{text}")
        else:
            turns.append(Turn(speaker, text))
    return turns


ROLE_TO_SPEAKER: dict[str, Speaker] = {"user": "partner", "assistant": "me"}


def prompt_from_messages(
    messages: Sequence[Mapping[str, Any]],
    partner: str | None = None,
    max_turns: int = MAX_CONTEXT_TURNS,
    max_chars: int = MAX_CONTEXT_CHARS,
) -> str:
    """Render a live OpenAI-style chat (`user` = partner, `assistant` = me) into the training prompt.

    `system` messages are not part of the chat itself and are ignored; the partner's name comes from
    `partner`, else from the `name` field of the last `user` message. The chat must end with the
    partner's (user's) message: that is what the twin replies to. Pass the same caps that `prepare`
    used (its `prepare_config.json`) when they were not the defaults.
    """
    pairs: list[tuple[Speaker, str]] = []
    named: str | None = None
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role not in ROLE_TO_SPEAKER:
            raise ValueError(f"unknown role {role!r}: use 'user' (the chat partner) or 'assistant' (you)")
        if role == "user" and m.get("name"):
            named = str(m["name"])
        pairs.append((ROLE_TO_SPEAKER[role], str(m.get("content") or "")))
    if partner is None:
        partner = named
    turns = merge_turns(pairs)
    if not turns or turns[-1].speaker != "partner":
        raise ValueError("the conversation must end with a non-empty 'user' message (the partner's)")
    context = render_context(cap_turns(turns[:-1], max_turns, max_chars, partner), partner)
    return render_prompt(turns[-1].text, context, partner)
