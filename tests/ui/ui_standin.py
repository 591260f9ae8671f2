"""A scriptable stand-in twin server on 127.0.0.1, and free ports, for the ui tests.

The stand-in is a real server on a real socket (so `ui.client` is exercised as it is, httpx and all); it
only lets a test decide what the twin server answers, including the failures that a healthy real server
cannot be made to produce on demand (503, a stalled reply, a stream cut short). `serve_twins` makes it a
server of several twins: `GET /v1/models` lists them and each reply says which twin the request asked for.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    url: str
    answer: Answer
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Answer] = field(default_factory=dict)
    """Answers by request path (e.g. "/v1/models"); a path not here gets `answer`."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chunk(text: str, model: str = "twin") -> dict[str, Any]:
    """An OpenAI chat.completion.chunk carrying `text`."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def sse(events: Sequence[dict[str, Any] | str], done: bool = True, pause_s: float = 0.0) -> Answer:
    """Answer with server-sent events: dicts become `data: <json>`, strings are written as raw lines."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for event in events:
            line = event if isinstance(event, str) else f"data: {json.dumps(event)}"
            handler.wfile.write(f"{line}\n\n".encode())
            handler.wfile.flush()
            time.sleep(pause_s)
        if done:
            handler.wfile.write(b"data: [DONE]\n\n")

    return answer


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """Answer `code` with `body` (JSON unless it is a str) and extra `headers`."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)

    return answer


def model_list(ids: Sequence[str]) -> Answer:
    """Answer `GET /v1/models` as the twin server does: the twins `ids`, the default first."""
    cards = [{"id": name, "object": "model", "created": 0, "owned_by": "twin"} for name in ids]
    return status(200, {"object": "list", "data": cards})


def echo_twin(ids: Sequence[str]) -> Answer:
    """Answer a chat request with `I am <model>.` streamed, from twin `model` (the default, `ids[0]`, when the
    request names none); an unknown `model` gets the twin server's 404 that names the served twins."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = getattr(handler, "body", None) or {}
        name = body.get("model") or ids[0]
        if name not in ids:
            served = ", ".join(repr(i) for i in ids)
            detail = f"model {name!r} does not exist: this server serves {served} (see GET /v1/models)"
            status(404, {"detail": detail})(handler)
            return
        sse([chunk("I am ", name), chunk(f"{name}.", name)])(handler)

    return answer


def serve_twins(standin: StandIn, ids: Sequence[str]) -> None:
    """Make `standin` a twin server serving the twins `ids` (the first is the default)."""
    standin.routes["/v1/models"] = model_list(ids)
    standin.routes["/v1/chat/completions"] = echo_twin(ids)


@contextmanager
def running_standin() -> Iterator[StandIn]:
    """A stand-in twin server; set `.answer` to decide its reply. Records every request in `.seen`."""
    holder: list[StandIn] = []

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            self.body = body
            holder[0].seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            try:
                holder[0].routes.get(self.path, holder[0].answer)(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nothing to answer to

        do_GET = handle_any
        do_POST = handle_any

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(StandIn(f"http://127.0.0.1:{server.server_address[1]}", sse([chunk("hi")])))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
