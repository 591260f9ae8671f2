"""A stand-in for Telethon's `TelegramClient` as `reply` uses it, a virtual clock, and a fake twin.

Entities, messages, drafts, updates and errors are Telethon's own classes (`types.User`, `types.Message`,
`Draft`, `types.UpdateDraftMessage`, `errors.FloodWaitError`), and the client has Telethon's method names
(`add_event_handler`, `iter_messages`, `get_drafts`, `send_message`, `action`, `__call__` with
`functions.messages.SaveDraftRequest`, `run_until_disconnected`, `disconnect`); events are dispatched to
the handlers registered for Telethon's event builders (`events.NewMessage`, `events.MessageEdited`,
`events.Raw`). `send_message` formats text as Telethon does: its Markdown unless `parse_mode` says
otherwise (None: plain text; a callable: that parser), so the chat holds what Telegram would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from telethon import events, utils
from telethon.tl import functions, types
from telethon.tl.custom.draft import Draft

from prepare.records import Turn
from reply.actions import TelegramActions
from reply.engine import Replier
from reply.listen import register
from reply.settings import ReplySettings

ME = 1
T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


def person(uid: int, name: str, **flags: Any) -> types.User:
    return types.User(id=uid, first_name=name, access_hash=uid * 7, **flags)


def message(mid: int, peer: int, body: str, *, out: bool = False, at: datetime | None = None) -> Any:
    return types.Message(
        id=mid, peer_id=types.PeerUser(peer), date=at or T0 + timedelta(minutes=mid), message=body, out=out
    )


def message_to(mid: int, peer: int, body: str, entities: list[Any] | None = None) -> Any:
    return types.Message(id=mid, peer_id=types.PeerUser(peer), date=T0, message=body, out=True,
                         entities=entities or None)  # fmt: skip


@dataclass
class FakeEvent:
    """`events.NewMessage.Event` / `events.MessageEdited.Event` as the handlers read them."""

    message: Any
    chat: Any

    @property
    def chat_id(self) -> int:
        return int(self.chat.id) if isinstance(self.chat, types.User) else -int(self.chat.id)

    @property
    def is_private(self) -> bool:
        return isinstance(self.chat, types.User)

    async def get_chat(self) -> Any:
        return self.chat


class Typing:
    """What `client.action(chat, 'typing')` returns: an async context manager."""

    def __init__(self, log: list[tuple[str, int, float]], chat: Any, clock: FakeClock) -> None:
        self.log, self.chat, self.clock = log, chat, clock

    async def __aenter__(self) -> Typing:
        self.log.append(("typing", self.chat.id, self.clock.t))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.log.append(("cancel typing", self.chat.id, self.clock.t))


@dataclass
class FakeClient:
    clock: FakeClock
    chats: dict[int, Any] = field(default_factory=dict)
    history: dict[int, list[Any]] = field(default_factory=dict)
    """Per chat, oldest first."""
    drafts: dict[int, str] = field(default_factory=dict)
    handlers: list[tuple[Callable[[Any], Any], Any]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    sent: list[tuple[Any, str, float]] = field(default_factory=list)
    """(entity, text, virtual time) of every `send_message`."""
    actions: list[tuple[str, int, float]] = field(default_factory=list)
    faults: dict[str, list[BaseException | None]] = field(default_factory=dict)
    """Per method name (`SaveDraftRequest`, `send_message`, ...): errors the next calls raise in turn (None:
    that call goes through)."""
    faults_after: dict[str, list[BaseException]] = field(default_factory=dict)
    """Per method name: errors the next calls raise *after* Telegram carried them out (the connection
    dropped before the answer came back)."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    connected: bool = True
    next_id: int = 1000
    echo_drafts: bool = False
    """Telegram echoing a saved draft back as an `UpdateDraftMessage` while the request is still running."""
    echoed: int = 0
    echo_sends: bool = False
    """Telegram echoing each sent message back as an outgoing `NewMessage`, after `send_message` returned."""

    # ---- Telethon's names ---------------------------------------------------------------------------
    def add_event_handler(self, callback: Callable[[Any], Any], event: Any) -> None:
        self.handlers.append((callback, event))

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connected = True
        self.disconnected.clear()

    async def disconnect(self) -> None:
        self.connected = False
        self.disconnected.set()

    async def run_until_disconnected(self) -> None:
        await self.disconnected.wait()

    async def get_me(self) -> Any:
        return person(ME, "Me", is_self=True)

    def _fault(self, name: str) -> None:
        if self.faults.get(name):
            fault = self.faults[name].pop(0)
            if fault is not None:
                raise fault

    async def __call__(self, request: Any) -> Any:
        self._fault(type(request).__name__)
        self.requests.append(request)
        if isinstance(request, functions.messages.SaveDraftRequest):
            self.drafts[request.peer.id] = request.message
            if self.echo_drafts:
                self.echoed += 1
                await self.i_type(request.peer, request.message, wait=False)
        return True

    async def iter_messages(
        self, entity: Any, limit: int | None = None, *, min_id: int = 0, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Newest first; `min_id`: only messages with a larger id, as Telethon's."""
        self._fault("iter_messages")
        peer = ME if entity == "me" else entity.id
        messages = [m for m in reversed(self.history.get(peer, [])) if m.id > min_id]
        for m in messages[:limit]:
            yield m

    async def get_drafts(self, entity: Any = None) -> Any:
        self._fault("get_drafts")
        text = self.drafts.get(entity.id, "")
        return Draft(self, entity, types.DraftMessage(message=text, date=None) if text else None)

    async def send_message(
        self, entity: Any, message: str = "", *, parse_mode: Any = (), **kwargs: Any
    ) -> Any:
        self._fault("send_message")
        mode = utils.sanitize_parse_mode("md" if parse_mode == () else parse_mode)  # () is Telethon's default
        text, entities = mode.parse(message) if mode else (message, [])
        self.next_id += 1
        self.sent.append((entity, text, self.clock.t))
        peer = ME if entity == "me" else entity.id
        sent = message_to(self.next_id, peer, text, entities)
        self.history.setdefault(peer, []).append(sent)
        if self.echo_sends:
            chat = person(ME, "Me", is_self=True) if entity == "me" else entity
            asyncio.get_running_loop().create_task(self.dispatch(FakeEvent(sent, chat), wait=False))
        if self.faults_after.get("send_message"):
            raise self.faults_after["send_message"].pop(0)
        return sent

    def action(self, entity: Any, action: str) -> Typing:
        assert action == "typing"
        return Typing(self.actions, entity, self.clock)

    # ---- the test's side ------------------------------------------------------------------------------
    async def dispatch(self, event: Any, wait: bool = True) -> None:
        """Hand an event to every handler whose Telethon event builder takes it, then (`wait`) let the
        tasks run."""
        for callback, builder in self.handlers:
            if isinstance(event, FakeEvent):
                edited = getattr(event.message, "edit_date", None) is not None
                if isinstance(builder, events.MessageEdited) and edited:
                    await callback(event)
                elif type(builder) is events.NewMessage and not edited:
                    await callback(event)
            elif isinstance(builder, events.Raw) and isinstance(event, builder.types or object):
                await callback(event)
        if wait:
            await settle()

    async def partner_says(self, chat: Any, mid: int, text: str) -> None:
        m = message(mid, chat.id, text)
        self.history.setdefault(chat.id, []).append(m)
        await self.dispatch(FakeEvent(m, chat))

    async def i_send(self, chat: Any, mid: int, text: str) -> None:
        """The person sends a message from their phone (not through this client)."""
        m = message(mid, chat.id, text, out=True)
        self.history.setdefault(chat.id, []).append(m)
        self.drafts.pop(chat.id, None)
        await self.dispatch(FakeEvent(m, chat))

    async def i_type(self, chat: Any, text: str, wait: bool = True) -> None:
        """The person types in the chat on another device: Telegram syncs the draft."""
        draft = types.DraftMessage(message=text, date=T0) if text else types.DraftMessageEmpty()
        self.drafts[chat.id] = text
        await self.dispatch(types.UpdateDraftMessage(peer=types.PeerUser(chat.id), draft=draft), wait)

    def texts_sent(self) -> list[str]:
        return [text for _, text, _ in self.sent]


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until all wait on the clock (or on nothing)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Virtual time: `sleep` waits until `advance` moves the clock past its deadline."""

    def __init__(self, start: datetime = T0) -> None:
        self.start = start
        self.t = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order and letting each run."""
        end = self.t + seconds
        await settle()
        while True:
            due = [(at, f) for at, f in self.sleepers if at <= end and not f.done()]
            self.sleepers = [(at, f) for at, f in self.sleepers if not f.done()]
            if not due:
                break
            at, future = min(due, key=lambda item: item[0])
            self.t = max(self.t, at)
            future.set_result(None)
            await settle()
        self.t = end


@dataclass
class FakeTwin:
    """The twin server: returns `replies` in turn and records what it was asked."""

    replies: list[str]
    asked: list[tuple[list[Turn], str]] = field(default_factory=list)

    async def suggest(self, turns: list[Turn], partner: str) -> str:
        self.asked.append((list(turns), partner))
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


ANNA = person(101, "Anna")
BORIS = person(102, "Boris")


@dataclass
class World:
    """A Replier wired to a fake Telegram client, a virtual clock and a fake twin (see `build_world`)."""

    client: FakeClient
    clock: FakeClock
    twin: Any
    replier: Replier
    settings: ReplySettings
    announced: list[str]

    def drafts(self) -> list[tuple[int, str]]:
        return [
            (r.peer.id, r.message)
            for r in self.client.requests
            if isinstance(r, functions.messages.SaveDraftRequest)
        ]


Make = Callable[..., World]


def build_world(
    tmp_path: Path,
    replies: tuple[str, ...] = ("sure, see you then",),
    twin: Any = None,
    start: datetime = T0,
    **overrides: Any,
) -> World:
    """Settings for a test (files under `tmp_path`, no quiet hours, no jitter) plus `overrides`; the clock
    starts at `start` (a listener restarted later: the same `tmp_path`, a later `start`)."""
    values: dict[str, Any] = {
        "feedback": tmp_path / "feedback" / "feedback.jsonl",
        "pause_file": tmp_path / "state" / "paused",
        "state_file": tmp_path / "state" / "state.json",
        "prepared": tmp_path / "no-prepared",
        "quiet_hours": "",
        "jitter": 0.0,
        **overrides,
    }
    settings = ReplySettings(_env_file=None, **values)  # type: ignore[call-arg]
    clock = FakeClock(start)
    client = FakeClient(clock, chats={ANNA.id: ANNA, BORIS.id: BORIS})
    announced: list[str] = []
    actions = TelegramActions(client, clock, dry_run=settings.dry_run, announce=announced.append,
                              max_flood_wait_s=settings.max_flood_wait_s)  # fmt: skip
    twin = twin if twin is not None else FakeTwin(list(replies))
    replier = Replier(
        settings, actions, twin, me_id=ME, clock=clock, rng=random.Random(0), announce=announced.append
    )
    register(client, replier)
    return World(client, clock, twin, replier, settings, announced)
