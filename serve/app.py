"""The FastAPI app factory: lifespan (load the model once), routers, error shapes, the checks made on a
request's headers before its body is read (key, encoding), body limit, CORS; and the uvicorn server around
it: header and body timeouts, unparsable requests answered in the API's error shape, an access log that
never shows query values."""

from __future__ import annotations

import asyncio
import copy
import http
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.scrub import scrub_secrets
from serve.deps import check_headers_first
from serve.routes import admin, chat, meta
from serve.service import TwinService, build_service
from serve.settings import Settings, get_settings, startup_warnings

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    503: "overloaded_error",
}


def create_app(settings: Settings | None = None, service: TwinService | None = None) -> FastAPI:
    """The API. `settings` default to `get_settings()`; pass `service` to share an engine (tests) —
    the app then neither starts nor stops it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for warning in startup_warnings(settings):
            log.warning(warning)
        owned = service is None
        app.state.service = build_service(settings) if service is None else service
        if owned:
            app.state.service.engine.start()  # loads and warms up in its thread; /health says when ready
        try:
            yield
        finally:
            if owned:
                app.state.service.engine.stop()

    app = FastAPI(
        title="twin",
        summary="Your Telegram twin behind an OpenAI-compatible chat API",
        version="0.1.0",
        lifespan=lifespan,
    )
    if service is not None:
        app.state.service = service  # also without a lifespan run (ASGI test transports)
    app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(meta.router)
    app.include_router(chat.router)
    app.include_router(admin.router)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)
    # the last added runs first: CORS outermost, so that every answer (a 413 too) carries its headers
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout)
    app.add_middleware(HeadersFirst, settings=settings)  # a 401 before any other answer
    if settings.cors_origins:
        app.add_middleware(
            CORS,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # OpenAI's JS client sends its own x-stainless-* headers
            expose_headers=["Retry-After"],  # a page must see how long to wait after a 503
        )
    return app


MAX_MESSAGE_CHARS = 600
"""An error message is cut here: it names the problem, and never carries much of what was sent."""
MAX_ERRORS = 20
"""A 422's `detail` lists at most this many errors (its message counts them all)."""
MAX_LOC_CHARS = 32
"""A part of an error's `loc` that is not pydantic's own (a field name, or a key the client sent) is cut
here: the longest field name fits."""


