"""`python -m reply [--flags]` listens and drafts; `python -m reply stats` and `python -m reply chats` report.

The listener's flags are generated from `reply.settings.ReplySettings` (each also `TWIN_REPLY_<NAME>`);
the twin server's address and key are `TWIN_API_URL` / `TWIN_API_KEY` (env or .env) only, as for the ui.
User errors are one line and exit 2; Ctrl-C stops (pending auto-replies are cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from collect.errors import CollectError
from common.cli import parse_settings, run, run_function
from prepare.feedback import draft_stats
from reply.errors import ReplyError
from reply.settings import FEEDBACK_FILE, ReplySettings

PROG = "python -m reply"
EPILOG = (
    "Other commands: `python -m reply stats` (how drafts fared), `python -m reply chats` (chat ids for "
    "--auto-reply). The twin server: TWIN_API_URL and TWIN_API_KEY (env or .env); Telegram: collect's "
    "TELEGRAM_* settings and session."
)


def announce(line: str) -> None:
    print(line, flush=True)


def listen(settings: ReplySettings) -> None:
    from reply.listen import run_listener

    os.umask(0o077)  # the feedback file, the pause flag and the session stay owner-only
    asyncio.run(run_listener(settings, announce))


def stats(feedback: Path = FEEDBACK_FILE) -> None:
    """How the twin's drafts fared: sent unchanged, edited, replaced by your own words, or not sent.

    Args:
        feedback: the feedback file `python -m reply` writes
    """
    numbers = draft_stats(feedback)
    if not numbers["drafts"]:
        print(f"no drafts recorded in {feedback} yet")
        return
    for name, value in numbers.items():
        shown = f"{value:.0%}" if isinstance(value, float) else "-" if value is None else str(value)
        print(f"{name.replace('_', ' '):>24}  {shown}")


def chats(limit: int = 30, env_file: Path = Path(".env")) -> None:
    """List your most recent one-to-one chats with their ids (what --auto-reply takes).

    Args:
        limit: how many chats
        env_file: the .env holding collect's TELEGRAM_* settings
    """
    from reply.listen import list_chats

    os.umask(0o077)
    settings = ReplySettings(env_file=env_file)
    for chat_id, name in asyncio.run(list_chats(settings, limit)):
        print(f"{chat_id:>14}  {name}")


COMMANDS: dict[str, Callable[..., None]] = {"stats": stats, "chats": chats}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("telethon").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry every request URL
    args = list(sys.argv[1:] if argv is None else argv)
    errors = (ReplyError, CollectError, ValueError)
    if args[:1] and args[0] in COMMANDS:
        command = COMMANDS[args[0]]
        return run_function(command, args[1:], prog=f"{PROG} {args[0]}", errors=errors, prefix="reply: ")
    return run(
        lambda: listen(parse_settings(ReplySettings, args, prog=PROG, epilog=EPILOG)),
        errors=errors,
        prefix="reply: ",
        interrupted="\nreply: stopped",
    )
