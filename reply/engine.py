"""The listener's logic: Telegram events in, drafts (or, for listed chats, paced messages) out.

`Replier`'s handlers take Telethon's events as they are (`events.NewMessage.Event`,
`events.MessageEdited.Event`, the raw `types.UpdateDraftMessage`); `reply.listen` registers them on a
real client, tests call them with fakes that have the same names.

- A partner's message in a one-to-one chat with a person (never a group, channel, bot, Saved Messages or
  Telegram's notices, whose login codes are never read) starts that chat's task: wait `debounce_s` (the
  partner may be writing a burst; their "typing…" (`events.UserUpdate`) extends the wait until it lapses,
  but to no more than `max_typing_wait_s` after their last message), read the recent history, ask the
  twin, then put the reply in the chat's draft (or Saved Messages, within the rate limits; past them the
  chat's draft). A
  newer partner message, or the partner editing or deleting a message of the burst, cancels the task
  and starts a fresh one. A message that gives the twin nothing to read (sticker, media without a
  caption, service message, forward) neither starts nor cancels one. At most `max_concurrent` chats
  ask the twin server at once; the rest wait.
- Only chats on the auto-reply list get a reply *sent*: outside quiet hours and within the rate limits
  (else it becomes a draft, as does a reply holding a scrubbing placeholder such as `<CARD>`), line by
  line, each after a delay scaled to its length with "typing…" shown. A newer partner message, the
  person's own message, or the person typing (their draft changing) cancels it.
- The stop word, sent by the person in any chat, pauses everything at once (and across restarts); the
  resume word lifts it. Both are matched after Unicode normalisation, ignoring case, spacing and
  invisible characters; the stop word may be followed by other words or `@botname` (pausing is the safe
  direction), the resume word must stand alone. The twin's own sent messages are never taken for them.
- What the person sends after a draft (their burst of messages, until `feedback_window_s` of quiet or the
  partner's next message) is compared with the draft and recorded in the feedback file.
- What the rate limits count and which partner messages have been answered is kept in the state file
  (`reply.state`), written before an auto-reply goes out: a restart neither resets the limits nor answers
  a message Telegram delivers again. A send that cannot be recorded is not made (it becomes a draft).

Message text reaches the log only with `log_content`, and then scrubbed of secrets. Every handler logs
and swallows its own failure: one odd event never stops the listener. Only Telegram refusing the session
itself (`UnauthorizedError`, `AuthKeyError`) does: `logged_out` is set and `stopped` tells `reply.listen`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import unicodedata
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from telethon import errors
from telethon.tl import types

from common.files import make_private_dir
from common.scrub import scrub_secrets
from common.text import valid_unicode
from prepare.feedback import Feedback, Outcome, append_feedback, classify, normalize
from prepare.prompt import clean_text
from prepare.records import Turn
from reply.actions import TelegramActions, TelegramUnavailable, chat_link
from reply.conversation import (
    SERVICE_IDS,
    chat_name,
    context_caps,
    conversation,
    has_placeholder,
    left_out,
    nothing_to_answer,
    prompt_name,
    prompt_turns,
    split_reply,
    typing_delay,
)
from reply.limits import Clock, RateLimiter
from reply.settings import ReplySettings, in_quiet_hours, parse_quiet_hours
from reply.state import ReplyState, load_state
from reply.twin import TwinServerError

log = logging.getLogger(__name__)
HEARD_PER_CHAT = 100
"""Ids of a chat's latest partner messages kept to notice a deletion (a burst longer than that is rare)."""
OWN_PER_CHAT = 64
"""Ids of this process's latest sent messages kept per chat, to know their echoes."""
TYPING_VALID_S = 6.0
"""How long one "typing…" update holds: Telegram's clients repeat it while typing and take it as over after
6 s without one (`updateUserTyping`), so a reply postponed by it waits at least that long."""
_BOT_SUFFIX = re.compile(r"^(/\S+?)@\w+$")
"""`/twinstop@SomeBot`: a command tapped in a chat's command menu."""
E = TypeVar("E")


