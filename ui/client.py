"""The page's only HTTP code: the twin server's OpenAI-style chat API, streamed, with errors in words.

Contract (written by `serve`): `GET {url}/v1/models` lists the twins the server serves
(`{"object": "list", "data": [{"id": ...}, ...]}`, the default twin first); `POST {url}/v1/chat/completions`
with `{"model": <twin id>, "messages": [...], "temperature", "max_tokens", "stream": true}` answers with
server-sent events, `data: {chat.completion.chunk}` lines ending in `data: [DONE]`; failures are 4xx/5xx
with a JSON `{"detail": ...}` (401 for a wrong `Authorization: Bearer <key>`, 404 naming the served twins
for an unknown `model`, 503 + `Retry-After` while busy). `GET {url}/health` says whether the server is up.

Every failure a person can meet (server down, wrong key, slow server, refused request, broken stream)
becomes a `TwinAPIError` whose text can go on the page as it is. Tests of the page replace this module's
`stream_reply` / `check_health` / `list_models`; the module itself is tested against real servers on
127.0.0.1.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where `make serve` listens."""
DEFAULT_TIMEOUT_S = 120.0
"""Longest wait for the server to send anything: a 7B model on a busy CPU can be slow to start a reply."""
CONNECT_TIMEOUT_S = 5.0
"""A server that is up accepts a connection at once; a silent one is as good as down."""
DEFAULT_DEADLINE_S = 600.0
"""Longest time for a whole reply: a server that drips text (or only keep-alive pings) is given up then."""
QUICK_TIMEOUT_S = 10.0
"""Longest wait for the cheap calls (`/v1/models`, `/health`): the page waits on them before it can draw."""


class TwinAPIError(Exception):
    """A failure of the twin server or the way to it, said so that a person can act on it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How to reach the twin server."""

    url: str = DEFAULT_URL
    """Base address of the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted too)."""
    api_key: str = ""
    """Sent as `Authorization: Bearer <key>` when not empty (the server's TWIN_API_KEY)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Longest silence from the server, in seconds, before giving up on a reply."""
    deadline_s: float = DEFAULT_DEADLINE_S
    """Longest time for one whole reply, in seconds, however steadily the server sends."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from TWIN_API_URL, TWIN_API_KEY, TWIN_API_TIMEOUT and TWIN_API_DEADLINE (seconds);
        defaults otherwise. Raises `ValueError` naming every setting that is wrong and how to fix it."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        timeout_s = _seconds(env, "TWIN_API_TIMEOUT", DEFAULT_TIMEOUT_S, problems)
        deadline_s = _seconds(env, "TWIN_API_DEADLINE", DEFAULT_DEADLINE_S, problems)
        url = env.get("TWIN_API_URL", "").strip() or DEFAULT_URL
        url_problem = url_error(url)
        if url_problem:
            problems.append(url_problem)
        if problems:
            raise ValueError(" ".join(problems))
        return cls(
            url=url,
            api_key=env.get("TWIN_API_KEY", "").strip(),
            timeout_s=timeout_s,
            deadline_s=deadline_s,
        )

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash or /v1 (or a whole endpoint pasted, /v1/chat/completions),
        with http:// added when no scheme was given."""
        url = self.url.strip().rstrip("/")
        if url and "://" not in url:
            url = f"http://{url}"
        for suffix in ("/v1/chat/completions", "/v1/models", "/v1"):
            if url.endswith(suffix):
                return url[: -len(suffix)]
        return url

    def headers(self) -> dict[str, str]:
        key = self.api_key.strip()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))

    def quick(self) -> ServerSettings:
        """These settings with the silence limit of the cheap calls (`QUICK_TIMEOUT_S` at most)."""
        return replace(self, timeout_s=min(self.timeout_s, QUICK_TIMEOUT_S))


