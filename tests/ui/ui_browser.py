"""Headless Chromium driven over the Chrome DevTools Protocol, and `streamlit run` as a subprocess.

No browser download and no driver binary: Debian's `/usr/bin/chromium` is started with
`--remote-debugging-port=0` and spoken to over its websocket with `websockets` (already installed as a
dependency of streamlit). Only the handful of CDP calls the end-to-end test needs are wrapped here.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
REBIND_HOST = "rebind.test"
"""A name the test browser resolves to 127.0.0.1, as a DNS-rebinding site would make it."""
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:g} s (last seen: {last!r})")


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is not None


class Page:
    """One Chromium tab, spoken to over CDP."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        """Events seen while waiting for answers, of the domains a test enabled (`Network.enable`)."""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        sent = next(self.ids)
        self.ws.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            answer = json.loads(self.ws.recv(timeout=60))
            if answer.get("id") == sent:
                if "error" in answer:
                    raise RuntimeError(f"CDP {method} failed: {answer['error']}")
                return dict(answer.get("result", {}))
            if answer.get("method", "").startswith("Network.webSocket"):
                self.events.append(answer)  # kept for `websocket_frames`; other events are dropped

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def type_text(self, text: str) -> None:
        """Type into the focused element as a keyboard would, then press Enter."""
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                nativeVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """Headless Chromium with a throw-away profile and no background networking; yields its first tab."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--window-size={width},{height}",
        f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1",
        "about:blank",
    ]
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        port_file = profile / "DevToolsActivePort"

        def port() -> int | None:
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with {process.returncode}; see {log.name}")
            lines = port_file.read_text().split() if port_file.exists() else []
            return int(lines[0]) if lines else None

        devtools = f"http://127.0.0.1:{wait_for('chromium start-up', port, 60)}"
        tabs = httpx.get(f"{devtools}/json/list", timeout=10).json()
        [tab] = [t for t in tabs if t.get("type") == "page"][:1]
        # no keepalive pings: DevTools need not answer them, and an idle tab is fine
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30, ping_interval=None) as ws:
            page = Page(ws)
            page.call("Page.enable")
            page.call("Runtime.enable")
            yield page
    finally:
        stop_process(process, timeout_s=10)
        log.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Terminate `process`; kill it if it has not exited within `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_process(
    name: str,
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    start_timeout_s: float,
    every_s: float,
    stop_timeout_s: float,
) -> Iterator[None]:
    """Run `command` (output to `log_path`) until the block ends; enter once `ready()` says so.

    A process that exits while starting fails the wait with its log; on the way out it is terminated,
    then killed if it does not stop within `stop_timeout_s`.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=log, stderr=log)
        try:

            def probe() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {log_path.read_text()}")
                return ready()

            wait_for(f"{name} start-up", probe, start_timeout_s, every_s=every_s)
            yield
        finally:
            stop_process(process, stop_timeout_s)


@contextmanager
def streamlit_app(
    port: int, env: Mapping[str, str], log_path: Path, via_module: bool = False
) -> Iterator[str]:
    """`streamlit run ui/app.py` (or `python -m ui`) on 127.0.0.1:`port`, headless; yields its URL."""
    if via_module:
        command = [sys.executable, "-m", "ui"]
    else:
        command = [sys.executable, "-m", "streamlit", "run", str(REPO / "ui" / "app.py")]
        command += ["--browser.gatherUsageStats=false", "--client.toolbarMode=minimal"]
    command += [
        "--server.headless=true",
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--server.fileWatcherType=none",
    ]
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    with running_process("streamlit", command, REPO, {**os.environ, **env}, log_path, healthy, 90, 0.25, 10):
        yield url


@dataclass(frozen=True)
class RealTwin:
    """Where the real twin server of a test session listens, and its API key."""

    url: str
    api_key: str


@contextmanager
def twin_server(
    checkpoint: Path, port: int, api_key: str, log_path: Path, lora: Path | None = None
) -> Iterator[str]:
    """The real `python -m serve` on 127.0.0.1:`port` with `checkpoint`; yields its URL once it is ready.

    It runs in an empty folder with no other TWIN_* variables, so a developer's `.env` or environment
    cannot change what is tested.
    """
    command = [sys.executable, "-m", "serve", "--checkpoint-dir", str(checkpoint), "--port", str(port)]
    if lora is not None:
        command += ["--lora-path", str(lora)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["TWIN_API_KEY"] = api_key
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    workdir = log_path.parent / "serve-cwd"
    workdir.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return bool(httpx.get(f"{url}/health", timeout=2).json().get("ready"))
        except (httpx.HTTPError, ValueError):
            return False

    with running_process("serve", command, workdir, env, log_path, ready, 180, 0.5, 15):
        yield url


CHAT_INPUT = 'textarea[data-testid="stChatInputTextArea"]'
BUBBLES_JS = """
Array.from(document.querySelectorAll('iframe[title="streamlit_chat.streamlit_chat"]')).map(frame => {
  const chat = frame.contentDocument && frame.contentDocument.querySelector('.chat');
  const msg = chat && chat.querySelector('.msg');
  return msg ? [chat.classList.contains('user') ? 'partner' : 'twin', msg.innerText.trim()] : null;
})
"""
# Every 25 ms, note what the "typing" block shows, so a test can see the reply grow while it streams.
RECORD_STREAMING_JS = """
window.twinSeen = [];
window.twinRecorder = setInterval(() => {
  const caption = Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
    .find(c => c.innerText.includes('Your twin is typing'));
  if (!caption) return;
  const block = caption.closest('[data-testid="stVerticalBlock"]');
  const text = block.innerText.replace(caption.innerText, '').trim();
  if (text && window.twinSeen[window.twinSeen.length - 1] !== text) window.twinSeen.push(text);
}, 25);
"""


def open_app(page: Page, url: str) -> None:
    page.navigate(url)
    ready = f"(() => {{ const e = document.querySelector('{CHAT_INPUT}'); return !!e && !e.disabled; }})()"

    def chat_input_ready() -> bool:
        if alerts := page_text(page, "stAlertContainer"):
            raise AssertionError(f"the page shows an error instead of a chat input to type into: {alerts}")
        return bool(page.evaluate(ready))

    wait_for("an enabled chat input", chat_input_ready, 60)


def type_into(page: Page, selector: str, text: str) -> None:
    """Click into the element `selector` finds and type `text` + Enter."""
    found = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
        "if (!e) return false; e.focus(); return document.activeElement === e; })()"
    )
    if not found:
        raise AssertionError(f"nothing to type into at {selector}")
    page.type_text(text)


def bubbles(page: Page) -> list[tuple[str, str]] | None:
    """(who, text) of the drawn chat bubbles, or None while one is still loading."""
    drawn = page.evaluate(BUBBLES_JS)
    if any(b is None for b in drawn):
        return None
    return [(who, text) for who, text in drawn]


def page_text(page: Page, test_id: str) -> list[str]:
    found = f"document.querySelectorAll('[data-testid=\"{test_id}\"]')"
    return list(page.evaluate(f"Array.from({found}).map(e => e.innerText.trim())"))


PAGE_SOURCE_JS = """
(() => {
  const docs = [document, ...Array.from(document.querySelectorAll('iframe'))
    .map(f => { try { return f.contentDocument; } catch (e) { return null; } }).filter(d => d)];
  const storage = s => JSON.stringify(Object.fromEntries(Object.keys(s).map(k => [k, s.getItem(k)])));
  return [...docs.map(d => d.documentElement.outerHTML), document.cookie, storage(localStorage),
          storage(sessionStorage), Array.from(document.querySelectorAll('input, textarea'))
          .map(e => e.value).join('\\n')].join('\\n');
})()
"""


def page_source(page: Page) -> str:
    """The page's DOM (its iframes' too), input values, cookies and web storage, as one text."""
    return str(page.evaluate(PAGE_SOURCE_JS))


def websocket_frames(page: Page) -> list[bytes]:
    """The payloads of the websocket frames the page has received since `Network.enable`."""
    page.evaluate("1")  # read the events that came before now
    frames = []
    for event in page.events:
        if event["method"] == "Network.webSocketFrameReceived":
            response = event["params"]["response"]
            data = response["payloadData"]
            frames.append(base64.b64decode(data) if response.get("opcode") == 2 else data.encode())
    return frames
