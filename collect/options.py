"""What goes into the raw export: the rules both ways in (Telethon and Telegram Desktop) share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

SERVICE_NOTIFICATIONS_ID = 777000
"""The official "Telegram" account: login codes and notices, never the person's own words; skipped."""


@dataclass(frozen=True)
class CollectOptions:
    """Filters applied to every message as it is collected."""

    keep_forwarded: bool = False
    """Keep messages forwarded from elsewhere (by default skipped: they are not the person's own words)."""
    since: datetime | None = None
    """Only messages sent at or after this moment (UTC); `None` keeps the whole history."""

    @property
    def since_ts(self) -> float:
        return self.since.timestamp() if self.since else float("-inf")


def parse_since(value: str | None) -> datetime | None:
    """`YYYY-MM-DD` → midnight UTC of that day; a clear error otherwise."""
    if value is None or value == "":
        return None
    try:
        day = date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f"--since {value!r}: expected a date as YYYY-MM-DD, e.g. --since 2023-01-31"
        ) from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
