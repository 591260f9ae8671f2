"""`python -m collect telegram|desktop ...`: the typed signatures below are the CLI (common/cli.py).

Flags are kebab-case (`--limit-dialogs`, `--keep-forwarded`); a bool flag given alone means true and
`--no-keep-forwarded` false. User errors print one line (no traceback) and exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from collect.desktop import import_desktop_export
from collect.errors import CollectError, os_reason
from collect.options import CollectOptions, parse_since
from common.cli import run_function


def telegram(
    out: Path = Path("data/raw"),
    limit_dialogs: int | None = None,
    since: str | None = None,
    keep_forwarded: bool = False,
    env_file: Path = Path(".env"),
) -> None:
    """Export your one-to-one Telegram chats live through the Telegram API (Telethon).

    Needs TELEGRAM_API_ID, TELEGRAM_API_HASH (from https://my.telegram.org) and TELEGRAM_PHONE in the
    environment or in --env-file. The first run asks for the login code Telegram sends you. Re-running
    continues where the last run stopped, fetches only newer messages, and picks up edits of messages sent
    in the 3 days before the previous run (Telegram allows edits for 48 hours).

    Args:
        out: output folder: one <dialog_id>.jsonl per chat plus manifest.json (folder 0700, files 0600)
        limit_dialogs: export only the N most recent one-to-one chats
        since: only messages sent on or after this day, YYYY-MM-DD (UTC)
        keep_forwarded: also keep messages forwarded from elsewhere (skipped by default)
        env_file: a .env file that may hold the TELEGRAM_* settings (the environment wins)
    """
    from collect.telegram import load_settings, run_telegram_export

    os.umask(0o077)  # everything this process creates (session, journal, data) is owner-only
    options = _options(since, keep_forwarded)
    settings = load_settings(env_file)
    summary = asyncio.run(run_telegram_export(settings, out, options=options, limit_dialogs=limit_dialogs))
    print(summary.line())


def desktop(
    path: Path,
    out: Path = Path("data/raw"),
    me: int | None = None,
    since: str | None = None,
    keep_forwarded: bool = False,
) -> None:
    """Import the one-to-one chats of Telegram Desktop JSON exports (no API keys needed).

    Telegram Desktop > Settings > Advanced > Export Telegram data (or a chat's menu > Export chat
    history), format "Machine-readable JSON". Importing the same export again adds nothing; a newer
    export adds only the newer messages. Old exports (before mid-2021, with ids + 2^32) are read with
    today's ids, so they merge with newer ones.

    Args:
        path: the export's result.json, the folder holding it, or a folder of export folders
            (ChatExport_*, DataExport_*: each is imported)
        out: output folder: one <dialog_id>.jsonl per chat plus manifest.json (folder 0700, files 0600)
        me: your Telegram user id, when it cannot be told from the export
        since: only messages sent on or after this day, YYYY-MM-DD (UTC)
        keep_forwarded: also keep messages forwarded from elsewhere (skipped by default)
    """
    os.umask(0o077)
    options = _options(since, keep_forwarded)
    try:
        summary = import_desktop_export(path, out, me=me, options=options)
    except OSError as e:  # a backstop: the importer names the file and the fix itself
        raise CollectError(f"{e.filename or path}: {os_reason(e)}") from None
    print(summary.line())


COMMANDS: dict[str, Callable[..., None]] = {"telegram": telegram, "desktop": desktop}


def _options(since: str | None, keep_forwarded: bool) -> CollectOptions:
    try:
        return CollectOptions(keep_forwarded=keep_forwarded, since=parse_since(since))
    except ValueError as e:
        raise CollectError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return run_function(
        COMMANDS,
        argv,
        prog="python -m collect",
        errors=(CollectError,),
        interrupted="\ninterrupted: everything written so far is kept; "
        "run the same command again to continue",
    )
