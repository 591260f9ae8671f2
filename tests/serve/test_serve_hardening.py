"""What someone else on the network can do to `python -m serve`, tried on the real server on 127.0.0.1.

The server runs as `python -m serve` (the tiny checkpoint and adapter, no API key, short timeouts) and is
spoken to over raw sockets: stalled or trickled headers and bodies are cut off within the timeouts, the
access log never shows a query string's values, and the start-up log says when the key is empty.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, user

from serve.app import redact_query
from serve.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0  # TWIN_HEADER_TIMEOUT and TWIN_BODY_TIMEOUT of the server under test
SLACK_S = 2.0  # scheduling on a busy 2-core box


@dataclass
class Server:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_env(**twin: str) -> dict[str, str]:
    """The environment without a developer's TWIN_* variables, plus `twin` (TWIN_<NAME>=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update({f"TWIN_{k.upper()}": v for k, v in twin.items()})
    return env


@pytest.fixture(scope="module")
def server(
    tiny_checkpoint: Path, lora_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`python -m serve` with `TWIN_API_KEY=` (empty) and 1-second header/body timeouts."""
    workdir = tmp_path_factory.mktemp("serve-hardening")  # no .env to pick up
    log = workdir / "serve.log"
    port = free_port()
    command = [sys.executable, "-m", "serve", "--checkpoint-dir", str(tiny_checkpoint)]
    command += ["--lora-path", str(lora_path), "--port", str(port), "--device", "cpu", "--no-compile"]
    env = serve_env(api_key="", header_timeout=str(TIMEOUT_S), body_timeout=str(TIMEOUT_S))
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"python -m serve exited with {process.returncode}: {log.read_text()}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"python -m serve did not get ready: {log.read_text()}")
                time.sleep(0.3)
            yield Server(port, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S + SLACK_S + 5)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - start


def test_stalled_headers_are_cut_off(server: Server) -> None:
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        received, _ = read_until_closed(sock)
        took = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert TIMEOUT_S * 0.8 <= took <= TIMEOUT_S + SLACK_S, took


def test_many_stalled_connections_are_all_let_go(server: Server) -> None:
    """200 half-sent requests at once: the server still answers others, and drops all 200 in time."""
    socks = [connect(server) for _ in range(200)]
    try:
        start = time.monotonic()
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: ")
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        for sock in socks:
            received, _ = read_until_closed(sock)
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
        assert time.monotonic() - start <= TIMEOUT_S + SLACK_S + 2
    finally:
        for sock in socks:
            sock.close()


def test_a_silent_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        received, took = read_until_closed(sock)
    assert took <= TIMEOUT_S + SLACK_S, took
    if received:  # the 408 in the API's error shape
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in head
        assert "TWIN_HEADER_TIMEOUT" in json.loads(body)["error"]["message"]


def test_trickled_headers_are_cut_off_all_the_same(server: Server) -> None:
    """One byte every 0.2 s keeps the connection busy but does not reset the deadline."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    with connect(server) as sock:
        start = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - start > TIMEOUT_S + SLACK_S + 1:
                break
        if not closed:
            sock.settimeout(TIMEOUT_S + SLACK_S)
            try:
                received, _ = read_until_closed(sock)
            except ConnectionResetError:
                received = b""
            closed = True
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
        took = time.monotonic() - start
    assert closed and took <= TIMEOUT_S + SLACK_S + 1.5, took


def test_a_stalled_body_gets_408_and_the_connection_closed(server: Server) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(head + b'{"messages": [{"role": "user", "content": "hel')
        received, _ = read_until_closed(sock)
        took = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"TWIN_BODY_TIMEOUT" in received and b"connection: close" in received.lower()
    assert TIMEOUT_S * 0.8 <= took <= TIMEOUT_S + SLACK_S, took


def test_a_trickled_body_is_cut_off_at_the_deadline(server: Server) -> None:
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * 100 + b'"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head)
        start = time.monotonic()
        try:
            for i in range(0, len(body), 4):
                sock.sendall(body[i : i + 4])
                time.sleep(0.2)
            received, _ = read_until_closed(sock)
        except (BrokenPipeError, ConnectionResetError):
            received = b""  # closed (after its 408) while we were still sending: the kernel may reset
        took = time.monotonic() - start
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    assert took <= TIMEOUT_S + SLACK_S, took


def test_well_behaved_clients_are_served_and_kept_alive(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(2):  # the second request rides the kept-alive connection
            assert client.get("/health").json()["ready"] is True
        r = client.post("/v1/chat/completions", json={"messages": [user("hi")], "max_tokens": 3})
        assert r.status_code == 200, r.text


def test_malformed_requests_get_4xx_never_5xx(server: Server) -> None:
    garbage = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\n\r\n{]}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    ]
    for request in garbage:
        with connect(server) as sock:
            sock.sendall(request)
            received, _ = read_until_closed(sock) if b"Connection: close" in request else (sock.recv(4096), 0)
        status = int(received.split(b" ", 2)[1])
        assert 400 <= status < 500, (request, received)


def test_the_access_log_shows_no_query_values(server: Server) -> None:
    secret = "sk-query-secret-123"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get(f"/v1/models?api_key={secret}&key={secret}&token={secret}&{secret}&{secret}=1&b=2")
        client.get("/health?password=hunter2")
    log = server.log.read_text()
    assert "GET /v1/models?api_key=***&key=***&token=***&***&***&***" in log, log[-2000:]
    assert "GET /health?password=***" in log
    assert secret not in log and "hunter2" not in log


def test_an_empty_key_is_a_warning_at_start(server: Server) -> None:
    log = server.log.read_text()
    assert "WARNING" in log and "TWIN_API_KEY is set but empty" in log


def test_no_key_beyond_loopback_is_refused_unless_allowed(tiny_checkpoint: Path) -> None:
    command = [sys.executable, "-m", "serve", "--checkpoint-dir", str(tiny_checkpoint), "--host", "0.0.0.0"]
    command += ["--port", str(free_port())]
    refused = subprocess.run(command, env=serve_env(api_key=""), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "refusing to listen on '0.0.0.0' without an API key (TWIN_API_KEY is set but empty)" in (
        refused.stderr
    )
    assert "--allow-no-key" in refused.stderr

    allowed = Settings(_env_file=None, host="0.0.0.0", api_key="", allow_no_key=True)  # type: ignore[call-arg]
    assert allowed.api_key is None


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models?", "/v1/models?"),
        ("/x?api_key=s&b=2", "/x?api_key=***&***"),
        ("/x?Access_Token=s", "/x?Access_Token=***"),
        ("/x?s3cr3t-with%20odd/chars", "/x?***"),
        ("/x?sk-live-1=1&&b", "/x?***&***"),
    ],
)
def test_redact_query(target: str, logged: str) -> None:
    assert redact_query(target) == logged
