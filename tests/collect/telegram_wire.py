"""Telegram's side of the wire for a real `telethon.TelegramClient`: only the network is faked.

`FakeServer.connection` is a Telethon `Connection` class that, instead of opening a socket, hands the
client's encrypted MTProto packets to this server. The server decrypts them with the session's auth
key (MTProto 2.0, as Telegram does), reads the requests with Telethon's own TL classes, and answers
with encrypted `rpc_result`s: Telethon's whole stack above the socket runs unchanged — its sender and
receiver loops, its automatic reconnects, its own retries of Telegram's 500s (`request_retries`), its
flood-wait and error mapping, `iter_dialogs` / `iter_messages` paging.

The server keeps a small account (`dialogs`: (partner, messages) pairs) and answers GetDialogs and
GetHistory from it with Telegram's offset/add_offset/limit semantics. Faults are scheduled by request
type: `errors[GetHistoryRequest] = [(500, "INTERNAL"), ...]` answers the next requests with those RPC
errors, `drop[GetHistoryRequest] = [n]` cuts the connection instead of answering the n-th such request
and then refuses the next `outage` connection attempts (a network outage).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from hashlib import sha256
from types import SimpleNamespace
from typing import Any

import pytest
from telethon import TelegramClient
from telethon.crypto import AES, AuthKey
from telethon.extensions import BinaryReader
from telethon.network.connection.connection import Connection
from telethon.network.mtprotostate import MTProtoState
from telethon.sessions import MemorySession
from telethon.tl import functions, types
from telethon.tl.core import GzipPacked, MessageContainer
from telethon.tl.tlobject import TLObject

ME = types.User(id=1, is_self=True, access_hash=11, first_name="Me", phone="15550109999")
RPC_RESULT = 0xF35C6D01
VECTOR = 0x1CB5C415
BOOL_TRUE = 0x997275B5
WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
)


class FakeServer:
    """One Telegram data centre with one account on it."""

    def __init__(self, dialogs: list[tuple[types.User, list[Any]]]) -> None:
        self.dialogs = dialogs
        self.auth_key = AuthKey(os.urandom(256))
        self.authorized = True
        self.errors: dict[type, list[tuple[int, str]]] = {}
        """Per request type: the RPC errors the next requests of that type get, in turn."""
        self.drop: dict[type, list[int]] = {}
        """Per request type: drop the connection instead of answering its n-th request (1-based)."""
        self.outage = 0
        """Connection attempts refused after each drop (Telethon makes 6 per connect, 30 per reconnect)."""
        self.down_for = 0
        self.handlers: dict[type, Callable[[Any], Any]] = {}
        """Answers for request types beyond the built-in ones (e.g. the login steps)."""
        self.seen: Counter[str] = Counter()
        self.connection_attempts = 0
        self.refused = 0
        self._msg_counter = 0
        server = self

        class FakeConnection(Connection):
            """A Telethon connection whose 'socket' is this server."""

            def __init__(self, ip: str, port: int, dc_id: int, **kwargs: Any) -> None:
                super().__init__(ip, port, dc_id, **kwargs)
                self._inbox: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

            async def connect(self, timeout: float | None = None, ssl: Any = None) -> None:
                server.connection_attempts += 1
                if server.down_for > 0:
                    server.down_for -= 1
                    server.refused += 1
                    raise ConnectionRefusedError(111, "fake network is down")
                self._inbox = asyncio.Queue()
                self._connected = True

            async def disconnect(self) -> None:
                self._connected = False
                self._inbox.put_nowait(None)  # wake a pending recv()

            async def send(self, data: bytes) -> None:
                if not self._connected:
                    raise ConnectionError("Not connected")
                server.receive(self, data)

            async def recv(self) -> bytes:
                while self._connected:
                    item = await self._inbox.get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is not None:
                        return item
                raise ConnectionError("Not connected")

            def deliver(self, packet: bytes | BaseException) -> None:
                self._inbox.put_nowait(packet)

        self.connection = FakeConnection

    # ---- the client ----------------------------------------------------------------------------
    def client(self, **options: Any) -> TelegramClient:
        """A real TelegramClient on this server (session already holds the auth key, as after login)."""
        session = MemorySession()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = self.auth_key
        return TelegramClient(session, 12345, "0123456789abcdef0123456789abcdef",
                              connection=self.connection, **options)  # fmt: skip

    # ---- MTProto ------------------------------------------------------------------------------
    def receive(self, conn: Any, packet: bytes) -> None:
        msg_key = packet[8:24]
        aes_key, aes_iv = MTProtoState._calc_key(self.auth_key.key, msg_key, True)
        reader = BinaryReader(AES.decrypt_ige(packet[24:], aes_key, aes_iv))
        reader.read_long()  # salt
        session_id = reader.read_long()
        msg_id = reader.read_long()
        reader.read_int()  # seq_no
        body = reader.read(reader.read_int())
        for inner_id, inner_body in self._unpack(msg_id, body):
            answer = self._answer(conn, inner_body)
            if answer is None:
                continue
            if answer == "drop":
                conn.deliver(ConnectionResetError(104, "fake connection reset"))
                return
            conn.deliver(self._encrypt(session_id, struct.pack("<Iq", RPC_RESULT, inner_id) + answer))

    def _unpack(self, msg_id: int, body: bytes) -> list[tuple[int, bytes]]:
        (constructor,) = struct.unpack("<I", body[:4])
        if constructor == GzipPacked.CONSTRUCTOR_ID:
            return self._unpack(msg_id, GzipPacked.read(BinaryReader(body)))
        if constructor != MessageContainer.CONSTRUCTOR_ID:
            return [(msg_id, body)]
        reader = BinaryReader(body[4:])
        items = []
        for _ in range(reader.read_int()):
            inner_id = reader.read_long()
            reader.read_int()  # seq_no
            items.extend(self._unpack(inner_id, reader.read(reader.read_int())))
        return items

    def _encrypt(self, session_id: int, body: bytes) -> bytes:
        self._msg_counter += 1
        msg_id = (int(time.time()) << 32) | (self._msg_counter << 2) | 1  # server ids are odd
        data = struct.pack("<qqqii", 0, session_id, msg_id, 1, len(body)) + body
        padding = os.urandom(-(len(data) + 12) % 16 + 12)
        msg_key = sha256(self.auth_key.key[96:128] + data + padding).digest()[8:24]
        aes_key, aes_iv = MTProtoState._calc_key(self.auth_key.key, msg_key, False)
        return (
            struct.pack("<Q", self.auth_key.key_id)
            + msg_key
            + AES.encrypt_ige(data + padding, aes_key, aes_iv)
        )

    # ---- Telegram's API ------------------------------------------------------------------------
    def _answer(self, conn: Any, body: bytes) -> bytes | str | None:
        request = BinaryReader(body).tgread_object()
        while isinstance(request, WRAPPERS):
            request = request.query
        if isinstance(request, types.MsgsAck):
            return None
        if isinstance(request, functions.PingRequest | functions.PingDelayDisconnectRequest):
            return bytes(types.Pong(msg_id=0, ping_id=request.ping_id))
        kind = type(request)
        self.seen[kind.__name__] += 1
        if self.seen[kind.__name__] in self.drop.get(kind, []):
            self.down_for = self.outage
            return "drop"
        if self.errors.get(kind):
            code, message = self.errors[kind].pop(0)
            return bytes(types.RpcError(error_code=code, error_message=message))
        if kind in self.handlers:
            return _encode(self.handlers[kind](request))
        needs_login = not isinstance(request, functions.help.GetConfigRequest)
        if needs_login and not self.authorized:
            return bytes(types.RpcError(error_code=401, error_message="AUTH_KEY_UNREGISTERED"))
        now = datetime.now(UTC)
        if isinstance(request, functions.help.GetConfigRequest):
            return struct.pack("<I", BOOL_TRUE)  # any object: the client does not look at it
        if isinstance(request, functions.users.GetUsersRequest):
            return _encode([ME])
        if isinstance(request, functions.updates.GetStateRequest):
            return bytes(types.updates.State(pts=1, qts=0, date=now, seq=1, unread_count=0))
        if isinstance(request, functions.updates.GetDifferenceRequest):
            return bytes(types.updates.DifferenceEmpty(date=now, seq=1))
        if isinstance(request, functions.messages.GetDialogsRequest):
            return bytes(self._dialogs())
        if isinstance(request, functions.messages.GetHistoryRequest):
            return bytes(self._history(request))
        return bytes(types.RpcError(error_code=400, error_message=f"FAKE_UNSUPPORTED_{kind.__name__}"))

    def _dialogs(self) -> Any:
        dialogs, tops = [], []
        for partner, messages in self.dialogs:
            top = max(messages, key=lambda m: m.id)
            tops.append(top)
            counts = dict.fromkeys(
                (
                    "read_inbox_max_id",
                    "read_outbox_max_id",
                    "unread_count",
                    "unread_mentions_count",
                    "unread_reactions_count",
                    "unread_poll_votes_count",
                ),
                0,
            )
            dialogs.append(types.Dialog(peer=types.PeerUser(partner.id), top_message=top.id,
                                        notify_settings=types.PeerNotifySettings(), **counts))  # fmt: skip
        return types.messages.Dialogs(
            dialogs=dialogs, messages=tops, chats=[], users=[ME, *(user for user, _ in self.dialogs)]
        )

    def _history(self, request: Any) -> Any:
        """messages.getHistory: newest first; offset_id/offset_date pick the start, add_offset shifts it."""
        partner, messages = next((u, m) for u, m in self.dialogs if u.id == request.peer.user_id)
        newest_first = sorted(messages, key=lambda m: m.id, reverse=True)
        if request.offset_id:
            start = next(
                (i for i, m in enumerate(newest_first) if m.id < request.offset_id), len(newest_first)
            )
        elif request.offset_date:
            start = next(
                (i for i, m in enumerate(newest_first) if m.date < request.offset_date), len(newest_first)
            )
        else:
            start = 0
        start += request.add_offset
        page = newest_first[max(start, 0) : max(start + request.limit, 0)]
        page = [m for m in page if m.id > request.min_id and (not request.max_id or m.id < request.max_id)]
        return types.messages.MessagesSlice(count=len(newest_first), messages=page, topics=[], chats=[],
                                            users=[ME, partner])  # fmt: skip


def _encode(result: Any) -> bytes:
    if isinstance(result, list):
        return struct.pack("<Ii", VECTOR, len(result)) + b"".join(bytes(x) for x in result)
    if isinstance(result, TLObject):
        return bytes(result)
    raise TypeError(f"cannot encode {result!r}")


def _fast_asyncio(sleeps: list[float]) -> SimpleNamespace:
    """The asyncio module as Telethon's modules see it, with `sleep` recorded and not waited."""
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        sleeps.append(delay)
        await real_sleep(0)
        return result

    names = {name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("__")}
    return SimpleNamespace(**(names | {"sleep": sleep}))


def no_telethon_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make Telethon's own waits (2 s between its retries of a 500, 1 s between reconnect attempts,
    pauses between history chunks) instant; returns the list of the waits it asked for."""
    import telethon.client.users
    import telethon.network.mtprotosender
    import telethon.requestiter

    sleeps: list[float] = []
    fast = _fast_asyncio(sleeps)
    for module in (telethon.client.users, telethon.network.mtprotosender, telethon.requestiter):
        monkeypatch.setattr(module, "asyncio", fast)
    return sleeps
