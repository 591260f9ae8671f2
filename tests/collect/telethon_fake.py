"""A stand-in for Telethon's `TelegramClient`: only Telegram's servers are faked.

Entities, messages, media and errors are Telethon's own classes (`types.User`, `types.Message`,
`types.MessageService`, `errors.FloodWaitError`, ...), so attribute names cannot drift from the real
library. The client serves `iter_dialogs()` and `iter_messages(entity, min_id=, reverse=, offset_date=)`
like Telethon does, records every call, and raises scheduled faults mid-iteration.
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
    """Telethon's `Dialog` as the exporter reads it: `entity`, `name`, `is_user`."""

    entity: Any
    name: str

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


@dataclass
class FakeTelegram:
    dialogs: list[FakeDialog]
    history: dict[int, list[Any]]
    faults: list[Fault] = field(default_factory=list)
    dialog_faults: list[BaseException] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    served: Counter[int] = field(default_factory=Counter)
    login_error: BaseException | None = None
    connected: bool = False

    async def start(self, phone: str) -> FakeTelegram:
        if self.login_error is not None:
            raise self.login_error
        self.connected = True
        return self

    async def disconnect(self) -> None:
        self.connected = False

    async def iter_dialogs(self) -> AsyncIterator[FakeDialog]:
        for index, dialog in enumerate(self.dialogs):
            if index == 1 and self.dialog_faults:
                raise self.dialog_faults.pop(0)
            yield dialog

    def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        offset_date: datetime | None = None,
        min_id: int = 0,
        reverse: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        self.calls.append(
            {"dialog": entity.id, "min_id": min_id, "reverse": reverse, "offset_date": offset_date}
        )
        return self._messages(entity.id, min_id, offset_date, reverse)

    async def _messages(
        self, dialog_id: int, min_id: int, offset_date: datetime | None, reverse: bool
    ) -> AsyncIterator[Any]:
        messages = sorted(self.history.get(dialog_id, []), key=lambda m: m.id, reverse=not reverse)
        sent = 0
        for message in messages:
            if message.id <= min_id:
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
                    raise fault.error
            sent += 1
            self.served[dialog_id] += 1
            yield message
