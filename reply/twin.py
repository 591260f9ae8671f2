"""The twin server, asked over its OpenAI-compatible API for the person's next reply.

`POST {url}/v1/chat/completions` (serve's contract): the partner's turns as `user` messages (with their
name), the person's as `assistant`; `Authorization: Bearer <TWIN_API_KEY>` when a key is set. A busy
server (503, or 429 from a proxy or gateway in front of it, as Retry-After says in seconds or as a date)
is asked again a few times; a wait longer than `MAX_BUSY_WAIT_S` gives up at once. Every other failure is
a `TwinServerError` whose text says what to do and never contains message text.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from common.scrub import scrub_secrets
from prepare.records import Turn
from reply.settings import ReplySettings

log = logging.getLogger(__name__)

MODEL = "twin"
BUSY_RETRIES = 3
BUSY_STATUSES = frozenset({429, 503})
"""Too many requests (a gateway's rate limit) and busy (serve's full queue): asked again after Retry-After."""
MAX_BUSY_WAIT_S = 30.0
"""The longest Retry-After waited out; a server asking for more is taken as down for now."""
CONNECT_TIMEOUT_S = 5.0
MAX_NAME_CHARS = 128
"""serve's limit on a message's `name`."""


class TwinServerError(Exception):
    """The twin server could not give a reply; the message says why (no chat text)."""


def chat_messages(turns: Sequence[Turn], partner: str) -> list[dict[str, str]]:
    """The conversation as OpenAI messages: the partner's turns `user` (named), the person's `assistant`."""
    name = partner[:MAX_NAME_CHARS]
    messages = []
    for turn in turns:
        if turn.speaker == "partner":
            message = {"role": "user", "content": turn.text}
            if name:
                message["name"] = name
            messages.append(message)
        else:
            messages.append({"role": "assistant", "content": turn.text})
    return messages


class TwinClient:
    """One HTTP connection pool to the twin server (close it with `aclose`)."""

    def __init__(self, settings: ReplySettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        key = settings.api_key.get_secret_value().strip() if settings.api_key else ""
        self.http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(settings.timeout_s, connect=min(CONNECT_TIMEOUT_S, settings.timeout_s)),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def suggest(self, turns: Sequence[Turn], partner: str) -> str:
        """The twin's reply to the conversation `turns` (which ends with the partner's turn)."""
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": chat_messages(turns, partner),
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        try:
            async with asyncio.timeout(self.settings.timeout_s):  # in all: a server dripping bytes too
                return await self._ask(body)
        except TimeoutError:
            raise TwinServerError(
                f"the twin server at {self.settings.base_url} took longer than {self.settings.timeout_s:g}s "
                "(--timeout-s): it may be overloaded"
            ) from None

    async def _ask(self, body: dict[str, Any]) -> str:
        url = self.settings.base_url
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = await self.http.post("/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                raise TwinServerError(
                    f"the twin server at {url} took longer than {self.settings.timeout_s:g}s "
                    "(--timeout-s): it may be overloaded"
                ) from None
            except httpx.HTTPError as e:
                raise TwinServerError(
                    f"cannot reach the twin server at {url} ({type(e).__name__}): start it with `make serve` "
                    "or set TWIN_API_URL"
                ) from None
            if response.status_code in BUSY_STATUSES and attempt < BUSY_RETRIES:
                wait = _retry_after(response)
                if wait > MAX_BUSY_WAIT_S:
                    raise TwinServerError(
                        f"the twin server at {url} is busy ({response.status_code}) and asks to wait "
                        f"{wait:.0f}s; this message gets no reply"
                    )
                log.info("twin server busy (%d); asking again in %.1fs", response.status_code, wait)
                await asyncio.sleep(wait)
                continue
            return _reply_text(response, url)
        raise AssertionError("unreachable")  # the loop returns or raises


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (RFC 9110: a number of seconds or an HTTP date), at least 0.5; 2 if absent
    or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            seconds = 2.0
    return max(0.5, seconds) if math.isfinite(seconds) else 2.0


def _reply_text(response: httpx.Response, url: str) -> str:
    if response.status_code == 401:
        raise TwinServerError(f"the twin server at {url} refused the API key: set TWIN_API_KEY to its key")
    if response.status_code >= 400:
        detail = ""
        try:
            # the server's words, scrubbed and on one line: a detail may quote what it was sent
            detail = scrub_secrets(" ".join(str(response.json()["error"]["message"]).split()))[:200]
        except (ValueError, KeyError, IndexError, TypeError):
            pass
        raise TwinServerError(f"the twin server answered {response.status_code}: {detail or 'no detail'}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise TwinServerError(f"{url} did not answer like the twin server (no choices[0].message)") from None
    if content is not None and not isinstance(content, str):
        raise TwinServerError(f"{url} did not answer like the twin server (the reply is not text)")
    return content or ""