def _seconds(env: Mapping[str, str], name: str, default: float, problems: list[str]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        problems.append(f"{name} must be a number of seconds above 0, got {raw!r}.")
        return default
    return value


def url_error(url: str) -> str | None:
    """What is wrong with `url` as TWIN_API_URL, or None. No scheme means http://; a path is kept (a
    server behind a proxy prefix)."""
    said = repr(re.sub(r"//[^/@]*@", "//", url))  # never quote a user:password@
    example = f"Set TWIN_API_URL to the twin server's address, like {DEFAULT_URL}."
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"TWIN_API_URL {said} has spaces or control characters in it. {example}"
    sep = "://" in url
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):(?://|(?!\d))", url)  # not `host:port`
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        return f"TWIN_API_URL {said} is not an http:// or https:// address. {example}"
    try:
        parts = urlsplit(url if sep else f"http://{url}")
        _ = parts.port  # a port that is not a number from 0 to 65535 raises
    except ValueError:
        return f"TWIN_API_URL {said} is not a valid address. {example}"
    if not parts.hostname:
        return f"TWIN_API_URL {said} names no server. {example}"
    if parts.query or parts.fragment:
        return f"TWIN_API_URL {said} has a ?query or #fragment, which the server would not see. {example}"
    return None


def stream_reply(
    server: ServerSettings,
    messages: Sequence[Mapping[str, str]],
    *,
    temperature: float,
    max_tokens: int,
    model: str | None = None,
) -> Iterator[str]:
    """Ask twin `model` (an id from `list_models`; None: the server's default twin) for its next reply
    to `messages` (OpenAI format) and yield its text as it arrives.

    Nothing is sent until the first item is taken. Raises `TwinAPIError` for every failure, including
    one in the middle of the stream; closing the iterator early closes the connection.
    """
    body: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "temperature": temperature,
        "max_tokens": max_tokens,
        "stream": True,
    }
    if model is not None:
        body = {"model": model, **body}
    url = f"{server.base_url}/v1/chat/completions"
    headers = {**server.headers(), "Accept": "text/event-stream"}
    with _translated_errors(server):
        with httpx.Client(timeout=server.timeout()) as http:
            with http.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _status_error(response, server)
                kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind == "application/json":
                    # A server that ignores `stream` answers with one chat.completion: take it whole.
                    response.read()
                    text = _content_of_completion(response)
                    if text:
                        yield text
                    return
                if kind != "text/event-stream":
                    raise TwinAPIError(
                        f"{url} answered with {kind or 'no content type'} instead of a streamed reply: "
                        "is TWIN_API_URL the twin server's address?"
                    )
                yield from _read_events(response.iter_lines(), server)


def check_health(server: ServerSettings) -> dict[str, Any]:
    """The server's `GET /health` answer; raises `TwinAPIError` when it is not reachable or not healthy."""
    server = server.quick()
    with _translated_errors(server):
        with httpx.Client(timeout=server.timeout()) as http:
            response = http.get(f"{server.base_url}/health", headers=server.headers())
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 503 and isinstance(answer, dict) and "detail" not in answer:
            if answer.get("load_error"):
                raise TwinAPIError(f"The twin server could not load the model: {answer['load_error']}", 503)
            raise TwinAPIError(
                f"The twin server is up but not ready yet ({answer.get('status', 'loading')}); "
                f"{_retry_hint(response)}.",
                503,
            )
        if response.status_code >= 400:
            raise _status_error(response, server)
        if not isinstance(answer, dict):
            raise TwinAPIError(f"{server.base_url}/health did not answer with JSON; is this the twin server?")
        return answer


def list_models(server: ServerSettings) -> list[str]:
    """The ids of the twins the server serves (`GET /v1/models`), in its order: the default twin first.

    Raises `TwinAPIError` when the server can't be reached, refuses, or serves no twin.
    """
    server = server.quick()
    with _translated_errors(server):
        with httpx.Client(timeout=server.timeout()) as http:
            response = http.get(f"{server.base_url}/v1/models", headers=server.headers())
    if response.status_code >= 400:
        raise _status_error(response, server)
    try:
        cards = response.json()["data"]
        ids = [card["id"] for card in cards]
    except (ValueError, KeyError, TypeError) as e:
        raise TwinAPIError(
            f"{server.base_url}/v1/models did not answer with a list of models; is this the twin server?"
        ) from e
    # an id that is not a name can't be asked for; one listed twice is one twin
    names = list(dict.fromkeys(i for i in ids if isinstance(i, str) and i.strip()))
    if not names:
        raise TwinAPIError("The twin server serves no twin right now: add one to it, or restart it.")
    return names


