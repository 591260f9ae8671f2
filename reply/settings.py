"""The `reply` stage's settings: one pydantic-settings class (`TWIN_REPLY_*`, or `python -m reply --flags`).

The Telegram login is collect's (`TELEGRAM_*`, the same session file); the twin server is the one `ui`
talks to (`TWIN_API_URL`, `TWIN_API_KEY`). Every default lives here; the CLI is generated from this class.
"""

from __future__ import annotations

import re
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

from reply.limits import MAX_FLOOD_WAIT_S
from serve.settings import is_loopback

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where `make serve` listens."""
FEEDBACK_FILE = Path("data/feedback/feedback.jsonl")
"""Where the outcomes of drafts go (owner-only); `prepare` reads it (`--feedback`)."""
STATE_FILE = Path("data/reply/state.json")
"""What `reply` remembers across restarts (`reply.state`): the limits' recent sends, the answered messages."""
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

Mode = Literal["draft", "saved"]


class ReplySettings(BaseSettings):
    """Answer your Telegram chats with your twin: drafts you approve, auto-replies only where you allow them
    (every flag is also an env var: TWIN_REPLY_<NAME>)."""

    model_config = SettingsConfigDict(env_prefix="TWIN_REPLY_", env_file=".env", extra="ignore")

    mode: Mode = Field(
        default="draft",
        description="where a suggested reply goes: 'draft' (the chat's own draft, in your input box) or "
        "'saved' (your Saved Messages, with a link to the chat)",
    )
    auto_reply: list[int] = Field(
        default_factory=list,
        description="chat ids (the partner's user id) whose replies are SENT without asking, after a "
        "human-like delay (JSON list, e.g. [12345]); empty: nothing is ever sent by itself",
    )
    quiet_hours: str = Field(
        default="23:00-08:00",
        description="local hours HH:MM-HH:MM when nothing is auto-sent (drafts still appear); '' for none",
    )
    per_chat_per_hour: int = Field(
        default=4,
        ge=0,
        description="auto-replies per chat in any hour (and, apart, suggestions written to Saved Messages)",
    )
    global_per_hour: int = Field(
        default=15,
        ge=0,
        description="auto-replies over all chats in any hour (and, apart, suggestions in Saved Messages)",
    )
    stop_word: str = Field(
        default="/twinstop",
        min_length=2,
        description="send this in any chat (Saved Messages is best) to pause all drafts and auto-replies",
    )
    resume_word: str = Field(default="/twingo", min_length=2, description="send this to resume")
    pause_file: Path = Field(
        default=Path("data/reply/paused"), description="exists while paused (survives restarts)"
    )
    state_file: Path = Field(
        default=STATE_FILE,
        description="what the rate limits counted in the last hour and the messages already answered, kept "
        "across restarts (owner-only; a damaged one stops the listener: delete it to start afresh)",
    )
    debounce_s: float = Field(
        default=4.0, ge=0, description="seconds to wait after the partner's last message (a burst may follow)"
    )
    max_typing_wait_s: float = Field(
        default=60.0,
        ge=0,
        description='the partner\'s "typing…" holds a reply back at most this many seconds after their last '
        "message (a client stuck typing must not hold it forever); then the twin answers what they wrote",
    )
    read_delay_s: float = Field(default=5.0, ge=0, description="auto-reply: seconds 'reading' before typing")
    chars_per_s: float = Field(default=5.0, gt=0, description="auto-reply: typing speed, characters a second")
    max_delay_s: float = Field(default=60.0, ge=0, description="auto-reply: longest wait before one message")
    line_pause_s: float = Field(default=1.5, ge=0, description="auto-reply: extra pause between messages")
    jitter: float = Field(default=0.25, ge=0, le=1, description="auto-reply: random share added to delays")
    history: int = Field(default=60, ge=1, le=500, description="recent messages read to build the context")
    gap_hours: float = Field(
        default=24.0, gt=0, description="a silence this long starts a new conversation (as prepare splits)"
    )
    prepared: Path = Field(
        default=Path("data/prepared"),
        description="prepare's output: its prepare_config.json gives the context caps used in training",
    )
    max_tokens: int = Field(default=160, ge=1, description="longest reply in tokens")
    temperature: float = Field(default=0.7, ge=0, le=2, description="the twin's sampling temperature")
    api_url: CliSuppress[str] = Field(
        default=DEFAULT_URL,
        validation_alias=AliasChoices("TWIN_API_URL", "api_url"),
        description="the twin server (python -m serve); env TWIN_API_URL only, as for the ui",
    )
    api_key: CliSuppress[SecretStr | None] = Field(
        default=None,
        validation_alias=AliasChoices("TWIN_API_KEY", "api_key"),
        description="the server's TWIN_API_KEY (env only)",
    )
    allow_remote: bool = Field(
        default=False,
        description="talk to a twin server beyond this machine over plain http (your chats travel to it)",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="longest wait for the twin server's reply")
    max_concurrent: int = Field(
        default=2,
        ge=1,
        description="replies asked of the twin server at once; more chats wait their turn (a burst from "
        "many chats must not flood the server)",
    )
    max_flood_wait_s: float = Field(
        default=MAX_FLOOD_WAIT_S,
        ge=0,
        description="a Telegram FloodWait longer than this gives up that draft or send (a reply hours late "
        "is no reply) instead of waiting it out",
    )
    feedback: Path = Field(
        default=FEEDBACK_FILE, description="where what you sent after each draft is recorded (owner-only)"
    )
    feedback_window_s: float = Field(
        default=90.0,
        gt=0,
        description="messages you send within this many seconds of each other count as one reply to a draft",
    )
    log_content: bool = Field(default=False, description="log message and reply text (off: they are private)")
    dry_run: bool = Field(
        default=False, description="print what would be drafted or sent; touch nothing in Telegram or on disk"
    )
    env_file: Path = Field(default=Path(".env"), description="the .env holding collect's TELEGRAM_* settings")

    @field_validator("quiet_hours")
    @classmethod
    def _check_hours(cls, value: str) -> str:
        parse_quiet_hours(value)
        return value.strip()

    @model_validator(mode="after")
    def _check(self) -> ReplySettings:
        problems = []
        url = urlsplit(self.api_url if "://" in self.api_url else f"http://{self.api_url}")
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(f"TWIN_API_URL {self.api_url!r} is not an http(s) address, e.g. {DEFAULT_URL}")
        elif url.scheme == "http" and not is_loopback(url.hostname) and not self.allow_remote:
            problems.append(
                f"TWIN_API_URL {self.api_url!r} is beyond this machine over plain http: your chats would "
                "travel unencrypted; use https, run the server here, or pass --allow-remote"
            )
        if self.stop_word.strip() == self.resume_word.strip():
            problems.append("--stop-word and --resume-word must differ")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def base_url(self) -> str:
        url = self.api_url.strip().rstrip("/")
        url = url if "://" in url else f"http://{url}"
        return url.removesuffix("/v1")


def parse_quiet_hours(value: str) -> tuple[time, time] | None:
    """`"23:00-08:00"` → (23:00, 08:00); `""` → None. The span may wrap past midnight."""
    if not value.strip():
        return None
    match = _HOURS.match(value)
    if match is None:
        raise ValueError(f"{value!r}: expected HH:MM-HH:MM, e.g. 23:00-08:00 (or '' for no quiet hours)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{value!r}: hours 0-23 and minutes 0-59, e.g. 23:00-08:00")
    return time(h1, m1), time(h2, m2)


def in_quiet_hours(now: time, hours: tuple[time, time] | None) -> bool:
    """Whether the local time `now` falls in the quiet span [start, end)."""
    if hours is None:
        return False
    start, end = hours
    if start <= end:
        return start <= now < end
    return now >= start or now < end


@lru_cache
def get_settings() -> ReplySettings:
    return ReplySettings()
