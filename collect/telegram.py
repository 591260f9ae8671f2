"""Live export through the Telegram API with Telethon: resumable, incremental, patient with limits.

`export_account` takes any client object with Telethon's names (`iter_dialogs`, `iter_messages`,
`is_connected`, `connect`), so tests hand it a fake; `run_telegram_export` builds the real
`TelegramClient` from `TelegramSettings` and logs in step by step (`login`).

Per dialog it asks for messages newer than the last exported id (`min_id`, `reverse=True`: oldest
first), appends them in batches (flush + fsync) and records the last id in the manifest after each
batch. A killed run therefore resumes where the files end; a later run fetches only newer messages.
A dialog in which nothing was kept (media only) keeps its cursor too, so it is not fetched again.

Edits: Telegram lets a message be edited for 48 hours after it is sent (`edit_time_limit` in
help.getConfig), so a message that was older than that when the dialog was last exported cannot have
changed since. Each run therefore re-reads, newest first, the already exported messages sent within
`EDIT_WINDOW` before the previous export of the dialog started, and puts every one edited since then
(`edit_date`) in place of its old line (a message that no longer qualifies, e.g. a caption edited away,
is dropped; a photo that gained a caption is added). One short request per active dialog; dialogs whose
last message is older than the window are not asked at all.

`FloodWaitError` (and `FloodPremiumWaitError`) → wait the time Telegram asks (shown in the progress
bar). Network errors and Telegram's own trouble (500s, -503 timeouts, which Telethon retries a few
times itself before giving up) → reconnect if the connection is gone, then retry with exponential
backoff, a bounded number of times in a row.

Nothing logged or shown contains message text: only counts, error class names and chat names.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from telethon import errors
from telethon.tl import types
from tqdm import tqdm

from collect.errors import CollectError
from collect.options import SERVICE_NOTIFICATIONS_ID, CollectOptions
from collect.records import RawMessage
from collect.store import RawStore
from common.files import FILE_MODE, make_private_dir

log = logging.getLogger(__name__)

SOURCE = "telegram"
DEFAULT_SESSION = Path("~/.config/twin/telegram.session")
BATCH_SIZE = 100
"""Messages looked at between two durable commits (Telegram returns 100 per request)."""
MAX_RETRIES = 6
"""Network or server errors in a row before giving up (the data so far is kept; re-run to go on)."""
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    errors.ServerError,  # Telegram's 500s (RpcCallFail, InterdcCall...), after Telethon's own retries
    errors.TimedOutError,  # Telegram's -503 "Timeout"
)
FLOOD_WAITS: tuple[type[errors.RPCError], ...] = (errors.FloodWaitError, errors.FloodPremiumWaitError)
"""Telegram asks to wait `seconds` before asking again."""
TELETHON_GAVE_UP = "Request was unsuccessful"
"""Telethon's ValueError after `request_retries` server errors (without `raise_last_call_error`)."""
EDIT_WINDOW = timedelta(days=3)
"""How far before the previous export edits are looked for: Telegram's 48-hour edit limit, plus margin."""
CLOCK_SKEW = timedelta(minutes=5)
"""Edits this much before the previous export started are looked at again, in case clocks disagree."""
LOGIN_ATTEMPTS = 3
"""Wrong login codes or passwords typed before giving up."""
CLIENT_OPTIONS: dict[str, Any] = {
    "flood_sleep_threshold": 0,  # every FloodWait reaches the exporter (and its progress bar)
    "raise_last_call_error": True,  # after Telethon's own retries: the ServerError itself, not ValueError
}
"""How `make_client` builds the `TelegramClient` (tests build theirs with the same options)."""
NON_TEXT_MEDIA: tuple[type, ...] = (
    types.MessageMediaPoll,
    types.MessageMediaToDo,
    types.MessageMediaDice,
    types.MessageMediaGame,
    types.MessageMediaInvoice,
    types.MessageMediaContact,
    types.MessageMediaGiveaway,
    types.MessageMediaGiveawayResults,
)
"""Media whose text is not the person's words (a caption on a photo, video or file is)."""
GET_KEYS = "get api_id and api_hash at https://my.telegram.org > API development tools"
NO_KEYS = "no API keys? export from Telegram Desktop and run: python -m collect desktop path/to/result.json"

