"""The FastAPI app factory: lifespan (load the model once), routers, error shapes, body limit, CORS."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.routes import chat, meta
from serve.service import TwinService, build_service
from serve.settings import Settings, get_settings

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "overloaded_error",
}


def create_app(settings: Settings | None = None, service: TwinService | None = None) -> FastAPI:
    """The API. `settings` default to `get_settings()`; pass `service` to share an engine (tests) —
    the app then neither starts nor stops it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # OpenAI's JS client sends its own x-stainless-* headers
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def error_body(code: int, detail: Any, message: str, param: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    return {"detail": detail, "error": {"message": message, "type": kind, "param": param, "code": None}}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse(error_body(exc.status_code, detail, detail), exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with FastAPI's error list (minus the echoed input: it may be private) and one readable line."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k not in ("input", "url", "ctx")} for e in exc.errors()]
    for e in errors:  # our own checks' messages read as they are written
        e["msg"] = str(e.get("msg", "")).removeprefix("Value error, ")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{where}: {first.get('msg', 'invalid')}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
    body = error_body(422, jsonable_encoder(errors), message, where)
    return JSONResponse(body, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    message = "internal server error"
    return JSONResponse(error_body(500, message, message), status.HTTP_500_INTERNAL_SERVER_ERROR)


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
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
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
