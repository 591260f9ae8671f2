"""Hostile requests, round 2: what the HTTP layer around the chat does with them, on the real app and the
real tiny model (TestClient, and a real uvicorn with `python -m serve`'s protocol on 127.0.0.1).

A client without the key gets its 401 before its body is read; a compressed body is a 415 naming the
encoding; refused CORS preflights, unparsable requests and headers over the limit answer in the API's
error shape; every answer to a listed origin carries CORS headers (Retry-After readable); a stream that
fails after it began ends with OpenAI's error object, and its slot is free; requests still waiting for
their first token when the engine stops are 503s.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from serve_helpers import make_settings, pause_worker, user, uvicorn_in_thread
from test_serve_hostile import OPENAI_KEY, assert_clean_4xx

from serve.app import create_app, uvicorn_options
from serve.service import TwinService, build_service
from serve.settings import Settings

CHAT = "/v1/chat/completions"
TWINS = "/v1/admin/twins"
API_KEY = "round-two-api-key-0123456789"
ADMIN_KEY = "round-two-admin-key-0123456789"
AS_CLIENT = {"Authorization": f"Bearer {API_KEY}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ORIGIN = "http://localhost:8501"
ERROR_KEYS = {"message", "type", "param", "code"}
HI = json.dumps({"messages": [user("hi")], "max_tokens": 2}).encode()


def error_of(r: Any) -> dict[str, Any]:
    """The OpenAI error object of an error response (all four keys, a message)."""
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"], error
    return error


@pytest.fixture(scope="module")
def keyed(serve_settings: Settings, service: TwinService) -> Iterator[TestClient]:
    settings = serve_settings.model_copy(
        update={"api_key": SecretStr(API_KEY), "admin_key": SecretStr(ADMIN_KEY)}
    )
    with TestClient(create_app(settings, service)) as client:
        yield client


# ---- headers that refuse a request whatever its body ---------------------------------------------------

BODIES = {
    "truncated": (b"{", "application/json"),
    "not-utf8": (b'{"messages": "\xff"}', "application/json"),
    "deep": (b"[" * 50_000, "application/json"),
    "wrong-fields": (b'{"messages": 5}', "application/json"),
    "gzip": (gzip.compress(HI), "application/json"),
    "text": (b"{", "text/plain"),
    "none": (b"", "application/json"),
}


@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Bearer {API_KEY}x", f"Basic {API_KEY}", f"Bearer {ADMIN_KEY}"],
    ids=["none", "empty", "scheme-only", "wrong", "basic", "admin-key"],
)
def test_no_key_is_401_before_the_body_is_read(
    keyed: TestClient, body: str, authorization: str | None
) -> None:
    """Before: a malformed body without the key got its 400/422 (the body parsed for anyone)."""
    raw, content_type = BODIES[body]
    headers = {"content-type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    if body == "gzip":
        headers["content-encoding"] = "gzip"
    r = keyed.post(CHAT, content=raw, headers=headers)
    assert_clean_4xx(r, 401, "Authorization: Bearer <TWIN_API_KEY>")
    assert error_of(r)["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
    assert API_KEY not in r.text


@pytest.mark.parametrize("body", ["truncated", "deep", "wrong-fields", "gzip"])
def test_admin_without_its_key_is_401_before_the_body_is_read(keyed: TestClient, body: str) -> None:
    raw, content_type = BODIES[body]
    headers = {"content-type": content_type, **AS_CLIENT}  # the API key is not the admin key
    if body == "gzip":
        headers["content-encoding"] = "gzip"
    assert_clean_4xx(keyed.post(TWINS, content=raw, headers=headers), 401, "TWIN_ADMIN_KEY")


def test_with_the_key_a_bad_body_still_gets_its_own_4xx(keyed: TestClient) -> None:
    for name, status, said in [
        ("truncated", 422, "JSON decode error"),
        ("not-utf8", 400, "not UTF-8 text"),
        ("deep", 400, "too deep"),
        ("wrong-fields", 422, "messages: Input should be a valid list"),
        ("text", 415, "Content-Type: application/json"),
    ]:
        raw, content_type = BODIES[name]
        r = keyed.post(CHAT, content=raw, headers={"content-type": content_type, **AS_CLIENT})
        assert_clean_4xx(r, status, said)
    assert (
        keyed.post(CHAT, content=HI, headers={"content-type": "application/json", **AS_CLIENT}).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("gzip", gzip.compress(HI)),
        ("GZIP", gzip.compress(HI)),
        ("deflate", zlib.compress(HI)),
        ("br", HI),  # mislabelled: was parsed as the plain JSON it is
        ("gzip, identity", gzip.compress(HI)),
        ("x" * 5000, HI),
        (OPENAI_KEY, HI),
    ],
    ids=["gzip", "upper-case", "deflate", "br-mislabelled", "two-codings", "huge", "secret"],
)
def test_a_compressed_body_is_415_naming_the_encoding(client: TestClient, encoding: str, raw: bytes) -> None:
    """Before: a gzip body was refused as "not UTF-8 text" (400), a mislabelled one served."""
    r = client.post(
        CHAT, content=raw, headers={"content-type": "application/json", "content-encoding": encoding}
    )
    assert_clean_4xx(r, 415, "Content-Encoding")
    assert r.headers["accept-encoding"] == "identity"
    assert "x" * 100 not in r.text and OPENAI_KEY[:12] not in r.text
    if len(encoding) < 20 and "," not in encoding:  # a list of codings is not repeated
        assert f"'Content-Encoding: {encoding}'" in error_of(r)["message"]


def test_an_identity_encoded_body_is_served(client: TestClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "identity"}
    assert client.post(CHAT, content=HI, headers=headers).status_code == 200


# ---- CORS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors(serve_settings: Settings, service: TwinService) -> Iterator[TestClient]:
    settings = serve_settings.model_copy(update={"cors_origins": [ORIGIN], "api_key": SecretStr(API_KEY)})
    with TestClient(create_app(settings, service)) as client:
        yield client


def preflight(
    method: str, origin: str = ORIGIN, headers: str = "authorization, content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


@pytest.mark.parametrize(
    ("path", "method"),
    [(CHAT, "POST"), ("/v1/models", "GET"), ("/health", "GET")],
    ids=["chat", "models", "health"],
)
def test_the_ui_endpoints_pass_their_preflight(cors: TestClient, path: str, method: str) -> None:
    r = cors.options(path, headers=preflight(method, headers="authorization, content-type, x-stainless-os"))
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-stainless-os" in r.headers["access-control-allow-headers"]


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        (preflight("POST", origin="https://evil.example"), "origin"),
        (preflight("DELETE"), "method"),
        (preflight("PUT", origin="null"), "origin, method"),
    ],
    ids=["origin", "method", "both"],
)
def test_a_refused_preflight_is_in_the_error_shape(
    cors: TestClient, headers: dict[str, str], refused: str
) -> None:
    """Before: a text/plain "Disallowed CORS origin"."""
    r = cors.options(CHAT, headers=headers)
    assert_clean_4xx(r, 400, f"CORS preflight refused ({refused})")
    assert "TWIN_CORS_ORIGINS" in error_of(r)["message"] and "GET, POST" in error_of(r)["message"]


def test_every_answer_to_a_listed_origin_carries_cors_headers(
    cors: TestClient, serve_settings: Settings, service: TwinService
) -> None:
    """Before: a 413 (answered outside CORS) had none, so the page could not read it; Retry-After was
    not exposed, so a page could not see how long to wait after a 503."""
    origin = {"Origin": ORIGIN, "content-type": "application/json"}
    too_big = cors.post(CHAT, content=b"x" * 2_000_000, headers={**origin, **AS_CLIENT})
    no_key = cors.post(CHAT, content=HI, headers=origin)
    for r, status in ((too_big, 413), (no_key, 401)):
        assert r.status_code == status and r.headers["access-control-allow-origin"] == ORIGIN, r.headers
    settings = serve_settings.model_copy(
        update={"cors_origins": [ORIGIN], "request_timeout": 1e-9, "retry_after": 7}
    )
    with TestClient(create_app(settings, service)) as busy:
        r = busy.post(CHAT, content=HI, headers=origin)
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()


# ---- the real protocol: what h11 cannot parse ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(serve_settings: Settings, service: TwinService) -> Iterator[int]:
    """The app behind a real uvicorn on 127.0.0.1 with `python -m serve`'s h11 protocol (in a thread,
    sharing the started engine); yields its port."""
    options = uvicorn_options(serve_settings, log_level="warning")
    with uvicorn_in_thread(create_app(serve_settings, service), http=options["http"]) as port:
        yield port


def exchange(port: int, request: bytes) -> bytes:
    """Send `request`, read until the server closes (a reset after its answer counts as closed)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                received += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    return received


