"""A chat's recent history as the twin sees it, and how a reply is paced: pure functions, no I/O but files.

The rules are training's own: the same message filter as collect (`convert_message`: no service messages,
stickers, polls or forwards), the same conversation split as prepare (a silence of `gap_hours` starts a
new one), the same merging of a run of messages into one turn (`merge_turns`), the same secret scrubbing
(`scrub_secrets`, per turn, and on the partner's name), the same clipping of long turns (`clip_text`) and
the same context caps (`cap_turns`, with the caps recorded in prepare's `prepare_config.json` when there
is one). Nothing reaches the twin server that a training record would not hold.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from collect.options import SERVICE_NOTIFICATIONS_ID, CollectOptions
from collect.telegram import convert_message, dialog_name, left_out_reason
from common.scrub import PLACEHOLDER, scrub_secrets
from common.text import valid_unicode
from prepare.prompt import (
    MAX_CONTEXT_CHARS,
    MAX_CONTEXT_TURNS,
    MAX_TURN_CHARS,
    cap_turns,
    clean_text,
    clip_ends,
    clip_text,
    merge_turns,
)
from prepare.records import CONFIG_FILE, Turn
from reply.settings import ReplySettings

OPTIONS = CollectOptions()
"""collect's defaults: what a training record is built from is what a live prompt is built from."""
SERVICE_IDS = frozenset({SERVICE_NOTIFICATIONS_ID})
"""Telegram's own notices (login codes!): never answered, never read, never sent to the server."""
MAX_MESSAGE_CHARS = 4096
"""Telegram's limit on one message's text; a longer line of an auto-reply goes out in pieces."""
SCRUB_LIMIT = 64 * MAX_TURN_CHARS
"""A turn up to this long is scrubbed whole, then clipped (100k characters take ~0.15 s); a longer one (a
pasted book) only at its two ends of half this each, clipped from those ends alone (`clip_ends`: nothing
near the cut, where a secret may be broken, is ever kept)."""


def left_out(chat: Any, me_id: int | None = None) -> str | None:
    """Why a chat gets no replies (None for a one-to-one chat with a person): group, channel, bot,
    Saved Messages, Telegram's notices, support or deleted account."""
    from telethon.tl import types

    if chat is None:
        return "unknown chat"
    if me_id is not None and getattr(chat, "id", None) == me_id:
        return "Saved Messages"
    return left_out_reason(SimpleNamespace(is_user=isinstance(chat, types.User), entity=chat))


def chat_name(chat: Any) -> str:
    return dialog_name(SimpleNamespace(name=None, entity=chat))


def nothing_to_answer(message: Any) -> str | None:
    """Why a message gives the twin nothing to answer (collect's reasons: service message, sticker,
    forward, media without a caption, poll...), None when it has text training would keep."""
    converted = convert_message(message, 0, "", OPTIONS)
    return converted if isinstance(converted, str) else None


def scrub_turn(turn: Turn) -> Turn:
    """A turn as a training record holds it: valid Unicode, secrets replaced, clipped."""
    text = turn.text
    if len(text) <= SCRUB_LIMIT:
        return Turn(turn.speaker, clip_text(scrub_secrets(valid_unicode(text)), MAX_TURN_CHARS))
    head = scrub_secrets(valid_unicode(text[: SCRUB_LIMIT // 2]))
    tail = scrub_secrets(valid_unicode(text[-(SCRUB_LIMIT // 2) :]))
    return Turn(turn.speaker, clip_ends(head, tail, MAX_TURN_CHARS))


def prompt_name(name: str) -> str:
    """The partner's name as prepare records it: whitespace-normalised, scrubbed (a name can be a phone
    number), "" when nothing but a secret was left."""
    cleaned = scrub_secrets(" ".join(clean_text(valid_unicode(name)).split()))
    return cleaned if PLACEHOLDER.sub("", cleaned).strip() else ""


def has_placeholder(text: str) -> bool:
    """Whether a reply holds one of scrubbing's placeholders (`<CARD>`): the twin learned them from
    scrubbed chats, but no person sends them."""
    return PLACEHOLDER.search(text) is not None


def context_caps(prepared: Path) -> tuple[int, int]:
    """(max_turns, max_chars) that training used: prepare's recorded config, else its defaults."""
    try:
        config = json.loads((Path(prepared) / CONFIG_FILE).read_text(encoding="utf-8"))
        return int(config["max_context_turns"]), int(config["max_context_chars"])
    except (OSError, ValueError, KeyError, TypeError):
        return MAX_CONTEXT_TURNS, MAX_CONTEXT_CHARS


def conversation(messages: Iterable[Any], chat_id: int, gap: timedelta) -> list[Turn]:
    """The current conversation of a chat from its messages (Telethon `Message`s, newest first, as
    `iter_messages` gives them): kept messages back to the first silence longer than `gap`, merged into
    turns, oldest first."""
    kept: list[tuple[datetime, bool, str]] = []
    for message in messages:
        converted = convert_message(message, chat_id, "", OPTIONS)
        if isinstance(converted, str):
            continue
        _, raw = converted
        date = datetime.fromisoformat(raw.date)
        if kept and kept[-1][0] - date > gap:
            break
        kept.append((date, raw.out, raw.message))
    kept.reverse()
    return merge_turns(("me" if out else "partner", valid_unicode(text)) for _, out, text in kept)


def prompt_turns(turns: list[Turn], caps: tuple[int, int], partner: str) -> list[Turn] | None:
    """The capped context plus the partner's last turn (what the server is sent), each turn scrubbed
    and clipped as in training, or None when the conversation does not end with the partner (nothing to
    answer)."""
    if not turns or turns[-1].speaker != "partner":
        return None
    turns = [scrub_turn(turn) for turn in turns[-(caps[0] + 1) :]]
    return [*cap_turns(turns[:-1], caps[0], caps[1], partner), turns[-1]]


def split_reply(text: str) -> list[str]:
    """A reply as the messages the person would send: one per non-blank line (prepare joined a burst
    of messages with newlines), a line longer than Telegram takes in pieces of `MAX_MESSAGE_CHARS`."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return [line[i : i + MAX_MESSAGE_CHARS] for line in lines for i in range(0, len(line), MAX_MESSAGE_CHARS)]


def typing_delay(text: str, settings: ReplySettings, rng: random.Random, first: bool) -> float:
    """Seconds to wait (with "typing…" shown) before sending `text`: reading time before the first message,
    a short pause between messages, plus the time it takes to type it; with some jitter, capped."""
    base = settings.read_delay_s if first else settings.line_pause_s
    delay = (base + len(text) / settings.chars_per_s) * (1 + settings.jitter * rng.random())
    return min(delay, settings.max_delay_s)
