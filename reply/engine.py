"""The listener's logic: Telegram events in, drafts (or, for listed chats, paced messages) out.

`Replier`'s handlers take Telethon's events as they are (`events.NewMessage.Event`,
`events.MessageEdited.Event`, the raw `types.UpdateDraftMessage`); `reply.listen` registers them on a
real client, tests call them with fakes that have the same names.

- A partner's message in a one-to-one chat with a person (never a group, channel, bot, Saved Messages or
  Telegram's notices) starts that chat's task: wait `debounce_s` (the partner may be writing a burst;
  their "typing…" (`events.UserUpdate`) starts the wait again), read the recent history, ask the twin,
  then put the reply in the chat's draft (or Saved Messages). A newer partner message cancels the task
  and starts a fresh one.
- Only chats on the auto-reply list get a reply *sent*: outside quiet hours and within the rate limits
  (else it becomes a draft), line by line, each after a delay scaled to its length with "typing…" shown.
  A newer partner message, the person's own message, or the person typing (their draft changing)
  cancels it.
- The stop word, sent by the person in any chat, pauses everything at once (and across restarts); the
  resume word lifts it.
- What the person sends after a draft (their burst of messages, until `feedback_window_s` of quiet or the
  partner's next message) is compared with the draft and recorded in the feedback file.

Message text reaches the log only with `log_content`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from telethon.tl import types

from common.files import make_private_dir
from prepare.feedback import Feedback, Outcome, append_feedback, classify, normalize
from prepare.records import Turn
from reply.actions import TelegramActions, TelegramUnavailable, chat_link
from reply.conversation import (
    chat_name,
    context_caps,
    conversation,
    left_out,
    prompt_turns,
    split_reply,
    typing_delay,
)
from reply.limits import Clock, RateLimiter
from reply.settings import ReplySettings, in_quiet_hours, parse_quiet_hours
from reply.twin import TwinServerError

log = logging.getLogger(__name__)


class Twin(Protocol):
    async def suggest(self, turns: list[Turn], partner: str) -> str: ...


@dataclass
class Pending:
    """A twin draft waiting for the person: what it answered, and what they have sent since."""

    chat_id: int
    partner: str
    instruction: str
    turns: tuple[Turn, ...]
    draft: str
    sent: dict[int, str] = field(default_factory=dict)
    """The person's messages in the chat since the draft, by id (edits replace the text)."""
    first_sent: str | None = None
    closer: asyncio.Task[None] | None = None