def _read_events(lines: Iterator[str], server: ServerSettings) -> Iterator[str]:
    """Text deltas from server-sent event lines; stops at `data: [DONE]`.

    httpx's read timeout only notices a server that sends nothing at all; one that keeps the connection
    busy with keep-alive comments or empty pieces, or drips text for ever, is given up here: after
    `timeout_s` without text, or `deadline_s` in all.
    """
    started = last_text = time.monotonic()
    for line in lines:
        now = time.monotonic()
        if now - last_text > server.timeout_s:
            raise TwinAPIError(_silence(server))
        if now - started > server.deadline_s:
            raise TwinAPIError(
                f"The reply took longer than {server.deadline_s:g} s in all, so it was given up. Try again, "
                "lower max tokens, or raise TWIN_API_DEADLINE."
            )
        if not line.startswith("data:"):
            continue  # blank separators, `event:` names and `: ping` comments
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except ValueError as e:
            raise TwinAPIError(f"The server sent a reply piece that is not JSON: {payload[:80]!r}") from e
        if not isinstance(chunk, dict):
            raise TwinAPIError(f"The server sent an unexpected piece of the reply: {payload[:80]!r}")
        if "error" in chunk or "detail" in chunk:
            raise TwinAPIError(f"The server stopped in the middle of the reply: {_detail_text(chunk)}")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise TwinAPIError(f"The server sent an unexpected piece of the reply: {payload[:80]!r}")
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise TwinAPIError(f"The server sent an unexpected piece of the reply: {payload[:80]!r}")
            text = delta.get("content")
            if text is not None and not isinstance(text, str | int | float):
                raise TwinAPIError(f"The server sent an unexpected piece of the reply: {payload[:80]!r}")
            if text not in (None, ""):
                last_text = now
                yield str(text)
    raise TwinAPIError("The connection closed before the reply was finished; please try again.")


def _silence(server: ServerSettings) -> str:
    return (
        f"The twin server at {server.base_url} sent nothing for {server.timeout_s:g} s, so the reply was "
        "given up. It may be overloaded: try again, or raise TWIN_API_TIMEOUT."
    )


def _content_of_completion(response: httpx.Response) -> str:
    try:
        return str(response.json()["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise TwinAPIError("The server's answer has no reply in it; is this the twin server?") from e


@contextmanager
def _translated_errors(server: ServerSettings) -> Iterator[None]:
    """Turn httpx's transport errors into `TwinAPIError`s that name the server and what to try."""
    url = server.base_url or "(no URL)"
    try:
        yield
    except httpx.ConnectTimeout as e:
        raise TwinAPIError(
            f"The twin server at {url} did not accept a connection within {server.timeout().connect:g} s. "
            "Is it running, and is TWIN_API_URL right?"
        ) from e
    except httpx.TimeoutException as e:
        raise TwinAPIError(_silence(server)) from e
    except httpx.ConnectError as e:
        raise TwinAPIError(
            f"Can't reach the twin server at {url}. Is it running (`make serve`), and is TWIN_API_URL right?"
        ) from e
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        raise TwinAPIError(f"{server.url!r} is not a server address; use one like {DEFAULT_URL}.") from e
    except httpx.HTTPError as e:
        raise TwinAPIError(
            f"The connection to the twin server at {url} broke ({type(e).__name__}); please try again."
        ) from e


def _status_error(response: httpx.Response, server: ServerSettings) -> TwinAPIError:
    status = response.status_code
    detail = _detail_of(response)
    said = f" The server said: {detail}" if detail else ""
    if status in (401, 403):
        what = (
            "The server needs an API key: set TWIN_API_KEY where the page runs, then restart it."
            if not server.api_key.strip()
            else "The server refused the API key: check TWIN_API_KEY where the page runs."
        )
        return TwinAPIError(f"{what} (HTTP {status}){said}", status)
    if status == 404 and detail in ("", "Not Found"):
        return TwinAPIError(
            f"{server.base_url} has no twin chat API (HTTP 404): is the server URL right?{said}", status
        )
    if status in (429, 503):
        return TwinAPIError(
            f"The twin can't answer right now (HTTP {status}); {_retry_hint(response)}.{said}", status
        )
    if 400 <= status < 500:
        return TwinAPIError(f"The server refused the request (HTTP {status}).{said}", status)
    return TwinAPIError(f"The twin server failed (HTTP {status}); see its log.{said}", status)


def _retry_hint(response: httpx.Response) -> str:
    retry = response.headers.get("retry-after", "").strip()
    return f"try again in {retry} s" if retry.isdigit() else "try again in a moment"


def _detail_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text
        if "<" in text and ">" in text:  # an HTML error page (a proxy's, most likely): its words only
            text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<!--.*?-->", " ", text)
            text = html.unescape(re.sub(r"(?s)<[^>]*>", " ", text))
        return " ".join(text.split())[:200]
    return _detail_text(body)


def _detail_text(body: Any) -> str:
    """FastAPI's `detail` (a string or a list of validation errors) or OpenAI's `error.message`."""
    if isinstance(body, dict):
        body = body.get("detail", body.get("error", body))
        if isinstance(body, dict) and "message" in body:
            body = body["message"]
    if isinstance(body, list):
        parts = []
        for item in body:
            if isinstance(item, dict) and "msg" in item:
                where = ".".join(str(p) for p in item.get("loc", ())[1:])
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(body)[:300]
