"""The one prompt format, shared by `finetune` (training text) and `serve` (live chats).

A record is (partner's new message = instruction, earlier turns = context, person's reply = response).
Training renders `render_prompt(...) + response`; the server turns an OpenAI-style message list
(`user` = the partner, `assistant` = the person) into the very same prompt with `prompt_from_messages`.
Everything that shapes the text — speaker labels, how turns are joined, how context is capped — lives
here so the two sides can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Speaker = Literal["me", "partner"]

ME_LABEL = "Me"
DEFAULT_PARTNER = "Friend"
NO_CONTEXT = "(this is the start of the conversation)"
MAX_CONTEXT_TURNS = 8
"""Default cap on earlier turns kept as context (most recent first to survive)."""
MAX_CONTEXT_CHARS = 1500
"""Default cap on the rendered context's length in characters."""

TEMPLATE = (
    "You (I) are chatting with {partner} on Telegram. Write my reply to their new message, "
    "in my own words and style.\n\n"
    "### Our previous messages:\n{context}\n\n"
    "### {partner}'s new message:\n{instruction}\n\n"
    "### My reply:\n"
)


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive messages of one speaker, newline-joined."""

    speaker: Speaker
    text: str


def partner_label(partner: str | None) -> str:
    """The name the prompt uses for the chat partner (a neutral default when unknown)."""
    name = " ".join((partner or "").split())
    return name or DEFAULT_PARTNER


def render_turn(turn: Turn, partner: str | None = None) -> str:
    label = ME_LABEL if turn.speaker == "me" else partner_label(partner)
    return f"{label}: {turn.text}"


def cap_turns(
    turns: Sequence[Turn],
    max_turns: int = MAX_CONTEXT_TURNS,
    max_chars: int = MAX_CONTEXT_CHARS,
    partner: str | None = None,
) -> list[Turn]:
    """The most recent turns that fit both caps, oldest first (never splits a turn)."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns[-max_turns:] if max_turns > 0 else []):
        cost = len(render_turn(turn, partner)) + (1 if kept else 0)
        if used + cost > max_chars:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


def render_context(turns: Iterable[Turn], partner: str | None = None) -> str:
    """Earlier turns, oldest first, one labelled turn per block (already capped by the caller)."""
    return "\n".join(render_turn(t, partner) for t in turns)


def render_prompt(instruction: str, context: str, partner: str | None = None) -> str:
    """The prompt for one reply; the training text is this plus the response (and EOS)."""
    return TEMPLATE.format(
        partner=partner_label(partner),
        context=context or NO_CONTEXT,
        instruction=instruction,
    )


def render_record(record: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of an instruction record from prepare's train/val JSONL."""
    prompt = render_prompt(record["instruction"], record["context"], record.get("partner"))
    return prompt, record["response"]


def merge_turns(messages: Iterable[tuple[Speaker, str]]) -> list[Turn]:
    """Merge consecutive messages of one speaker into one turn, newline-joined; drops blank ones."""
    turns: list[Turn] = []
    for speaker, text in messages:
        text = text.strip()
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
    partner's (user's) message: that is what the twin replies to.
    """
    pairs: list[tuple[Speaker, str]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role not in ROLE_TO_SPEAKER:
            raise ValueError(f"unknown role {role!r}: use 'user' (the chat partner) or 'assistant' (you)")
        if role == "user" and m.get("name") and partner is None:
            partner = str(m["name"])
        pairs.append((ROLE_TO_SPEAKER[role], str(m.get("content") or "")))
    turns = merge_turns(pairs)
    if not turns or turns[-1].speaker != "partner":
        raise ValueError("the conversation must end with a non-empty 'user' message (the partner's)")
    context = render_context(cap_turns(turns[:-1], max_turns, max_chars, partner), partner)
    return render_prompt(turns[-1].text, context, partner)