class Replier:
    def __init__(
        self,
        settings: ReplySettings,
        actions: TelegramActions,
        twin: Twin,
        *,
        me_id: int,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.actions = actions
        self.twin = twin
        self.me_id = me_id
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.announce = announce or (lambda line: log.info("%s", line))
        self.quiet = parse_quiet_hours(settings.quiet_hours)
        self.auto = set(settings.auto_reply)
        self.caps = context_caps(settings.prepared)
        self.limiter = RateLimiter(settings.per_chat_per_hour, settings.global_per_hour)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.waiting: dict[int, Any] = {}
        """Chats whose task is still in its `debounce_s` wait, with their entity."""
        self.pending: dict[int, Pending] = {}
        self.suggested: dict[int, str] = {}
        """Per chat: the twin's latest draft text (Telegram may echo it back as a draft update at once)."""
        self.own: dict[int, set[int | str]] = {}
        """Per chat: ids (and, while sending, texts) of the messages this process sent itself."""
        self.paused = Path(settings.pause_file).exists()
        self.counts: Counter[str] = Counter()

    # ---- events ---------------------------------------------------------------------------------------
    async def on_new_message(self, event: Any) -> None:
        """`events.NewMessage`: the partner's messages start a reply, the person's close a draft."""
        if event.message.out:
            await self._outgoing(event)
        elif event.is_private:
            await self._incoming(event)
        else:
            self.counts["ignored: group or channel"] += 1

    async def on_message_edited(self, event: Any) -> None:
        """`events.MessageEdited`: the person fixing a message they just sent after a draft."""
        pending = self.pending.get(event.chat_id)
        if event.message.out and pending is not None and event.message.id in pending.sent:
            pending.sent[event.message.id] = event.message.message or ""

    async def on_user_update(self, event: Any) -> None:
        """`events.UserUpdate`: the partner still typing means their burst is not over: wait again."""
        chat = self.waiting.get(getattr(event, "chat_id", None) or 0)
        if chat is None or not event.typing or event.user_id != event.chat_id:
            return
        task = self.tasks.pop(event.chat_id, None)
        if task is not None:
            task.cancel()  # only postponed: the new task waits `debounce_s` again
        self.counts["postponed: partner typing"] += 1
        self.tasks[event.chat_id] = asyncio.create_task(self._respond(chat, event.chat_id))

    async def on_draft(self, update: Any) -> None:
        """The raw `types.UpdateDraftMessage`: the person typing (or clearing a draft) on another device."""
        if not isinstance(update, types.UpdateDraftMessage) or not isinstance(update.peer, types.PeerUser):
            return
        chat_id = update.peer.user_id
        text = getattr(update.draft, "message", "") or ""
        pending = self.pending.get(chat_id)
        ours = chat_id in self.suggested and normalize(text) == normalize(self.suggested[chat_id])
        if text.strip() and not ours and chat_id in self.tasks:
            self._cancel(chat_id, "you are typing in that chat")
        if not text.strip() and pending is not None and not pending.sent:
            self._close_later(pending)  # cleared: discarded, unless a message of theirs follows soon

    # ---- the partner writes ------------------------------------------------------------------------------
    async def _incoming(self, event: Any) -> None:
        chat = await event.get_chat()
        reason = left_out(chat, self.me_id)
        if reason is not None:
            self.counts[f"ignored: {reason}"] += 1
            return
        if self.paused:
            self.counts["ignored: paused"] += 1
            return
        chat_id = int(event.chat_id)
        pending = self.pending.get(chat_id)
        if pending is not None and pending.sent:
            await self._close(chat_id)  # the partner answered: the person's reply is complete
        self._cancel(chat_id, "a newer message arrived")
        self.tasks[chat_id] = asyncio.create_task(self._respond(chat, chat_id))

    def _cancel(self, chat_id: int, why: str) -> None:
        task = self.tasks.pop(chat_id, None)
        if task is not None and not task.done():
            task.cancel()
            self.counts["cancelled"] += 1
            log.info("pending reply in chat %s cancelled: %s", chat_id, why)

    async def _respond(self, chat: Any, chat_id: int) -> None:
        name = chat_name(chat)
        try:
            self.waiting[chat_id] = chat
            try:
                await self.clock.sleep(self.settings.debounce_s)
            finally:
                if self.tasks.get(chat_id) in (asyncio.current_task(), None):
                    self.waiting.pop(chat_id, None)
            messages = await self.actions.history(chat, self.settings.history)
            turns = prompt_turns(
                conversation(messages, chat_id, timedelta(hours=self.settings.gap_hours)), self.caps, name
            )
            if turns is None:
                return  # the person already answered, or nothing with text to answer
            reply = (await self.twin.suggest(turns, name)).strip()
            if not reply:
                log.info("the twin wrote nothing for chat %s", chat_id)
                return
            log.info("twin reply for chat %s: %s", chat_id, self._shown(reply))
            blocked = self._auto_blocked(chat_id)
            if blocked is None and self._persons_draft(chat_id, await self.actions.current_draft(chat)):
                blocked = "you have started a reply there yourself (a draft)"
            if blocked is None:
                await self._auto_send(chat, chat_id, name, reply)
            else:
                if chat_id in self.auto:
                    log.info("not auto-sending in chat %s: %s; making it a draft", chat_id, blocked)
                await self._suggest(chat, chat_id, name, turns, reply)
        except asyncio.CancelledError:
            raise
        except TwinServerError as e:
            self.counts["twin server errors"] += 1
            log.warning("no reply for chat %s: %s", chat_id, e)
        except TelegramUnavailable as e:
            self.counts["telegram errors"] += 1
            log.warning("chat %s: gave up (%s)", chat_id, e)
        except Exception as e:  # one chat's failure must not stop the listener
            self.counts["errors"] += 1
            log.warning("chat %s: %s", chat_id, type(e).__name__, exc_info=self.settings.log_content)
        finally:
            if self.tasks.get(chat_id) is asyncio.current_task():
                del self.tasks[chat_id]

    def _persons_draft(self, chat_id: int, draft: str) -> bool:
        """Whether the chat's draft is the person's own writing (not empty, not the twin's last draft)."""
        return bool(draft.strip()) and normalize(draft) != normalize(self.suggested.get(chat_id, ""))

    def _auto_blocked(self, chat_id: int) -> str | None:
        """Why the reply in this chat must not be sent by itself (None: it may be)."""
        if chat_id not in self.auto:
            return "not on the auto-reply list"
        now = self.clock.now()
        if in_quiet_hours(now.time(), self.quiet):
            return f"quiet hours ({self.settings.quiet_hours})"
        return self.limiter.blocked(chat_id, now.timestamp())

    async def _auto_send(self, chat: Any, chat_id: int, name: str, reply: str) -> None:
        self.limiter.record(chat_id, self.clock.now().timestamp())
        own = self.own.setdefault(chat_id, set())
        for index, line in enumerate(split_reply(reply)):
            delay = typing_delay(line, self.settings, self.rng, first=index == 0)
            if not self.actions.dry_run:
                async with self.actions.typing(chat):
                    await self.clock.sleep(delay)
            own.add(line)  # the echo of our own message must not count as the person's
            message_id = await self.actions.send(chat, name, line, delay_s=delay)
            if message_id is not None:
                own.add(message_id)
            self.counts["auto-sent messages"] += 1
        self.counts["auto-replies"] += 1
        log.info("auto-replied in chat %s", chat_id)

    async def _suggest(self, chat: Any, chat_id: int, name: str, turns: list[Turn], reply: str) -> None:
        previous = self.pending.get(chat_id)
        if self.settings.mode == "draft":
            if self._persons_draft(chat_id, await self.actions.current_draft(chat)):
                self.counts["left your own draft alone"] += 1
                log.info("chat %s has a draft of yours: left alone, no twin draft", chat_id)
                return
            self.suggested[chat_id] = reply
            await self.actions.save_draft(chat, name, reply)
        else:
            message_id = await self.actions.send_saved(name, chat_link(chat), reply)
            if message_id is not None:
                self.own.setdefault(self.me_id, set()).add(message_id)
        if previous is not None:
            await self._close(chat_id, superseded=True)
        self.pending[chat_id] = Pending(chat_id, name, turns[-1].text, tuple(turns[:-1]), reply)
        self.counts["drafts"] += 1
        log.info("draft for chat %s ready (%s)", chat_id, self.settings.mode)

    # ---- the person writes -----------------------------------------------------------------------------
    async def _outgoing(self, event: Any) -> None:
        text = (event.message.message or "").strip()
        if text.casefold() == self.settings.stop_word.strip().casefold():
            self.pause()
            return
        if text.casefold() == self.settings.resume_word.strip().casefold():
            self.resume()
            return
        chat_id = int(event.chat_id)
        own = self.own.get(chat_id, set())
        if event.message.id in own or text in own:
            own.discard(text)
            return
        self._cancel(chat_id, "you wrote in that chat yourself")
        pending = self.pending.get(chat_id)
        if pending is None or not event.is_private:
            return
        if pending.first_sent is None:
            date = event.message.date
            pending.first_sent = date.isoformat() if date is not None else self.clock.now().isoformat()
        pending.sent[event.message.id] = event.message.message or ""
        self._close_later(pending)

    def _close_later(self, pending: Pending) -> None:
        """Record the draft's outcome once the person has been quiet for `feedback_window_s`."""
        if pending.closer is not None and not pending.closer.done():
            pending.closer.cancel()

        async def close_after_quiet() -> None:
            await self.clock.sleep(self.settings.feedback_window_s)
            pending.closer = None  # this task is finishing: _close must not cancel it
            await self._close(pending.chat_id)

        pending.closer = asyncio.create_task(close_after_quiet())

    async def _close(self, chat_id: int, superseded: bool = False) -> None:
        """Record what became of the chat's pending draft, and forget it."""
        pending = self.pending.pop(chat_id, None)
        if pending is None:
            return
        if pending.closer is not None and not pending.closer.done():
            pending.closer.cancel()
        response: str | None = None
        similarity = 0.0
        outcome: Outcome
        if pending.sent:
            response = "\n".join(pending.sent[i] for i in sorted(pending.sent) if pending.sent[i].strip())
            outcome, similarity = classify(pending.draft, response)
        else:
            outcome = "superseded" if superseded else "discarded"
        self.counts[f"drafts {outcome}"] += 1
        log.info("draft in chat %s: %s (similarity %.2f)", chat_id, outcome, similarity)
        if self.actions.dry_run:
            return
        record = Feedback(
            outcome=outcome,
            dialog_id=chat_id,
            partner=pending.partner,
            date=pending.first_sent or self.clock.now().isoformat(),
            instruction=pending.instruction,
            turns=pending.turns,
            draft=pending.draft,
            response=response,
            similarity=similarity,
        )
        try:
            append_feedback(self.settings.feedback, record)
        except OSError as e:
            log.warning("cannot write %s (%s): feedback lost", self.settings.feedback, e.strerror)

    # ---- pause ------------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop everything at once: cancel pending replies; no drafts or sends until `resume` (persisted)."""
        self.paused = True
        for chat_id in list(self.tasks):
            self._cancel(chat_id, "paused")
        if not self.actions.dry_run:
            path = Path(self.settings.pause_file)
            make_private_dir(path.parent)
            path.touch(mode=0o600)
        self.announce(f"twin reply: PAUSED (send {self.settings.resume_word} in any chat to resume)")

    def resume(self) -> None:
        self.paused = False
        if not self.actions.dry_run:
            Path(self.settings.pause_file).unlink(missing_ok=True)
        self.announce("twin reply: resumed")

    async def close(self) -> None:
        """Cancel pending replies and record drafts the person has already answered."""
        for chat_id in list(self.tasks):
            self._cancel(chat_id, "shutting down")
        for chat_id, pending in list(self.pending.items()):
            if pending.sent:
                await self._close(chat_id)
            elif pending.closer is not None:
                pending.closer.cancel()
        if self.counts:
            log.info("reply: %s", ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())))

    def _shown(self, text: str) -> str:
        return text if self.settings.log_content else f"<{len(text)} chars>"
