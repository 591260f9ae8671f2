"""Time and the brakes on auto-replies: the clock (injected, so tests fake it) and the rate limits."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime

WINDOW_S = 3600.0
"""Rate limits count auto-replies in any sliding hour."""
MAX_FLOOD_WAIT_S = 300.0
"""The longest FloodWait a draft or send waits out; past it that action is given up (`--max-flood-wait-s`)."""


class Clock:
    """Real time: the local wall clock (quiet hours are local) and asyncio's sleep."""

    def now(self) -> datetime:
        return datetime.now().astimezone()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RateLimiter:
    """At most `per_chat` actions (auto-replies, say) per chat and `overall` over all chats in any `window_s`
    seconds; `what` names them in the reason a limit gives."""

    def __init__(
        self, per_chat: int, overall: int, window_s: float = WINDOW_S, what: str = "auto-replies"
    ) -> None:
        self.per_chat = per_chat
        self.overall = overall
        self.window_s = window_s
        self.what = what
        self.chats: dict[int, deque[float]] = {}
        self.all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> deque[float]:
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def blocked(self, chat_id: int, now: float) -> str | None:
        """Why another action in `chat_id` now would break a limit (None: it would not)."""
        if len(self._trim(self.all, now)) >= self.overall:
            return f"the limit of {self.overall} {self.what} an hour over all chats (--global-per-hour)"
        if len(self._trim(self.chats.get(chat_id, deque()), now)) >= self.per_chat:
            return f"the limit of {self.per_chat} {self.what} an hour in one chat (--per-chat-per-hour)"
        return None

    def record(self, chat_id: int, now: float) -> None:
        self.all.append(now)
        self.chats.setdefault(chat_id, deque()).append(now)

    def recent(self, now: float) -> dict[int, list[float]]:
        """Per chat, the times still inside the window, oldest first: all a restart needs (older ones are
        forgotten here too, so what is saved stays small)."""
        self._trim(self.all, now)
        for chat_id in list(self.chats):
            if not self._trim(self.chats[chat_id], now):
                del self.chats[chat_id]
        return {chat_id: list(times) for chat_id, times in self.chats.items()}

    def restore(self, times: dict[int, list[float]]) -> None:
        """Count `times` (per chat, as `recent` gives them) as actions already taken."""
        self.chats = {chat_id: deque(sorted(ts)) for chat_id, ts in times.items() if ts}
        self.all = deque(sorted(t for ts in self.chats.values() for t in ts))
