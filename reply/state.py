"""What the listener remembers across restarts: a restart, or a crash loop, must neither send past the rate
limits nor answer the same message twice.

One small owner-only JSON file (`--state-file`, default `data/reply/state.json`; its schema is in
docs/reply.md), replaced atomically through `common.files` each time a limit counts an action or a reply is
made. It holds, per chat, the times of the auto-replies and of the Saved Messages suggestions that the
limits still count (the last hour: older ones are dropped on every write, so the file stays small), and the
newest partner message each chat's reply answered (kept `ANSWERED_KEEP_S`). A file that cannot be read or
is not one this module wrote stops the listener with one line naming it and the fix: running without it
would quietly start the limits from zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from common.files import make_private_dir, write_private_atomic
from reply.errors import ReplyError
from reply.limits import RateLimiter
from reply.settings import ReplySettings

log = logging.getLogger(__name__)
STATE_VERSION: Literal[1] = 1
ANSWERED_KEEP_S = 24 * 3600.0
"""How long a chat's answered message is remembered: Telegram repeats a message to a client that restarts
(the updates it had not confirmed), well within this."""


class AnsweredRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: int = Field(ge=0)
    """The newest partner message the chat's last reply was made with (it and older ones are answered)."""
    at: FiniteFloat
    """When (Unix time)."""


class StateRecord(BaseModel):
    """The state file, version 1 (keys are chat ids; times are Unix seconds, oldest first)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    auto_replies: dict[int, list[FiniteFloat]]
    """Per chat: when its auto-replies of the last hour were sent (`--per-chat-per-hour`, `--global-per-hour`
    count them)."""
    saved: dict[int, list[FiniteFloat]]
    """Per chat: when its suggestions of the last hour went to Saved Messages (`--mode saved`)."""
    answered: dict[int, AnsweredRecord]


@dataclass
class ReplyState:
    """The limits' recent actions and the answered messages, with the file they are kept in."""

    path: Path
    auto_replies: RateLimiter
    saved: RateLimiter
    answered: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Per chat: (newest partner message id answered, when)."""

    def answered_before(self, chat_id: int, message_id: int) -> bool:
        """Whether a reply was already made with this partner message in view (Telegram repeating it)."""
        return chat_id in self.answered and message_id <= self.answered[chat_id][0]

    def mark_answered(self, chat_id: int, message_id: int, now: float) -> None:
        previous = self.answered.get(chat_id, (0, now))[0]
        self.answered[chat_id] = (max(previous, message_id), now)

    def save(self, now: float) -> None:
        """Write what the limits still count (older entries dropped) atomically, owner-only (`OSError`:
        not written; the file keeps its previous content)."""
        self.answered = {c: a for c, a in self.answered.items() if now - a[1] < ANSWERED_KEEP_S}
        record = StateRecord(
            version=STATE_VERSION,
            auto_replies=self.auto_replies.recent(now),
            saved=self.saved.recent(now),
            answered={c: AnsweredRecord(message_id=m, at=at) for c, (m, at) in self.answered.items()},
        )
        if not self.path.parent.exists():
            make_private_dir(self.path.parent)
        write_private_atomic(self.path, record.model_dump_json(indent=1) + "\n")


def load_state(settings: ReplySettings, now: float) -> ReplyState:
    """The state in `settings.state_file` (none yet: an empty one), limits as `settings` sets them now.

    Raises `ReplyError` (one line: the file, what is wrong, what to do) for a file that cannot be read or
    is not a state file."""
    path = Path(settings.state_file)
    per_chat, overall = settings.per_chat_per_hour, settings.global_per_hour
    state = ReplyState(
        path,
        RateLimiter(per_chat, overall),
        RateLimiter(per_chat, overall, what="suggestions in Saved Messages"),
    )
    keeps = "it holds the auto-replies of the last hour, which the rate limits count"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return state
    except OSError as e:
        raise ReplyError(
            f"cannot read the reply state {path} ({e.strerror or type(e).__name__}): {keeps}; make it "
            "readable, or delete it (the limits then start from zero), or pass another --state-file"
        ) from None
    try:
        record = StateRecord.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ReplyError(
            f"the reply state {path} is damaged ({where}: {first['msg']}{more}): {keeps}; delete it (the "
            "limits then start from zero), or pass another --state-file"
        ) from None

    def clamp(times: dict[int, list[float]]) -> dict[int, list[float]]:
        # a time ahead of the clock (it was set back) counts from now: a full window, never for ever
        return {chat_id: [min(t, now) for t in ts] for chat_id, ts in times.items()}

    state.auto_replies.restore(clamp(record.auto_replies))
    state.saved.restore(clamp(record.saved))
    state.answered = {c: (a.message_id, min(a.at, now)) for c, a in record.answered.items()}
    sends = sum(len(ts) for ts in state.auto_replies.recent(now).values())
    suggestions = sum(len(ts) for ts in state.saved.recent(now).values())
    log.info("%s: %d auto-replies and %d Saved Messages suggestions in the last hour count against the "
             "limits; %d chats' answered messages remembered", path, sends, suggestions,
             len(state.answered))  # fmt: skip
    return state
