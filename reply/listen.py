"""The real Telegram client for `reply`: collect's login and session, the Replier's handlers, reconnects.

The session file and `TELEGRAM_*` settings are collect's (`collect.telegram.make_client`, `login`): a
saved session is reused, so no new login is needed after `make collect`. Telethon reconnects by itself a
few times; when it gives up, the listener connects again with collect's backoff and then stops with a
clear message. It also stops, saying how to log in again, when Telegram refuses the session (ended on
another device, expired, the account banned), whether Telethon's update loop or a reply meets it first.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import httpx
from telethon import errors, events
from telethon.tl import types

from collect.telegram import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    FLOOD_WAITS,
    MAX_RETRIES,
    is_personal_dialog,
    is_transient,
    load_settings,
    login,
    make_client,
    prepare_session_file,
)
from common.files import FILE_MODE
from reply.actions import TelegramActions
from reply.engine import Replier, Twin
from reply.errors import ReplyError
from reply.limits import Clock
from reply.settings import ReplySettings
from reply.state import ReplyState, load_state
from reply.twin import TwinClient

log = logging.getLogger(__name__)


def register(client: Any, replier: Replier) -> None:
    """Hand the Replier every event it needs (Telethon's `add_event_handler`)."""
    client.add_event_handler(replier.on_new_message, events.NewMessage())
    client.add_event_handler(replier.on_message_edited, events.MessageEdited())
    client.add_event_handler(replier.on_message_deleted, events.MessageDeleted())
    client.add_event_handler(replier.on_draft, events.Raw(types.UpdateDraftMessage))
    client.add_event_handler(replier.on_user_update, events.UserUpdate())


def check_server(settings: ReplySettings) -> None:
    """Fail at once, with what to do, when the twin server is not there."""
    key = settings.api_key.get_secret_value().strip() if settings.api_key else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{settings.base_url}/health", headers=headers, timeout=5.0)
    except httpx.HTTPError as e:
        raise ReplyError(
            f"no twin server at {settings.base_url} ({type(e).__name__}): start it first with `make serve` "
            "(or set TWIN_API_URL)"
        ) from None
    if response.status_code not in (200, 503):
        raise ReplyError(
            f"{settings.base_url}/health answered {response.status_code}: is it the twin server?"
        )


def describe(settings: ReplySettings) -> str:
    where = "the chat's draft" if settings.mode == "draft" else "Saved Messages"
    quiet = settings.quiet_hours or "none"
    auto = (
        f"auto-replies in {len(settings.auto_reply)} listed chats (quiet hours {quiet})"
        if settings.auto_reply
        else "nothing is sent without you"
    )
    dry = " [dry run: nothing is changed]" if settings.dry_run else ""
    return (
        f"twin reply: listening; suggestions go to {where}; {auto}; send {settings.stop_word} in any chat "
        f"to pause, {settings.resume_word} to resume; Ctrl-C to stop{dry}"
    )


async def run_listener(settings: ReplySettings, announce: Callable[[str], None]) -> None:
    """Log in (reusing collect's session), then answer new messages until stopped."""
    clock = Clock()
    state = load_state(settings, clock.now().timestamp())  # a damaged state file stops us before Telegram
    check_server(settings)
    telegram = load_settings(settings.env_file)
    client = make_client(telegram)
    twin = TwinClient(settings)
    try:
        await login(client, telegram)
        await answer_chats(client, settings, twin, announce, clock, state)
    except (errors.UnauthorizedError, errors.AuthKeyError) as e:  # logged out elsewhere, expired, banned
        raise ReplyError(
            f"Telegram no longer accepts the saved session ({type(e).__name__}): delete {telegram.session} "
            "and run `make collect` or this command again to log in afresh"
        ) from None
    finally:
        await twin.aclose()
        await client.disconnect()
        os.chmod(prepare_session_file(telegram.session), FILE_MODE)


async def answer_chats(
    client: Any,
    settings: ReplySettings,
    twin: Twin,
    announce: Callable[[str], None],
    clock: Clock,
    state: ReplyState | None = None,
) -> None:
    """Answer chats through a logged-in `client` until Telegram disconnects for good or refuses the session
    (raised: Telethon's `UnauthorizedError` or `AuthKeyError`, which the update loop or a reply met).
    `state`: what earlier runs counted and answered (None: read from `settings.state_file`)."""
    me = await client.get_me()
    actions = TelegramActions(
        client, clock, dry_run=settings.dry_run, announce=announce, max_flood_wait_s=settings.max_flood_wait_s
    )
    replier = Replier(settings, actions, twin, me_id=int(me.id), clock=clock, announce=announce, state=state)
    register(client, replier)
    announce(describe(settings))
    if replier.paused:
        announce(f"twin reply: PAUSED since earlier ({settings.pause_file}); send {settings.resume_word}")
    connection = asyncio.create_task(stay_connected(client, clock))
    stopped = asyncio.create_task(replier.stopped.wait())
    try:
        await asyncio.wait({connection, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (connection, stopped):
            task.cancel()
        await asyncio.gather(connection, stopped, return_exceptions=True)
        await replier.close()
    if replier.logged_out is not None:
        raise replier.logged_out
    connection.result()  # its error, if it ended with one


async def stay_connected(client: Any, clock: Clock, max_retries: int = MAX_RETRIES) -> None:
    """Run until Telegram disconnects for good: reconnect with backoff, `max_retries` failures in a row."""
    while True:
        await client.run_until_disconnected()
        failures = 0
        while not client.is_connected():
            try:
                await client.connect()
            except Exception as e:
                if not (isinstance(e, FLOOD_WAITS) or is_transient(e)):
                    raise
                failures += 1
                if failures > max_retries:
                    raise ReplyError(
                        f"Telegram unreachable: {failures} failed reconnects ({type(e).__name__}); "
                        "check the connection and start `make reply` again"
                    ) from None
                delay = float(getattr(e, "seconds", 0)) or min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**failures)
                log.info("reconnecting to Telegram in %.0fs (%s)", delay, type(e).__name__)
                await clock.sleep(delay)
        log.info("reconnected to Telegram")


async def list_chats(settings: ReplySettings, limit: int) -> list[tuple[int, str]]:
    """(id, name) of the most recent one-to-one chats with people: the ids `--auto-reply` takes."""
    telegram = load_settings(settings.env_file)
    client = make_client(telegram)
    try:
        await login(client, telegram)
        chats = []
        async for dialog in client.iter_dialogs():
            if is_personal_dialog(dialog):
                chats.append((int(dialog.entity.id), str(dialog.name or "")))
                if len(chats) >= limit:
                    break
        return chats
    finally:
        await client.disconnect()
        os.chmod(prepare_session_file(telegram.session), FILE_MODE)