def status_and_error(received: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), received[:300]
    error = json.loads(body)["error"]
    assert set(error) == ERROR_KEYS, error
    return int(head.split(b" ", 2)[1]), error


@pytest.mark.parametrize(
    ("request_bytes", "status", "said"),
    [
        # headers still not ended after h11's 16 KiB (a complete block that arrives at once is parsed)
        (b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000, 431, "over 16384 bytes"),
        (b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"X-Many: a\r\n" * 4000, 431, "fewer or shorter headers"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP/1.1 request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header " + OPENAI_KEY.encode() + b"\r\n\r\n", 400, "malformed"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n", 400, "malformed"),
    ],
    ids=["huge-header", "many-headers", "garbage", "bad-header-line", "bad-content-length"],
)
def test_unparsable_requests_are_answered_in_the_error_shape(
    server: int, request_bytes: bytes, status: int, said: str
) -> None:
    """Before: uvicorn's text/plain 400 "Invalid HTTP request received.", also for headers over the limit."""
    got, error = status_and_error(exchange(server, request_bytes))
    assert got == status and said in error["message"], error
    assert OPENAI_KEY[:20] not in error["message"]


def test_http10_chunked_and_pipelined_requests_are_served(server: int) -> None:
    head = b"POST /v1/chat/completions HTTP/1.0\r\nHost: a\r\nContent-Type: application/json\r\n"
    assert exchange(server, head + b"Content-Length: %d\r\n\r\n" % len(HI) + HI).startswith(b"HTTP/1.1 200 ")
    stream = json.dumps({"messages": [user("hi")], "max_tokens": 3, "stream": True}).encode()
    streamed = exchange(server, head + b"Content-Length: %d\r\n\r\n" % len(stream) + stream)
    assert streamed.startswith(b"HTTP/1.1 200 ") and streamed.rstrip().endswith(b"data: [DONE]")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(HI[i : i + 5]), HI[i : i + 5]) for i in range(0, len(HI), 5))
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert exchange(server, chunked).startswith(b"HTTP/1.1 200 ")
    health = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    pipelined = exchange(server, health + health[:-2] + b"Connection: close\r\n\r\n")
    assert pipelined.count(b"HTTP/1.1 200 ") == 2