def safe_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` fit to go back to a client: secrets (an API key pasted in the wrong field, ...) replaced by
    placeholders, control characters and unpaired surrogates escaped (the body must encode as UTF-8),
    and cut to `limit` characters."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
    return scrub_secrets(text)


def safe_loc(part: str | int) -> str | int:
    if not isinstance(part, str):
        return part
    return part if UNION_TAG.fullmatch(part) and len(part) <= 200 else safe_message(part, MAX_LOC_CHARS)


def error_body(code: int, detail: Any, message: str, param: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    return {"detail": detail, "error": {"message": message, "type": kind, "param": param, "code": None}}


UNPARSED_BODY = "There was an error parsing the body"
"""FastAPI's 400 for a body `json.loads` failed on with something else than a JSONDecodeError."""


def unparsed_body(cause: BaseException | None) -> str:
    """What was wrong with a body FastAPI could not parse (its own detail does not say)."""
    if isinstance(cause, UnicodeError):
        why = "it is not UTF-8 text"
    elif isinstance(cause, RecursionError):
        why = "it nests arrays or objects too deep"
    elif isinstance(cause, ValueError) and "digits" in str(cause):
        why = "a number in it has too many digits"
    else:
        why = "it is not valid JSON"
    return f"error parsing the body: {why}; send one JSON object, UTF-8 encoded"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == UNPARSED_BODY:
        detail = unparsed_body(exc.__cause__)
    elif exc.status_code == 404 and detail == "Not Found":  # no route: not one of ours
        detail = f"no such endpoint: {request.url.path[:100]!r} (see /docs for the API)"
    elif exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
        detail = f"method {request.method[:16]} is not allowed here: use {exc.headers['Allow']}"
    return error_response(exc, detail)


def error_response(exc: StarletteHTTPException, detail: str | None = None) -> JSONResponse:
    """`exc` (its detail, or `detail`) in the API's error shape, with its headers."""
    detail = safe_message(detail if detail is not None else str(exc.detail))
    return JSONResponse(error_body(exc.status_code, detail, detail), exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with FastAPI's error list (minus the echoed input: it may be private) and one readable line."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k not in ("input", "url", "ctx")} for e in exc.errors()]
    for e, raw in zip(errors, exc.errors(), strict=True):
        if e.get("type") == "json_invalid":  # loc ("body", offset): say where, and what the parser said
            at = e.get("loc", ("body",))[-1]
            said = (raw.get("ctx") or {}).get("error", "")
            e["loc"] = ("body",)
            e["msg"] = f"JSON decode error at character {at}: {said}" if said else "JSON decode error"
        # our own checks' messages read as they are written
        e["msg"] = safe_message(str(e.get("msg", "")).removeprefix("Value error, "))
        # a key the client sent (of an unknown field, a logit_bias entry) may be anything, of any length
        e["loc"] = [safe_loc(p) for p in e.get("loc", ())]
    where, said, more = readable_error(errors)
    message = f"{where}: {said}" + (f" (and {more} more)" if more else "")
    # 512 bad messages are 512 errors: the first few say what to fix without a body of their size
    body = error_body(422, jsonable_encoder(errors[:MAX_ERRORS]), safe_message(message), where)
    return JSONResponse(body, status.HTTP_422_UNPROCESSABLE_CONTENT)


UNION_TAG = re.compile(r"str|int|float|bool|none|(list|dict|tuple|function-\w+)\[.*\]|constrained-\w+")
"""The loc parts pydantic adds for a union's members (`content.str`, `content.list[TextPart]`)."""


def readable_error(errors: list[dict[str, Any]]) -> tuple[str, str, int]:
    """The field, message and count of other problems for the one line a person reads.

    For a union (`content`: a string or a list of parts) pydantic reports every member that failed; the
    line names the member the input was meant for (the one failing on something else than its type), or
    all the types it could have had: "messages.0.content: Input should be a valid string or a valid list".
    """
    if not errors:
        return "body", "invalid request", 0

    def field(e: dict[str, Any]) -> str:
        parts = [str(p) for p in e.get("loc", ()) if p != "body"]
        return ".".join(p for p in parts if not UNION_TAG.fullmatch(p)) or "body"

    def in_union(e: dict[str, Any]) -> bool:
        return any(isinstance(p, str) and UNION_TAG.fullmatch(p) for p in e.get("loc", ()))

    def wrong_type(e: dict[str, Any]) -> bool:
        return in_union(e) and str(e.get("type", "")).endswith("_type")

    real = [e for e in errors if not wrong_type(e)]
    unions = {field(e) for e in errors if wrong_type(e)}
    # a union whose member failed on something else than its type is that same problem
    unions = {u for u in unions if not any(field(e) == u or field(e).startswith(f"{u}.") for e in real)}
    if real:
        return field(real[0]), str(real[0].get("msg", "invalid")), len(real) - 1 + len(unions)
    where = field(errors[0])
    types = [e for e in errors if field(e) == where]
    said = " or ".join(str(e.get("msg", "")).removeprefix("Input should be ") for e in types)
    return where, f"Input should be {said}", len(unions) - 1


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    message = "internal server error"
    return JSONResponse(error_body(500, message, message), status.HTTP_500_INTERNAL_SERVER_ERROR)


class HeadersFirst:
    """Refuses a request its headers already refuse (`serve.deps.check_headers_first`: no key, a
    compressed body) before anything reads its body. Preflights (OPTIONS) pass: they carry no key."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            try:
                await check_headers_first(Request(scope), self.settings)
            except StarletteHTTPException as e:
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CORS(CORSMiddleware):
    """Starlette's CORS, a refused preflight answered in the API's error shape and saying what to change
    (Starlette's is the text "Disallowed CORS origin")."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        detail = (
            f"CORS preflight refused ({refused}): this server answers pages from the origins in "
            f"TWIN_CORS_ORIGINS, with the methods {', '.join(self.allow_methods)}"
        )
        headers = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        return JSONResponse(error_body(response.status_code, detail, detail), response.status_code, headers)


class BodySizeLimit:
    """413 for bodies over `max_bytes`, by Content-Length up front or while a chunked body arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            detail = "the Content-Length header is not a number of bytes"
            response = JSONResponse(error_body(400, detail, detail), status.HTTP_400_BAD_REQUEST)
            await response(scope, receive, send)
            return
        if length is not None and int(length) > self.max_bytes:
            detail = f"request body over {self.max_bytes} bytes (TWIN_MAX_BODY_BYTES)"
            response = JSONResponse(error_body(413, detail, detail), status.HTTP_413_CONTENT_TOO_LARGE)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE,
                        f"request body over {self.max_bytes} bytes (TWIN_MAX_BODY_BYTES)",
                    )
            return message

        await self.app(scope, limited, send)


class BodyTimeout:
    """408 (and the connection closed) when a request's body has not all arrived `timeout_s` after its
    headers: a client that stalls, or trickles a byte at a time, must not hold a connection for ever."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False

        async def timed() -> Message:
            nonlocal body_done
            if body_done:  # later receives wait for the client to go away: no limit
                return await receive()
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                raise HTTPException(
                    status.HTTP_408_REQUEST_TIMEOUT,
                    f"the request body did not arrive within {self.timeout_s:g} s (TWIN_BODY_TIMEOUT)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed, send)


# ------------------------------------------------------------------------------------------- uvicorn
CREDENTIAL_PARAMS = frozenset(
    {"key", "api_key", "apikey", "api-key", "token", "access_token", "auth", "password", "secret"}
)


def redact_query(target: str) -> str:
    """`/v1/models?api_key=sk-1&x=2` -> `/v1/models?api_key=***&***`: the API takes no query parameters,
    and a key pasted into one must not end up in a log file. Only the usual credential names are kept
    (so the log shows that one was sent); anything else could itself be a secret."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in filter(None, query.split("&")):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}=***" if equals and name.lower() in CREDENTIAL_PARAMS else "***")
    return f"{path}?{'&'.join(parts)}"


class RedactQuery(logging.Filter):
    """On uvicorn's access log: its records' args are (client, method, path?query, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def raw_error_response(code: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response in the API's error shape, closing the connection: for the protocol
    below, which answers before any request reaches the app."""
    body = json.dumps(error_body(code, message, message)).encode()
    head = (
        f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ParseErrorConnection(h11.Connection):
    """h11's connection, keeping the error that made a request unparsable (its status hint: 431 for
    headers over the limit, else 400)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection (after a 408) whose request headers have not all
    arrived `timeout_s` after its first byte, or after the connection opened. uvicorn itself times out
    only idle kept-alive connections: a client sending half a header line was held for ever. A request
    h11 cannot parse gets the API's error shape (uvicorn's own answer is a text/plain 400), and headers
    over h11's limit a 431 that says so."""
    from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            limit = config.h11_max_incomplete_event_size
            self.max_head_bytes = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if limit is None else limit
            self.conn = ParseErrorConnection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self.watch_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.watch_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_header_timer()
            super().connection_lost(exc)

        def watch_headers(self) -> None:
            """Armed while h11 waits for a request line and headers (IDLE), off once they are in."""
            waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting and self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout_s, self.headers_timed_out)
            elif not waiting:
                self.stop_header_timer()

        def stop_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def headers_timed_out(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                message = f"the request headers did not arrive within {timeout_s:g} s (TWIN_HEADER_TIMEOUT)"
                self.transport.write(raw_error_response(status.HTTP_408_REQUEST_TIMEOUT, message))
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to what h11 could not parse (`msg` is uvicorn's; h11's own message may
            quote the request, so neither is sent)."""
            assert isinstance(self.conn, ParseErrorConnection)
            if self.conn.error is not None and self.conn.error.error_status_hint == 431:
                code = status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE
                message = (
                    f"the request line and headers are over {self.max_head_bytes} bytes: send fewer or "
                    "shorter headers"
                )
            else:
                code = status.HTTP_400_BAD_REQUEST
                message = "malformed HTTP/1.1 request: its request line or headers could not be parsed"
            if not self.transport.is_closing():
                self.transport.write(raw_error_response(code, message))
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_options(settings: Settings, log_level: str = "info") -> dict[str, Any]:
    """How `python -m serve` runs the app (`uvicorn.run(app, **uvicorn_options(settings))`): h11 with the
    header timeout, uvicorn's keep-alive timeout, uvicorn's logging with `RedactQuery` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config.setdefault("filters", {})["redact_query"] = {"()": RedactQuery}
    log_config["handlers"]["access"].setdefault("filters", []).append("redact_query")
    return {
        "host": settings.host,
        "port": settings.port,
        "http": header_timeout_protocol(settings.header_timeout),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "log_config": log_config,
        "log_level": log_level,
    }
