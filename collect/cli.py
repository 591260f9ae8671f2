"""`python -m collect telegram|desktop ...`: the typed signatures below are the CLI (jsonargparse).

Options are spelled with dashes (`--limit-dialogs`, `--keep-forwarded`, as in the README) or underscores;
a bool option given alone means true. User errors print one line (no traceback) and exit 2.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from collect.desktop import import_desktop_export
from collect.errors import CollectError
from collect.options import CollectOptions, parse_since

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


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
    continues where the last run stopped and fetches only newer messages.

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
    """Import the one-to-one chats of a Telegram Desktop JSON export (no API keys needed).

    Telegram Desktop > Settings > Advanced > Export Telegram data (or a chat's menu > Export chat
    history), format "Machine-readable JSON". Importing the same export again adds nothing; a newer
    export adds only the newer messages.

    Args:
        path: the export's result.json, or the folder holding it
        out: output folder: one <dialog_id>.jsonl per chat plus manifest.json (folder 0700, files 0600)
        me: your Telegram user id, when it cannot be told from the export
        since: only messages sent on or after this day, YYYY-MM-DD (UTC)
        keep_forwarded: also keep messages forwarded from elsewhere (skipped by default)
    """
    os.umask(0o077)
    summary = import_desktop_export(path, out, me=me, options=_options(since, keep_forwarded))
    print(summary.line())


COMMANDS: dict[str, Callable[..., None]] = {"telegram": telegram, "desktop": desktop}


def _options(since: str | None, keep_forwarded: bool) -> CollectOptions:
    try:
        return CollectOptions(keep_forwarded=keep_forwarded, since=parse_since(since))
    except ValueError as e:
        raise CollectError(str(e)) from None


def normalize_argv(argv: Sequence[str], commands: Sequence[Callable[..., Any]]) -> list[str]:
    """`--keep-forwarded` → `--keep_forwarded true`, `--limit-dialogs 3` → `--limit_dialogs 3`."""
    flags = {
        name
        for command in commands
        for name, param in inspect.signature(command).parameters.items()
        if param.annotation in (bool, "bool")
    }
    result: list[str] = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            result.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        result.append(f"--{name}{eq}{value}")
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if name in flags and not eq and following not in ("true", "false"):
            result.append("true")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = normalize_argv(sys.argv[1:] if argv is None else argv, list(COMMANDS.values()))
    try:
        CLI(COMMANDS, args=args, prog="python -m collect")
    except CollectError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything written so far is kept; run the same command again to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0