def guarded(handler: Callable[[Replier, E], Awaitable[None]]) -> Callable[[Replier, E], Awaitable[None]]:
    """An event handler that never raises into the listener: a failure is one log line (no message text)."""

    @functools.wraps(handler)
    async def run(self: Replier, event: E) -> None:
        try:
            await handler(self, event)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.counts["event errors"] += 1
            log.warning("chat %s: %s in %s; event skipped, still listening",
                        getattr(event, "chat_id", None), type(e).__name__, handler.__name__)  # fmt: skip

    return run


def command_words(text: str) -> str:
    """A message as a command reads: NFKC (full-width `／ｔｗｉｎ` is `/twin`), invisible characters
    dropped, case folded, spacing collapsed, a `@botname` after the first word removed."""
    words = unicodedata.normalize("NFKC", clean_text(valid_unicode(text))).casefold().split()
    if words:
        words[0] = _BOT_SUFFIX.sub(r"\1", words[0])
    return " ".join(words)


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
        state: ReplyState | None = None,
    ) -> None:
        """`state`: what earlier runs counted and answered (None: read from `settings.state_file`)."""
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
        self.state = state if state is not None else load_state(settings, self.clock.now().timestamp())
        """The rate limits' recent actions and the answered messages, saved across restarts."""
        self.limiter: RateLimiter = self.state.auto_replies
        self.saved_limiter: RateLimiter = self.state.saved
        """`--mode saved` writes a message per suggestion: as many as auto-replies may, counted apart."""
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.entities: dict[int, Any] = {}
        """Per chat with a task: its entity, to start the task again (an edit or deletion by the partner)."""
        self.heard: dict[int, deque[int]] = {}
        """Per chat: ids of the partner's messages the pending task answers (to notice their deletion)."""
        self.slots = asyncio.Semaphore(settings.max_concurrent)
        """Chats asking the twin server at once."""
        self.waiting: dict[int, Any] = {}
        """Chats whose task is still in its `debounce_s` wait, with their entity."""
        self.since: dict[int, float] = {}
        """Per chat with a task: when the partner last wrote (or edited, or deleted), as a timestamp; their
        "typing…" postpones the reply to at most `max_typing_wait_s` after it."""
        self.pending: dict[int, Pending] = {}
        self.suggested: dict[int, str] = {}
        """Per chat: the twin's latest draft text (Telegram may echo it back as a draft update at once)."""
        self.own: dict[int, deque[int]] = {}
        """Per chat: ids of the latest messages this process sent (their echoes are not the person's)."""
        self.sending: dict[int, Counter[str]] = {}
        """Per chat: texts being sent right now (an echo may come before the id is known)."""
        self.paused = Path(settings.pause_file).exists()
        self.counts: Counter[str] = Counter()
        self.logged_out: BaseException | None = None
        """Telegram's refusal of the session itself (revoked, expired, banned): nothing more can be done."""
        self.stopped = asyncio.Event()
        """Set when the listener must stop (`logged_out`); `reply.listen` waits on it."""

    # ---- events ---------------------------------------------------------------------------------------
    @guarded
    async def on_new_message(self, event: Any) -> None:
        """`events.NewMessage`: the partner's messages start a reply, the person's close a draft."""
        if event.message.out:
            await self._outgoing(event)
        elif event.is_private:
            await self._incoming(event)
        else:
            self._ignore(event.chat_id, "group or channel")

    @guarded
    async def on_message_edited(self, event: Any) -> None:
        """`events.MessageEdited`: the person fixing a message they just sent after a draft, or the partner
        fixing one the pending reply answers (answer the new words instead)."""
        chat_id = _chat_id(event)
        message = event.message
        if message.out:
            pending = self.pending.get(chat_id or 0)
            if pending is not None and message.id in pending.sent:
                pending.sent[message.id] = valid_unicode(message.message or "")
            return
        if chat_id is not None and chat_id in self.tasks and not self.paused:
            self._restart(chat_id, "the partner edited their message")

    @guarded
    async def on_message_deleted(self, event: Any) -> None:
        """`events.MessageDeleted`: the partner taking back a message the pending reply answers. Telegram
        names no chat for private chats, but message ids are the account's own, so the ids say which."""
        deleted = set(getattr(event, "deleted_ids", None) or [])
        for chat_id in [c for c, ids in self.heard.items() if deleted.intersection(ids)]:
            self.heard[chat_id] = deque((i for i in self.heard[chat_id] if i not in deleted), HEARD_PER_CHAT)
            if chat_id in self.tasks and not self.paused:
                self._restart(chat_id, "the partner deleted a message it answered")

    @guarded
    async def on_user_update(self, event: Any) -> None:
        """`events.UserUpdate`: the partner still typing means their burst is not over: wait again, until
        their "typing…" would have lapsed, but never past `max_typing_wait_s` after their last message (a
        client that shows "typing…" without end must not hold the reply back for ever)."""
        chat_id = _chat_id(event)
        chat = self.waiting.get(chat_id or 0)
        if chat is None or chat_id is None or self.paused or not event.typing or event.user_id != chat_id:
            return
        now = self.clock.now().timestamp()
        longest = max(self.settings.debounce_s, self.settings.max_typing_wait_s)
        left = self.since.get(chat_id, now) + longest - now
        if left <= 0:
            return  # the cap is reached: the pending task is already about to answer
        wait = max(self.settings.debounce_s, TYPING_VALID_S)
        task = self.tasks.pop(chat_id, None)
        if task is not None:
            task.cancel()  # only postponed: the new task waits again
        self.counts["postponed: partner typing"] += 1
        self.tasks[chat_id] = asyncio.create_task(self._respond(chat, chat_id, min(wait, left), wait <= left))

    @guarded
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
        chat_id = _chat_id(event)
        if chat_id in SERVICE_IDS or _int(getattr(event, "sender_id", None)) in SERVICE_IDS:
            self._ignore(chat_id, "Telegram notices")  # login codes: never read further, never sent on
            return
        if chat_id is None:
            self._ignore(chat_id, "no chat id")
            return
        try:
            chat = await self.actions.call("reading who wrote", event.get_chat)
        except Exception as e:  # an entity Telethon cannot resolve: that message is lost, say so
            self.counts["unknown chats"] += 1
            log.warning("chat %s: cannot tell who wrote (%s); that message gets no reply", chat_id,
                        type(e).__name__)  # fmt: skip
            return
        reason = left_out(chat, self.me_id)
        if reason is not None:
            self._ignore(chat_id, reason)
            return
        if self.paused or self.logged_out is not None:
            self._ignore(chat_id, "paused" if self.paused else "the session is no longer valid")
            return
        if self.state.answered_before(chat_id, int(event.message.id)):
            self._ignore(chat_id, "already answered (Telegram delivered the message again)")
            return
        pending = self.pending.get(chat_id)
        if pending is not None and pending.sent:
            await self._close(chat_id)  # the partner answered: the person's reply is complete
        skip = nothing_to_answer(event.message)
        if skip is not None:
            self.counts[f"ignored: {skip}"] += 1
            going = "; the pending reply goes on" if chat_id in self.tasks else ""
            log.info("chat %s: %s: nothing for the twin to answer%s", chat_id, skip, going)
            return
        self.heard.setdefault(chat_id, deque(maxlen=HEARD_PER_CHAT)).append(int(event.message.id))
        self._cancel(chat_id, "a newer message arrived")
        self._start(chat, chat_id)

    def _ignore(self, chat_id: int | None, reason: str) -> None:
        self.counts[f"ignored: {reason}"] += 1
        log.info("chat %s: ignored (%s)", chat_id, reason)

    def _start(self, chat: Any, chat_id: int) -> None:
        self.entities[chat_id] = chat
        self.since[chat_id] = self.clock.now().timestamp()
        self.tasks[chat_id] = asyncio.create_task(self._respond(chat, chat_id, self.settings.debounce_s))

    def _restart(self, chat_id: int, why: str) -> None:
        """Cancel the chat's pending reply and start afresh (it reads the history again)."""
        chat = self.entities.get(chat_id)
        self._cancel(chat_id, why)
        if chat is not None:
            self._start(chat, chat_id)

    def _cancel(self, chat_id: int, why: str) -> None:
        task = self.tasks.pop(chat_id, None)
        if task is not None and not task.done():
            task.cancel()
            self.counts["cancelled"] += 1
            log.info("pending reply in chat %s cancelled: %s", chat_id, why)

    async def _respond(self, chat: Any, chat_id: int, wait: float, full_wait: bool = True) -> None:
        """Wait `wait` seconds (the partner may write more), then answer the chat. `full_wait` False: the
        wait was cut short by `max_typing_wait_s`, the partner still "typing…"."""
        name = chat_name(chat)
        try:
            self.waiting[chat_id] = chat
            try:
                await self.clock.sleep(wait)
            finally:
                if self.tasks.get(chat_id) in (asyncio.current_task(), None):
                    self.waiting.pop(chat_id, None)
            if not full_wait:
                self.counts["typing cap reached"] += 1
                log.info("chat %s: the partner has shown \"typing…\" for %gs since their last message; "
                         "answering what they wrote (--max-typing-wait-s)", chat_id,
                         self.settings.max_typing_wait_s)  # fmt: skip
            if self.paused:
                log.info("chat %s: paused; no reply", chat_id)
                return
            if self.slots.locked():
                log.info("chat %s: waiting for the twin server (%d chats at a time, --max-concurrent)",
                         chat_id, self.settings.max_concurrent)  # fmt: skip
            async with self.slots:  # the history is read once this chat's turn has come: it is fresh
                messages = await self.actions.history(chat, self.settings.history)
                ids = [(int(m.id), bool(getattr(m, "out", False)))
                       for m in messages if getattr(m, "id", None) is not None]  # fmt: skip
                newest = max((i for i, _ in ids), default=0)
                heard = max((i for i, out in ids if not out), default=0)  # what this reply answers
                partner = prompt_name(name)
                gap = timedelta(hours=self.settings.gap_hours)
                turns = prompt_turns(conversation(messages, chat_id, gap), self.caps, partner)
                if turns is None:
                    self.counts["nothing to answer"] += 1
                    log.info("chat %s: nothing to answer (the last message with text is yours, or none is "
                             "left)", chat_id)  # fmt: skip
                    return
                reply = clean_text(valid_unicode(await self.twin.suggest(turns, partner)))
            if not reply:
                self.counts["empty replies"] += 1
                log.info("the twin wrote nothing for chat %s; no draft", chat_id)
                return
            log.info("twin reply for chat %s: %s", chat_id, self._shown(reply))
            blocked = self._auto_blocked(chat_id)
            if blocked is None and has_placeholder(reply):
                blocked = "the reply holds a placeholder for a secret (like <CARD>) for you to fill in"
            if blocked is None and self._persons_draft(chat_id, await self.actions.current_draft(chat)):
                blocked = "you have started a reply there yourself (a draft)"
            if blocked is None:  # counted, and saved, before the first line goes out
                blocked = self._claim(self.limiter, chat_id, heard)
            if blocked is None:
                await self._auto_send(chat, chat_id, name, reply, newest)
            else:
                if chat_id in self.auto:
                    log.info("not auto-sending in chat %s: %s; making it a draft", chat_id, blocked)
                await self._suggest(chat, chat_id, name, turns, reply, newest, heard)
        except asyncio.CancelledError:
            raise
        except (errors.UnauthorizedError, errors.AuthKeyError) as e:  # the session itself is gone
            self._log_out(e)
        except TwinServerError as e:
            self.counts["twin server errors"] += 1
            log.warning("no reply for chat %s: %s", chat_id, e)
        except TelegramUnavailable as e:
            self.counts["telegram errors"] += 1
            log.warning("chat %s: gave up (%s)", chat_id, e)
        except errors.RPCError as e:  # blocked by the partner, account deleted, message refused...
            self.counts["telegram refusals"] += 1
            log.warning("chat %s: Telegram refused (%s %s %s); no reply there", chat_id, type(e).__name__,
                        getattr(e, "code", ""), getattr(e, "message", ""))  # fmt: skip
        except Exception as e:  # one chat's failure must not stop the listener
            self.counts["errors"] += 1
            log.warning("chat %s: %s; no reply there", chat_id, type(e).__name__)
        finally:
            if self.tasks.get(chat_id) is asyncio.current_task():
                del self.tasks[chat_id]
                self.entities.pop(chat_id, None)
                self.heard.pop(chat_id, None)
                self.since.pop(chat_id, None)

    def _log_out(self, error: BaseException) -> None:
        """Telegram refuses the session (logged out on another device, expired, the account banned): every
        further call fails the same way, so stop rather than log a failure per chat."""
        self.counts["session refused"] += 1
        if self.logged_out is None:
            self.logged_out = error
            log.warning("Telegram no longer accepts this session (%s); stopping", type(error).__name__)
        for chat_id in list(self.tasks):
            if self.tasks[chat_id] is not asyncio.current_task():
                self._cancel(chat_id, "the session is no longer valid")
        self.stopped.set()

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

    def _claim(self, limiter: RateLimiter, chat_id: int, heard: int) -> str | None:
        """Count one more action in `chat_id` against `limiter`, with the partner's messages up to `heard`
        answered, and save that before the action is taken; why not (None: go ahead). The limit is checked
        again: another chat may have taken the last slot while this one awaited Telegram."""
        now = self.clock.now().timestamp()
        blocked = limiter.blocked(chat_id, now)
        if blocked is not None:
            return blocked
        limiter.record(chat_id, now)  # kept even if the save fails: the limit only gets stricter
        self.state.mark_answered(chat_id, heard, now)
        return self._save_state(now)

    def _save_state(self, now: float) -> str | None:
        """Write the state file (not in a dry run); why it could not be (None: written)."""
        if self.actions.dry_run:
            return None
        try:
            self.state.save(now)
        except OSError as e:
            self.counts["state not saved"] += 1
            why = e.strerror or type(e).__name__
            log.warning("cannot write the reply state %s (%s)", self.state.path, why)
            return f"the reply state {self.state.path} cannot be written ({why}): a restart would forget it"
        return None

    async def _auto_send(self, chat: Any, chat_id: int, name: str, reply: str, newest: int) -> None:
        """Send the reply line by line, paced (`_claim` has counted it); `newest`: the newest message id the
        chat was read with."""
        sending = self.sending.setdefault(chat_id, Counter())
        for index, line in enumerate(split_reply(reply)):
            delay = typing_delay(line, self.settings, self.rng, first=index == 0)
            if not self.actions.dry_run:
                async with self.actions.typing(chat):
                    await self.clock.sleep(delay)
            sending[line] += 1  # its echo may come before `send` returns: not the person's message
            try:
                message_id = await self.actions.send(chat, name, line, after_id=newest, delay_s=delay)
            finally:
                if sending[line] > 0:
                    sending[line] -= 1
                sending += Counter()  # drop zero counts
            if message_id is not None:
                self._mine(chat_id, message_id)
                newest = max(newest, message_id)  # a next line equal to this one is not taken for sent
            self.counts["auto-sent messages"] += 1
        self.counts["auto-replies"] += 1
        log.info("auto-replied in chat %s", chat_id)

    async def _suggest(
        self, chat: Any, chat_id: int, name: str, turns: list[Turn], reply: str, newest: int, heard: int
    ) -> None:
        """Offer the reply for approval: the chat's draft, or (`--mode saved`, within the rate limits) a
        message in Saved Messages; past the limits a draft in the chat instead (no message written).
        `heard`: the newest partner message the reply answers (remembered once it is offered)."""
        previous = self.pending.get(chat_id)
        mode = self.settings.mode
        if mode == "saved":
            limited = self._claim(self.saved_limiter, chat_id, heard)
            if limited is not None:
                mode = "draft"
                self.counts["saved: over the limit, drafted"] += 1
                log.info("chat %s: %s; the suggestion goes to the chat's draft", chat_id, limited)
        if mode == "draft":
            if self._persons_draft(chat_id, await self.actions.current_draft(chat)):
                self.counts["left your own draft alone"] += 1
                log.info("chat %s has a draft of yours: left alone, no twin draft", chat_id)
                return
            self.suggested[chat_id] = reply
            await self.actions.save_draft(chat, name, reply)
            now = self.clock.now().timestamp()
            self.state.mark_answered(chat_id, heard, now)
            self._save_state(now)  # a failure is logged: a draft again after a restart does no harm
        else:
            message_id = await self.actions.send_saved(name, chat_link(chat), reply, after_id=newest)
            if message_id is not None:
                self._mine(self.me_id, message_id)
        if previous is not None:
            await self._close(chat_id, superseded=True)
        self.pending[chat_id] = Pending(chat_id, prompt_name(name), turns[-1].text, tuple(turns[:-1]), reply)
        self.counts["drafts"] += 1
        log.info("draft for chat %s ready (%s)", chat_id, mode)

    # ---- the person writes -----------------------------------------------------------------------------
    def _mine(self, chat_id: int, message_id: int) -> None:
        self.own.setdefault(chat_id, deque(maxlen=OWN_PER_CHAT)).append(message_id)

    def _echo(self, chat_id: int, message: Any, text: str) -> bool:
        """Whether an outgoing message is this process's own (its echo), forgetting it once seen."""
        own = self.own.get(chat_id)
        if own is not None and message.id in own:
            own.remove(message.id)
            return True
        sending = self.sending.get(chat_id)
        if sending is not None and sending[text] > 0:
            sending[text] -= 1
            return True
        return False

    async def _outgoing(self, event: Any) -> None:
        raw = valid_unicode(event.message.message or "")
        text = raw.strip()
        chat_id = _chat_id(event)
        if chat_id is not None and self._echo(chat_id, event.message, text):
            return  # the twin's own words (an auto-reply reading "/twinstop" is no command)
        words = command_words(raw)
        stop, resume = command_words(self.settings.stop_word), command_words(self.settings.resume_word)
        if words == stop or words.startswith(stop + " "):
            self.pause()
            return
        if words == resume:
            self.resume()
            return
        if chat_id is None:
            return
        self._cancel(chat_id, "you wrote in that chat yourself")
        pending = self.pending.get(chat_id)
        if pending is None or not event.is_private:
            return
        if pending.first_sent is None:
            date = event.message.date
            pending.first_sent = date.isoformat() if date is not None else self.clock.now().isoformat()
        pending.sent[event.message.id] = raw
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
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or type(e).__name__
            log.warning("cannot write %s (%s): feedback lost", self.settings.feedback, why)

    # ---- pause ------------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop everything at once: cancel pending replies; no drafts or sends until `resume` (persisted)."""
        self.paused = True
        for chat_id in list(self.tasks):
            self._cancel(chat_id, "paused")
        if not self.actions.dry_run:
            path = Path(self.settings.pause_file)
            try:
                make_private_dir(path.parent)
                path.touch(mode=0o600)
            except OSError as e:
                log.warning("cannot write %s (%s): paused until this process stops only", path,
                            e.strerror or type(e).__name__)  # fmt: skip
        self.announce(f"twin reply: PAUSED (send {self.settings.resume_word} in any chat to resume)")

    def resume(self) -> None:
        self.paused = False
        if not self.actions.dry_run:
            try:
                Path(self.settings.pause_file).unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot remove %s (%s): the next start will be paused", self.settings.pause_file,
                            e.strerror or type(e).__name__)  # fmt: skip
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
        return scrub_secrets(text) if self.settings.log_content else f"<{len(text)} chars>"


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _chat_id(event: Any) -> int | None:
    """The event's chat id (None where Telegram gave none)."""
    return _int(getattr(event, "chat_id", None))
