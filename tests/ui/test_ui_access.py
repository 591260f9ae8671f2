"""Who may open the chat page: `ui.access.refusal`, `python -m ui`'s command line, and the real
`python -m ui` refusing websocket handshakes with a foreign Host (DNS rebinding) or Origin."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ui_browser import REPO, streamlit_app
from ui_standin import free_port

from ui.__main__ import streamlit_argv
from ui.access import hostname, is_loopback, refusal

LOCAL = {"Host": "127.0.0.1:8501", "Origin": "http://127.0.0.1:8501"}


@pytest.mark.parametrize(
    ("headers", "bound", "shared", "refused"),
    [
        ({}, None, None, None),  # no browser at all (AppTest)
        (LOCAL, "127.0.0.1", None, None),
        ({"host": "localhost:8501", "origin": "http://localhost:8501"}, "127.0.0.1", "127.0.0.1", None),
        ({"Host": "[::1]:8501"}, "::1", None, None),
        (LOCAL, None, None, "every network interface"),  # `streamlit run ui/app.py`
        (LOCAL, "0.0.0.0", None, "python -m ui --host 0.0.0.0"),
        ({"Host": "rebind.example:8501"}, "127.0.0.1", None, "opened under another name (rebind.example)"),
        ({"Host": "127.0.0.1:8501", "Origin": "http://evil.example"}, "127.0.0.1", None, "another web site"),
        ({"Host": "127.0.0.1:x"}, "127.0.0.1", None, "(none or unreadable)"),
        ({"Host": "a](javascript:x)"}, "127.0.0.1", None, "(none or unreadable)"),
        ({"Host": "192.168.1.9:8501", "Origin": "http://192.168.1.9:8501"}, "0.0.0.0", "0.0.0.0", None),
    ],
)
def test_refusal(headers: dict[str, str], bound: str | None, shared: str | None, refused: str | None) -> None:
    problem = refusal(headers, bound, shared)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem, problem


def test_loopback_and_hostnames() -> None:
    assert (
        is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback(None)
    assert not is_loopback("twin.lan")
    assert hostname("LOCALHOST.:8501") == "localhost" and hostname("http://[::1]:3") == "::1"
    assert hostname("a:99999") is None and hostname(None) is None


def test_python_m_ui_binds_127_0_0_1_and_allows_local_hosts_only() -> None:
    argv, host = streamlit_argv(["--server.port=9000"], {})
    assert host == "127.0.0.1"
    assert argv[:3] == ["streamlit", "run", argv[2]] and argv[2].endswith("ui/app.py")
    assert "--server.address=127.0.0.1" in argv and "--server.port=9000" in argv
    assert [a for a in argv if a.startswith("--server.allowedHosts=")] == [
        "--server.allowedHosts=localhost",
        "--server.allowedHosts=127.0.0.1",
        "--server.allowedHosts=::1",
    ]
    assert "--server.enableCORS=true" in argv and "--server.enableXsrfProtection=true" in argv
    assert "--browser.gatherUsageStats=false" in argv


@pytest.mark.parametrize(
    ("args", "environ"),
    [(["--host", "0.0.0.0"], {}), (["--host=0.0.0.0"], {}), ([], {"TWIN_UI_HOST": "0.0.0.0"})],
)
def test_sharing_the_page_is_explicit(args: list[str], environ: dict[str, str]) -> None:
    argv, host = streamlit_argv(args, environ)
    assert host == "0.0.0.0" and "--server.address=0.0.0.0" in argv
    assert not any(a.startswith("--server.allowedHosts") for a in argv)
    assert "--host" not in argv and "--host=0.0.0.0" not in argv


def handshake(port: int, host: str, origin: str | None) -> bytes:
    """The status line Streamlit answers a websocket upgrade to its stream with."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /_stcore/stream HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: streamlit",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(4096).split(b"\r\n", 1)[0]


@pytest.mark.slow
def test_python_m_ui_refuses_foreign_hosts_and_origins(tmp_path: Path) -> None:
    port = free_port()
    with streamlit_app(port, {"TWIN_API_KEY": "k"}, tmp_path / "streamlit.log", via_module=True):
        local = f"127.0.0.1:{port}"
        assert b" 101 " in handshake(port, local, f"http://{local}")
        assert b" 101 " in handshake(port, f"localhost:{port}", f"http://localhost:{port}")
        assert b" 101 " not in handshake(port, f"rebind.example:{port}", f"http://rebind.example:{port}")
        assert b" 101 " not in handshake(port, local, "http://evil.example")


def test_sharing_the_page_prints_a_warning() -> None:
    """`python -m ui --host 0.0.0.0` says who can chat as you (shown with `--help`: nothing binds)."""
    env = {k: v for k, v in os.environ.items() if k != "TWIN_UI_HOST"}
    shared = subprocess.run(
        [sys.executable, "-m", "ui", "--host", "0.0.0.0", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shared.returncode == 0, shared.stderr
    assert "WARNING: the chat page listens on 0.0.0.0: anyone who can reach this machine" in shared.stderr
    local = subprocess.run(
        [sys.executable, "-m", "ui", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert local.returncode == 0 and "WARNING" not in local.stderr
