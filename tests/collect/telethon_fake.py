"""A stand-in for Telethon's `TelegramClient`: only Telegram's servers are faked.

Entities, messages, media and errors are Telethon's own classes (`types.User`, `types.Message`,
`types.MessageService`, `errors.FloodWaitError`, ...), so attribute names cannot drift from the real
library. The client serves `iter_dialogs()` and
`iter_messages(entity, min_id=, max_id=, reverse=, offset_date=)` like Telethon does, records every
call, and raises scheduled faults mid-iteration. A `ConnectionError` fault also drops the connection,
as Telethon's client does once its own reconnect attempts are spent: every later request fails at
once until `connect()` is called. The login steps (`connect`, `is_user_authorized`,
`send_code_request`, `sign_in`) take their outcomes from lists.

The network-level behaviour (Telethon's own retries and reconnects) is tested against the real
`TelegramClient` in test_telegram_network.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from telethon.tl import types

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)


@dataclass
class FakeDialog:
    """Telethon's `Dialog` as the exporter reads it: `entity`, `name`, `is_user`, `date`."""

    entity: Any
    name: str
    date: datetime | None = None
    """When the chat's last message was sent (FakeTelegram fills it in from the history)."""

    @property
    def is_user(self) -> bool:
        return isinstance(self.entity, types.User)


@dataclass
class Group:
    """Any non-user entity (a group or channel): `Dialog.is_user` is False for it."""

    id: int
    title: str


def user(uid: int, name: str, **flags: Any) -> FakeDialog:
    return FakeDialog(types.User(id=uid, first_name=name, **flags), name)


def text(
    mid: int, peer: int, body: str, *, out: bool = False, minutes: float | None = None, **kw: Any
) -> Any:
    """A text message `mid` in the chat with `peer`, sent `minutes` (default: `mid`) after T0."""
    date = T0 + timedelta(minutes=mid if minutes is None else minutes)
    return types.Message(id=mid, peer_id=types.PeerUser(peer), date=date, message=body, out=out, **kw)


def service(mid: int, peer: int) -> Any:
    return types.MessageService(
        id=mid,
        peer_id=types.PeerUser(peer),
        date=T0 + timedelta(minutes=mid),
        action=types.MessageActionPhoneCall(call_id=mid, duration=30),
    )


def forwarded_header() -> Any:
    return types.MessageFwdHeader(date=T0, from_name="Some Channel")


@dataclass
class Fault:
    """Raise `error` in `dialog_id`'s message stream after `after` messages of one `iter_messages` call."""

    dialog_id: int
    after: int
    error: BaseException
    times: int = 1
    only_min_id: int | None = None
    """Fire only in calls that ask for messages after this id (e.g. every retry after an outage)."""


class NotConnected(ConnectionError):
    """Telethon's `ConnectionError('Cannot send requests while disconnected')`."""


@dataclass
class FakeTelegram:
    dialogs: list[FakeDialog]
    history: dict[int, list[Any]]
    faults: list[Fault] = field(default_factory=list)
    dialog_faults: list[BaseException] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    served: Counter[int] = field(default_factory=Counter)
    connected: bool = False
    connects: int = 0
    connect_errors: list[BaseException] = field(default_factory=list)
    authorized: bool = True
    send_code_error: BaseException | None = None
    code_results: list[BaseException | None] = field(default_factory=list)
    """What each `sign_in(phone, code=)` does in turn: raise the error, or succeed (None)."""
    password_results: list[BaseException | None] = field(default_factory=list)
    sign_ins: list[dict[str, Any]] = field(default_factory=list)

    # ---- connection and login, as TelegramClient names them ------------------------------------
    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connects += 1
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def is_user_authorized(self) -> bool:
        self._check_connected()
        return self.authorized

    async def send_code_request(self, phone: str) -> None:
        self._check_connected()
        if self.send_code_error is not None:
            raise self.send_code_error

    async def sign_in(
        self, phone: str | None = None, code: str | None = None, *, password: str | None = None
    ) -> None:
        self._check_connected()
        self.sign_ins.append({"code": code, "password": password})
        results = self.password_results if password is not None else self.code_results
        outcome = results.pop(0) if results else None
        if outcome is not None:
            raise outcome
        self.authorized = True

    def _check_connected(self) -> None:
        if not self.connected:
            raise NotConnected("Cannot send requests while disconnected")

    # ---- reading ------------------------------------------------------------------------------
    async def iter_dialogs(self) -> AsyncIterator[FakeDialog]:
        self._check_connected()
        for index, dialog in enumerate(self.dialogs):
            if index == 1 and self.dialog_faults:
                self._fail(self.dialog_faults.pop(0))
            history = self.history.get(dialog.entity.id)
            dialog.date = max((m.date for m in history), default=None) if history else None
            yield dialog

    def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        offset_date: datetime | None = None,
        min_id: int = 0,
        max_id: int = 0,
        reverse: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        self.calls.append({"dialog": entity.id, "min_id": min_id, "max_id": max_id, "reverse": reverse,
                           "offset_date": offset_date})  # fmt: skip
        return self._messages(entity.id, min_id, max_id, offset_date, reverse)

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, ConnectionError):
            self.connected = False  # as Telethon after its own reconnect attempts
        raise error

    async def _messages(
        self, dialog_id: int, min_id: int, max_id: int, offset_date: datetime | None, reverse: bool
    ) -> AsyncIterator[Any]:
        self._check_connected()
        messages = sorted(self.history.get(dialog_id, []), key=lambda m: m.id, reverse=not reverse)
        sent = 0
        for message in messages:
            if message.id <= min_id or (max_id and message.id >= max_id):
                continue
            if offset_date is not None and reverse and message.date <= offset_date:
                continue  # Telethon: with reverse=True, offset_date means "after this date" (exclusive)
            for fault in self.faults:
                if (
                    fault.dialog_id == dialog_id
                    and fault.after == sent
                    and fault.times > 0
                    and fault.only_min_id in (None, min_id)
                ):
                    fault.times -= 1
                    self._fail(fault.error)
            sent += 1
            self.served[dialog_id] += 1
            yield message