# ---- a stream that fails after it began ---------------------------------------------------------------


@pytest.fixture
def own_engine(tiny_checkpoint: Path, lora_path: Path) -> Iterator[tuple[Settings, TwinService]]:
    """A service with an engine of its own (this test stops it): one slot, long replies."""
    settings = make_settings(
        tiny_checkpoint, lora_path, max_batch_size=1, max_input_tokens=128, max_new_tokens=128
    )
    service = build_service(settings)
    service.engine.start()
    assert service.engine.wait_ready(timeout=120), service.engine.load_error
    try:
        yield settings, service
    finally:
        service.engine.stop()


def test_a_stream_cut_by_the_engine_ends_with_openais_error_object(
    own_engine: tuple[Settings, TwinService],
) -> None:
    """The engine stops while a reply streams: the stream ends with `data: {"error": {...}}` in OpenAI's
    shape (before: no `param`), no [DONE], and the slot is free."""
    settings, service = own_engine
    engine = service.engine
    body = {"messages": [user("hi")], "max_tokens": 128, "temperature": 2.0, "top_p": 1.0, "stream": True}
    with TestClient(create_app(settings, service)) as client:
        for _ in range(5):  # a reply may end (EOS, max_tokens) before the worker pauses: try another
            with client.stream("POST", CHAT, json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                resume = pause_worker(engine)  # between two decode steps: the engine stops there
                generating = engine.stats()["active"] == 1
                if generating:
                    engine.stop(timeout=0)  # asks the worker to stop; it does once resumed
                resume.set()
                data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            if generating:
                break
        else:
            pytest.fail("every reply ended before the worker paused")
    assert data and data[-1] != "[DONE]"
    last = json.loads(data[-1])
    assert last == {
        "error": {
            "message": "the server is shutting down",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    engine.stop()  # joins the worker
    assert engine.stats()["active"] == 0 and engine.stats()["finished"].get("error") == 1


def test_requests_waiting_for_their_first_token_when_the_engine_stops_are_503(
    own_engine: tuple[Settings, TwinService],
) -> None:
    """The server shuts down (its engine stops) while a plain and a streamed request wait for their first
    token: both are 503 in the API's error shape with Retry-After, like the other 503s (before: 500), and
    the stream sends no 200 first; a request after that is a 503 saying so (before: "still loading")."""
    settings, service = own_engine
    engine = service.engine
    body = {"messages": [user("hi")], "max_tokens": 4}
    with TestClient(create_app(settings, service)) as client, ThreadPoolExecutor(2) as pool:
        resume = pause_worker(engine)  # held before either request reaches a slot
        answers = [pool.submit(client.post, CHAT, json={**body, "stream": s}) for s in (False, True)]
        deadline = time.monotonic() + 30
        while engine.stats()["queued"] < 2:  # both wait in the queue
            assert time.monotonic() < deadline and not any(a.done() for a in answers), engine.stats()
            time.sleep(0.01)
        engine.stop(timeout=0)  # asks the worker to stop; it does once resumed
        resume.set()
        responses = [a.result(timeout=30) for a in answers]
        late = client.post(CHAT, json=body)  # one that comes after: refused at once, saying why
    assert late.status_code == 503 and late.headers["retry-after"] == str(settings.retry_after)
    assert late.json()["detail"] == "the model is not ready: the server is shutting down"
    message = f"the server is shutting down; retry in {settings.retry_after} s"
    for r in responses:
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == str(settings.retry_after)
        assert r.headers["content-type"] == "application/json"
        error = {"message": message, "type": "overloaded_error", "param": None, "code": None}
        assert r.json() == {"detail": message, "error": error}
    engine.stop()  # joins the worker
    assert engine.stats()["finished"].get("error") == 2
