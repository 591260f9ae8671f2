"""Every Telegram call `reply` makes, patient with limits the way collect is.

`TelegramActions` takes any client with Telethon's names (`iter_messages`, `get_drafts`, `send_message`,
`action`, `__call__` for `messages.SaveDraftRequest`, `is_connected`, `connect`), so tests hand it a fake.
A `FloodWaitError` waits the time Telegram asks (up to `max_flood_wait_s`, and `max_retries` of them in a
row: a reply hours late is no reply, so a longer wait gives the action up); network errors and Telegram's
own trouble reconnect if needed and back off exponentially, `MAX_RETRIES` times in a row (collect's
constants), then give up on this one action with `TelegramUnavailable` (the listener goes on). A message
is sent at most once: after a network error the chat is read before sending again, since Telegram may
have taken it before the connection dropped (`_send_once`). With `dry_run` nothing that changes anything
is called: the action is described to `announce` instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from telethon.tl import functions, types

from collect.telegram import BACKOFF_BASE_S, BACKOFF_MAX_S, FLOOD_WAITS, MAX_RETRIES, is_transient
from reply.limits import MAX_FLOOD_WAIT_S, Clock

log = logging.getLogger(__name__)
T = TypeVar("T")
SAVED = "me"
"""Telethon's name for the person's own chat, Saved Messages."""
RESEND_LOOKBACK = 20
"""Newest messages read, after a send failed midway, to see whether it went out after all."""


class TelegramUnavailable(Exception):
    """Telegram kept failing for one action; that action is given up (no message text in here)."""


@dataclass
class Counts:
    flood_waits: int = 0
    network_retries: int = 0
    reconnects: int = 0
    resends_avoided: int = 0


class TelegramActions:
    def __init__(
        self,
        client: Any,
        clock: Clock,
        *,
        dry_run: bool = False,
        announce: Callable[[str], None] | None = None,
        max_retries: int = MAX_RETRIES,
        max_flood_wait_s: float = MAX_FLOOD_WAIT_S,
    ) -> None:
        self.client = client
        self.clock = clock
        self.dry_run = dry_run
        self.announce = announce or (lambda line: log.info("%s", line))
        self.max_retries = max_retries
        self.max_flood_wait_s = max_flood_wait_s
        self.counts = Counts()

    async def call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """`await make()`, waiting out FloodWaits and retrying network errors (see the module docstring)."""
        failures = floods = 0
        while True:
            try:
                return await make()
            except FLOOD_WAITS as e:
                self.counts.flood_waits += 1
                floods += 1
                seconds = float(getattr(e, "seconds", 0) or 0)
                if seconds > self.max_flood_wait_s or floods > self.max_retries:
                    raise TelegramUnavailable(
                        f"{what}: Telegram asks to wait {seconds:.0f}s (FloodWait #{floods} in a row; "
                        f"waiting at most {self.max_flood_wait_s:.0f}s, --max-flood-wait-s)"
                    ) from None
                log.info("FloodWait on %s: sleeping %.0fs as Telegram asks", what, seconds)
                await self.clock.sleep(seconds)
            except Exception as e:
                if not is_transient(e):
                    raise
                failures += 1
                if failures > self.max_retries:
                    raise TelegramUnavailable(
                        f"{what}: {failures} network or server errors in a row ({type(e).__name__})"
                    ) from None
                self.counts.network_retries += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
                log.info("network error %s on %s; retry %d in %.0fs", type(e).__name__, what, failures, delay)
                await self.clock.sleep(delay)
                await self._reconnect()

    async def _reconnect(self) -> None:
        if self.client.is_connected():
            return
        try:
            await self.client.connect()
            self.counts.reconnects += 1
        except Exception as e:  # the next attempt of the action fails again and backs off further
            if not (isinstance(e, FLOOD_WAITS) or is_transient(e)):
                raise

    # ---- reading (also in a dry run) --------------------------------------------------------------
    async def history(self, chat: Any, limit: int) -> list[Any]:
        """The chat's `limit` most recent messages, newest first."""

        async def fetch() -> list[Any]:
            return [m async for m in self.client.iter_messages(chat, limit=limit)]

        return await self.call("reading the chat", fetch)

    async def current_draft(self, chat: Any) -> str:
        """The chat's draft as Telegram holds it now ("" for none)."""
        drafts = await self.call("reading the draft", lambda: self.client.get_drafts(chat))
        draft = drafts[0] if isinstance(drafts, list) and drafts else drafts
        return str(getattr(draft, "raw_text", "") or "") if draft else ""

    # ---- writing ------------------------------------------------------------------------------------
    async def save_draft(self, chat: Any, name: str, text: str) -> None:
        """Put `text` in the chat's own draft (the input box): the person edits, sends or discards it."""
        if self.dry_run:
            self.announce(f"[dry run] would put this draft in the chat with {name}:\n{text}")
            return
        request = functions.messages.SaveDraftRequest(peer=chat, message=text)
        await self.call("saving the draft", lambda: self.client(request))

    async def send(
        self, chat: Any, name: str, text: str, *, after_id: int, delay_s: float = 0.0
    ) -> int | None:
        """Send one message, as plain text (the twin's `**` or `[a](b)` are its words, not markup); its id
        (None in a dry run). `after_id`: a message id older than this send (see `_send_once`)."""
        if self.dry_run:
            self.announce(f"[dry run] would send to {name} after {delay_s:.0f}s of typing: {text}")
            return None
        return await self._send_once("sending", chat, text, after_id, parse_mode=None)

    async def send_saved(self, name: str, link: str, text: str, *, after_id: int) -> int | None:
        """Put a suggestion into Saved Messages, headed by a link to the chat it is for; the suggestion itself
        is plain text, exactly as the twin wrote it."""
        if self.dry_run:
            self.announce(f"[dry run] would put in Saved Messages, for {name}:\n{text}")
            return None
        lead = "Twin's draft for "
        shown = " ".join(name.split()) or "the chat"
        entity = types.MessageEntityTextUrl(offset=_utf16_len(lead), length=_utf16_len(shown), url=link)

        def header_link(message: str) -> tuple[str, list[Any]]:
            # Telethon's parse-mode hook: the text untouched, one link entity (a `tg://user?id=` link
            # becomes a mention there, as it does from Markdown)
            return message, [entity]

        return await self._send_once(
            "writing to Saved Messages", SAVED, f"{lead}{shown}:\n\n{text}", after_id, parse_mode=header_link
        )

    async def _send_once(self, what: str, chat: Any, text: str, after_id: int, parse_mode: Any) -> int | None:
        """`send_message` through `call`, sent at most once: a network error or timeout may strike after
        Telegram took the message, so before sending again the chat's messages newer than `after_id` are
        read, and an outgoing one with this text is taken as the first attempt's. Message ids of private
        chats and Saved Messages are the account's own and only grow: anything sent after the caller saw
        `after_id` has a larger one. (Telegram's `random_id` dedupes a resend of the *same* request, and
        Telethon re-sends it so across its own reconnects; but its `send_message` draws a new one on each
        call, and a repeated one is answered RANDOM_ID_DUPLICATE, a 500 to Telethon, not the message.)"""
        uncertain = False

        async def attempt() -> Any:
            nonlocal uncertain
            if uncertain:
                earlier = await self._sent_after(chat, text, after_id)
                if earlier is not None:
                    self.counts.resends_avoided += 1
                    log.info("%s: the earlier attempt went through after all; not sent again", what)
                    return earlier
            try:
                return await self.client.send_message(chat, text, parse_mode=parse_mode, link_preview=False)
            except Exception as e:
                uncertain = uncertain or is_transient(e)  # a FloodWait is a refusal: nothing was sent
                raise

        message = await self.call(what, attempt)
        return int(message.id) if getattr(message, "id", None) is not None else None

    async def _sent_after(self, chat: Any, text: str, after_id: int) -> Any | None:
        """The newest outgoing message in `chat` newer than `after_id` whose text is `text`, if any."""
        wanted = " ".join(text.split())
        async for message in self.client.iter_messages(chat, limit=RESEND_LOOKBACK, min_id=after_id):
            body = getattr(message, "message", None)
            if getattr(message, "out", False) and isinstance(body, str) and " ".join(body.split()) == wanted:
                return message
        return None

    @asynccontextmanager
    async def typing(self, chat: Any) -> AsyncIterator[None]:
        """Show "typing…" in the chat while the block runs (nothing in a dry run; a failure only logs)."""
        if self.dry_run:
            yield
            return
        try:
            action = self.client.action(chat, "typing")
            await action.__aenter__()
        except Exception as e:  # the typing indicator is a courtesy: never worth losing the reply
            log.info("could not show typing (%s)", type(e).__name__)
            yield
            return
        try:
            yield
        finally:
            try:
                await action.__aexit__(None, None, None)
            except Exception as e:
                log.info("could not stop typing (%s)", type(e).__name__)


def chat_link(chat: Any) -> str:
    """A link that opens the chat: t.me for a username, else Telegram's user link."""
    username = getattr(chat, "username", None)
    return f"https://t.me/{username}" if username else f"tg://user?id={chat.id}"


def _utf16_len(text: str) -> int:
    """A length as Telegram counts entity offsets: UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2