Sleep = Callable[[float], Awaitable[Any]]


class TelegramSettings(BaseSettings):
    """Telegram API credentials, from the environment or a `.env` file (never logged or printed)."""

    model_config = SettingsConfigDict(env_prefix="TELEGRAM_", env_file=".env", extra="ignore")

    api_id: int = Field(gt=0)
    """TELEGRAM_API_ID: the number shown at my.telegram.org."""
    api_hash: SecretStr
    """TELEGRAM_API_HASH: the 32-character hex string shown next to it."""
    phone: SecretStr
    """TELEGRAM_PHONE: your number in international format, e.g. +441234567890."""
    session: Path = DEFAULT_SESSION
    """TELEGRAM_SESSION: where the login session is kept (0600); it is a password: never share it."""

    @field_validator("api_hash")
    @classmethod
    def _check_hash(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value().strip()
        if len(secret) != 32 or any(c not in "0123456789abcdefABCDEF" for c in secret):
            raise ValueError("must be the 32-character hex string shown at my.telegram.org")
        return SecretStr(secret)

    @field_validator("phone")
    @classmethod
    def _check_phone(cls, value: SecretStr) -> SecretStr:
        digits = "".join(c for c in value.get_secret_value() if c.isdigit())
        if len(digits) < 6 or any(c not in "+0123456789 -()" for c in value.get_secret_value()):
            raise ValueError("must be your phone number in international format, e.g. +441234567890")
        return SecretStr("+" + digits)


def load_settings(env_file: str | Path | None = ".env") -> TelegramSettings:
    """Read the settings; one clear message listing every problem, without echoing any value."""
    try:
        return TelegramSettings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as e:
        problems = []
        for err in e.errors():
            var = "TELEGRAM_" + str(err["loc"][0]).upper() if err["loc"] else "TELEGRAM_*"
            problems.append(f"{var} is missing" if err["type"] == "missing" else f"{var} {_reason(err)}")
        where = f"the environment or {env_file}" if env_file else "the environment"
        raise CollectError(
            f"Telegram API credentials: {'; '.join(problems)}. Set TELEGRAM_API_ID, TELEGRAM_API_HASH and "
            f"TELEGRAM_PHONE in {where} ({GET_KEYS}); {NO_KEYS}"
        ) from None


def _reason(err: Any) -> str:
    if err["type"] in ("int_parsing", "int_type"):
        return "must be a whole number (the api_id shown at my.telegram.org)"
    if err["type"] == "greater_than":
        return "must be a positive number"
    return str(err["msg"]).removeprefix("Value error, ")


# ---- filtering ----------------------------------------------------------------------------------
def left_out_reason(dialog: Any) -> str | None:
    """Why a dialog is not a one-to-one chat with a person (None when it is one)."""
    if not getattr(dialog, "is_user", False):
        return "group or channel"
    entity = dialog.entity
    if getattr(entity, "is_self", False):
        return "Saved Messages"
    if entity.id == SERVICE_NOTIFICATIONS_ID:
        return "Telegram notices"
    if getattr(entity, "bot", False):
        return "bot"
    if getattr(entity, "support", False):
        return "support account"  # Telegram's volunteer support: not a friend's words
    if getattr(entity, "deleted", False):
        return "deleted account"
    return None


def is_personal_dialog(dialog: Any) -> bool:
    """A one-to-one chat with a person: not a group, channel, bot, support or deleted account, Saved
    Messages or Telegram's notices."""
    return left_out_reason(dialog) is None


def dialog_name(dialog: Any) -> str:
    name = getattr(dialog, "name", None)
    if name:
        return str(name)
    entity = dialog.entity
    parts = [getattr(entity, "first_name", None), getattr(entity, "last_name", None)]
    return " ".join(p for p in parts if p) or getattr(entity, "username", None) or "Deleted Account"


def convert_message(
    message: Any, dialog_id: int, name: str, options: CollectOptions
) -> tuple[float, RawMessage] | str:
    """A kept message as (timestamp, record), or the reason it is skipped."""
    if getattr(message, "action", None) is not None:
        return "service"
    forward = getattr(message, "fwd_from", None)
    # History imported from another app (WhatsApp, ...) carries a forward header marked `imported`:
    # those are the chat's own messages, with `out` saying who wrote them, not forwards.
    imported = forward is not None and bool(getattr(forward, "imported", False))
    if forward is not None and not imported and not options.keep_forwarded:
        return "forwarded"
    if isinstance(getattr(message, "media", None), NON_TEXT_MEDIA):
        return "poll, contact or other non-text"
    if getattr(message, "sticker", None) is not None:
        return "sticker"
    text = getattr(message, "message", None) or ""
    if not text.strip():
        return "media without caption or empty"
    sent = forward.date if forward is not None and imported and forward.date else message.date
    date = _utc(sent)  # an imported message: when it was originally sent, not when it was imported
    ts = date.timestamp()
    if ts < options.since_ts:
        return "before --since"
    iso = date.astimezone(UTC).isoformat()
    return ts, RawMessage(id=message.id, date=iso, out=bool(message.out), message=text, dialog_id=dialog_id,
                          dialog_name=name)  # fmt: skip


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_transient(error: BaseException) -> bool:
    """Worth retrying after a pause: the network, or Telegram's own trouble (500s, -503 timeouts)."""
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    return isinstance(error, ValueError) and str(error).startswith(TELETHON_GAVE_UP)


# ---- export -------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    """What one live export did."""

    out: Path
    dialogs: int = 0
    new_messages: int = 0
    edited: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    """Dialogs that are not one-to-one chats with a person, by reason."""
    flood_waits: int = 0
    network_retries: int = 0
    reconnects: int = 0

    def line(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) or "none"
        left_out = ", ".join(f"{n} {_plural(why, n)}" for why, n in self.left_out.most_common()) or "none"
        return (
            f"collect telegram: {self.dialogs} personal chats, {self.new_messages} new messages, "
            f"{self.edited} edited -> {self.out}/ ; "
            f"skipped {skipped}; left out chats: {left_out}; "
            f"{self.flood_waits} flood waits, {self.network_retries} network retries, "
            f"{self.reconnects} reconnects"
        )


def _plural(what: str, n: int) -> str:
    if n == 1 or what[0].isupper():  # "Saved Messages", "Telegram notices"
        return what
    return what.replace("group or channel", "groups or channels") if what.startswith("group") else what + "s"


async def export_account(
    client: Any,
    out: str | Path,
    *,
    options: CollectOptions | None = None,
    limit_dialogs: int | None = None,
    sleep: Sleep = asyncio.sleep,
    progress: bool | None = None,
    batch_size: int = BATCH_SIZE,
    max_retries: int = MAX_RETRIES,
    edit_window: timedelta = EDIT_WINDOW,
) -> ExportSummary:
    """Export the personal dialogs reachable through `client` into `out` (see the module docstring).

    `client` needs Telethon's `iter_dialogs`, `iter_messages`, `is_connected` and `connect`.
    """
    if limit_dialogs is not None and limit_dialogs < 1:
        raise CollectError(
            f"--limit-dialogs {limit_dialogs}: must be at least 1 (or left out for all dialogs)"
        )
    exporter = _Exporter(client, RawStore(out), options or CollectOptions(), sleep, progress, batch_size,
                         max_retries, edit_window)  # fmt: skip
    await exporter.run(limit_dialogs)
    return exporter.summary


class _Exporter:
    def __init__(
        self,
        client: Any,
        store: RawStore,
        options: CollectOptions,
        sleep: Sleep,
        progress: bool | None,
        batch_size: int,
        max_retries: int,
        edit_window: timedelta,
    ) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.sleep = sleep
        self.disable = None if progress is None else not progress
        self.batch_size = max(1, batch_size)
        self.max_retries = max_retries
        self.edit_window = edit_window
        self.summary = ExportSummary(out=store.dir)

    async def run(self, limit_dialogs: int | None) -> None:
        with tqdm(desc="dialogs", unit="dialog", disable=self.disable, position=0) as overall:
            dialogs = await self._list_dialogs(limit_dialogs, overall)
            overall.reset(total=len(dialogs))
            for dialog in dialogs:
                overall.set_postfix_str(dialog_name(dialog)[:24])
                await self._export_dialog(dialog, overall)
                self.summary.dialogs += 1
                overall.update(1)

    async def _list_dialogs(self, limit: int | None, bar: tqdm) -> list[Any]:
        failures = 0
        while True:
            dialogs: list[Any] = []
            left_out: Counter[str] = Counter()
            try:
                await self._connect_if_needed()
                async for dialog in _guarded(self.client.iter_dialogs().__aiter__()):
                    reason = left_out_reason(dialog)
                    if reason is not None:
                        left_out[reason] += 1
                        continue
                    dialogs.append(dialog)
                    if limit is not None and len(dialogs) >= limit:
                        break
                self.summary.left_out = left_out
                return dialogs
            except _FetchError as wrapped:
                failures = await self._recover(wrapped.error, failures, bar)

    async def _connect_if_needed(self) -> None:
        """Telethon reconnects by itself a few times; after a longer outage the client stays
        disconnected and every request fails at once, so connect again before retrying."""
        if self.client.is_connected():
            return
        log.info("connection to Telegram lost: reconnecting")
        try:
            await self.client.connect()
        except Exception as e:
            if isinstance(e, FLOOD_WAITS) or is_transient(e):
                raise _FetchError(e) from e
            raise
        self.summary.reconnects += 1

    async def _recover(self, error: BaseException, failures: int, bar: tqdm) -> int:
        """Wait out a FloodWait, or back off after a network or server error; the new failure count."""
        if isinstance(error, FLOOD_WAITS):
            await self._flood_wait(error, bar)
            return failures
        failures += 1
        await self._backoff(error, failures, bar)
        return failures

    async def _flood_wait(self, e: Any, bar: tqdm) -> None:
        self.summary.flood_waits += 1
        bar.set_postfix_str(f"Telegram asks to wait: sleeping {e.seconds}s (FloodWait)")
        log.info("FloodWait: sleeping %ss as Telegram asks", e.seconds)
        await self.sleep(e.seconds)
        bar.set_postfix_str("")

    async def _backoff(self, e: BaseException, failures: int, bar: tqdm) -> None:
        if failures > self.max_retries:
            raise CollectError(
                f"Telegram unreachable: {failures} network or server errors in a row ({type(e).__name__}); "
                "what was exported "
                f"so far is kept in {self.store.dir} — check the connection and run the same command again"
            ) from None
        self.summary.network_retries += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        bar.set_postfix_str(
            f"network error ({type(e).__name__}), retry {failures}/{self.max_retries} in {delay:.0f}s"
        )
        log.info("network error %s; retry %d in %.0fs", type(e).__name__, failures, delay)
        await self.sleep(delay)
        bar.set_postfix_str("")

    async def _export_dialog(self, dialog: Any, overall: tqdm) -> None:
        entity = dialog.entity
        dialog_id, name = int(entity.id), dialog_name(dialog)
        cursor = self.store.resume(dialog_id, name, keep_empty=True)
        started = datetime.now(UTC)
        batch: list[tuple[float, RawMessage]] = []
        looked_at = 0
        failures = 0

        def commit() -> None:
            nonlocal looked_at
            self.store.append(dialog_id, SOURCE, batch, cursor)
            self.summary.new_messages += len(batch)
            batch.clear()
            looked_at = 0

        with tqdm(desc=name[:24], unit="msg", leave=False, disable=self.disable, position=1) as bar:
            if cursor > 0:
                await self._refresh_edits(dialog, dialog_id, name, cursor, bar)
            while True:
                kwargs: dict[str, Any] = {"min_id": cursor, "reverse": True}
                if cursor == 0 and self.options.since is not None:
                    # with reverse=True: messages *after* offset_date (exclusive), so step back a second
                    kwargs["offset_date"] = self.options.since - timedelta(seconds=1)
                try:
                    await self._connect_if_needed()
                    messages = self.client.iter_messages(entity, **kwargs).__aiter__()
                    async for message in _guarded(messages):
                        failures = 0
                        if message.id <= cursor:
                            continue  # never the same message twice, whatever the server sends
                        kept = convert_message(message, dialog_id, name, self.options)
                        cursor = message.id
                        looked_at += 1
                        if isinstance(kept, str):
                            self.summary.skipped[kept] += 1
                        else:
                            batch.append(kept)
                        bar.update(1)
                        if looked_at >= self.batch_size:
                            commit()
                    break
                except _FetchError as wrapped:
                    commit()  # keep what arrived before the error, then wait and continue from it
                    failures = await self._recover(wrapped.error, failures, bar)
            commit()
            self.store.finish(dialog_id, synced=started.isoformat(timespec="seconds"))

    async def _refresh_edits(self, dialog: Any, dialog_id: int, name: str, cursor: int, bar: tqdm) -> None:
        """Put messages edited since the dialog's previous export in place of their old lines."""
        state = self.store.dialogs[dialog_id]
        previous = state.synced or state.updated
        if not previous:
            return
        last_export = _utc(datetime.fromisoformat(previous))
        window_start = last_export - self.edit_window
        last_message = getattr(dialog, "date", None)
        if isinstance(last_message, datetime) and _utc(last_message) < window_start:
            return  # nothing in this chat was sent recently enough to be edited since
        failures = 0
        while True:
            changed: list[tuple[float, RawMessage]] = []
            removed: list[int] = []
            try:
                await self._connect_if_needed()
                # newest first, only what the previous runs already saw (ids up to the cursor)
                messages = self.client.iter_messages(dialog.entity, max_id=cursor + 1).__aiter__()
                async for message in _guarded(messages):
                    failures = 0
                    if message.id > cursor:
                        continue
                    if _utc(message.date) < window_start:
                        break
                    edited = getattr(message, "edit_date", None)
                    if edited is None or _utc(edited) < last_export - CLOCK_SKEW:
                        continue
                    kept = convert_message(message, dialog_id, name, self.options)
                    if isinstance(kept, str):
                        removed.append(message.id)
                    else:
                        changed.append(kept)
                break
            except _FetchError as wrapped:
                failures = await self._recover(wrapped.error, failures, bar)
        if changed or removed:
            self.summary.edited += self.store.replace(dialog_id, SOURCE, changed, removed)


class _FetchError(Exception):
    """A retryable error raised while *fetching* (not while writing, which must never be retried)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _guarded(items: Any) -> Any:
    """Yield from a Telethon iterator, wrapping only FloodWait, network and server errors."""
    while True:
        try:
            item = await items.__anext__()
        except StopAsyncIteration:
            return
        except FLOOD_WAITS as e:
            raise _FetchError(e) from e
        except Exception as e:
            if is_transient(e):
                raise _FetchError(e) from e
            raise
        yield item


# ---- the real client ----------------------------------------------------------------------------
def prepare_session_file(path: str | Path) -> Path:
    """Create the session file owner-only (0600) in an owner-only folder before Telethon opens it."""
    path = Path(path).expanduser()
    if not path.name.endswith(".session"):
        path = path.with_name(path.name + ".session")
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    os.chmod(path, FILE_MODE)
    return path


def make_client(settings: TelegramSettings) -> Any:
    """A not-yet-connected `TelegramClient` (with `CLIENT_OPTIONS`) on the owner-only session file."""
    from telethon import TelegramClient

    session = prepare_session_file(settings.session)
    client = TelegramClient(
        str(session), settings.api_id, settings.api_hash.get_secret_value(), **CLIENT_OPTIONS
    )
    os.chmod(session, FILE_MODE)
    return client


class LoginError(CollectError):
    """The login did not succeed; the message says what to do (one line, no secrets)."""


async def login(client: Any, settings: TelegramSettings) -> None:
    """Connect and log in: on the first run Telegram sends a code (then asks the 2FA password, if set).

    Done step by step rather than with Telethon's `client.start()`, which catches a wrong or expired
    code itself, re-prompts, and ends in a bare RuntimeError or ValueError.
    """
    try:
        await _sign_in(client, settings.phone.get_secret_value())
    except CollectError:
        raise
    except errors.ApiIdInvalidError:
        raise LoginError(
            f"Telegram rejected TELEGRAM_API_ID / TELEGRAM_API_HASH: copy both again ({GET_KEYS})"
        ) from None
    except (errors.PhoneNumberInvalidError, errors.PhoneNumberUnoccupiedError):
        raise LoginError(
            "Telegram does not know TELEGRAM_PHONE: set it to your account's number in international format, "
            "e.g. +441234567890"
        ) from None
    except errors.PhoneNumberBannedError:
        raise LoginError("Telegram reports this phone number as banned; nothing can be exported") from None
    except errors.PhoneCodeExpiredError:
        raise LoginError(_CODE_EXPIRED) from None
    except (errors.PhoneCodeInvalidError, errors.PhoneCodeEmptyError):
        raise LoginError("the login code was wrong: run the command again for a new code") from None
    except errors.PasswordHashInvalidError:
        raise LoginError("wrong two-step verification password: run the command again") from None
    except FLOOD_WAITS as e:
        raise LoginError(f"Telegram asks to wait {e.seconds}s before logging in again; try later") from None
    except EOFError:
        raise LoginError(
            "the first login needs a terminal to type the code Telegram sends you: run "
            "`python -m collect telegram` once in a terminal (later runs reuse the saved session)"
        ) from None
    except errors.RPCError as e:
        if is_transient(e):
            raise LoginError(_SERVER_TROUBLE.format(type(e).__name__)) from None
        raise LoginError(
            f"Telegram refused the login ({type(e).__name__}); check TELEGRAM_* settings"
        ) from None
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(TELETHON_GAVE_UP):
            raise LoginError(_SERVER_TROUBLE.format("server errors")) from None
        if is_transient(e):
            raise LoginError(
                f"cannot reach Telegram ({type(e).__name__}): check the connection and retry"
            ) from None
        raise


_CODE_EXPIRED = (
    "the login code expired: run the command again and type the new code within a few minutes "
    "(a code that was sent to anyone, even to yourself in a chat, expires at once)"
)
_SERVER_TROUBLE = "Telegram is having trouble ({}) during the login: try again in a few minutes"


async def _sign_in(client: Any, phone: str) -> None:
    if not client.is_connected():
        await client.connect()
    if await client.is_user_authorized():
        return  # the saved session is still valid
    await client.send_code_request(phone)
    prompt = "Enter the login code Telegram sent you: "
    for attempt in range(1, LOGIN_ATTEMPTS + 1):
        code = input(prompt).strip().replace(" ", "")
        try:
            await client.sign_in(phone, code=code)
            return
        except errors.SessionPasswordNeededError:
            break
        except (errors.PhoneCodeInvalidError, errors.PhoneCodeEmptyError):
            if attempt == LOGIN_ATTEMPTS:
                raise LoginError(
                    f"the login code was wrong {LOGIN_ATTEMPTS} times: run the command again for a new "
                    "code (it arrives in your Telegram app, from the account named Telegram)"
                ) from None
            prompt = f"That code was wrong ({LOGIN_ATTEMPTS - attempt} tries left); enter it again: "
    prompt = "Two-step verification is on; enter your Telegram password: "
    for attempt in range(1, LOGIN_ATTEMPTS + 1):
        password = getpass.getpass(prompt)
        try:
            await client.sign_in(password=password)
            return
        except errors.PasswordHashInvalidError:
            if attempt == LOGIN_ATTEMPTS:
                raise LoginError(
                    f"wrong two-step verification password {LOGIN_ATTEMPTS} times: run the command again"
                ) from None
            prompt = f"Wrong password ({LOGIN_ATTEMPTS - attempt} tries left); enter it again: "


async def run_telegram_export(
    settings: TelegramSettings,
    out: str | Path,
    *,
    options: CollectOptions | None = None,
    limit_dialogs: int | None = None,
) -> ExportSummary:
    """Log in with `settings` and export; the session file stays 0600 throughout."""
    client = make_client(settings)
    try:
        await login(client, settings)
        try:
            return await export_account(client, out, options=options, limit_dialogs=limit_dialogs)
        except errors.UnauthorizedError as e:
            raise CollectError(
                f"Telegram no longer accepts the saved session ({type(e).__name__}): delete "
                f"{settings.session} and run the command again to log in afresh"
            ) from None
    finally:
        await client.disconnect()
        os.chmod(prepare_session_file(settings.session), FILE_MODE)
