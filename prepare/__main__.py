"""`python -m prepare --raw data/raw --out data/prepared [...]`: raw chats → train/val instruction records.

The typed signature of `main` is the CLI (common/cli.py: kebab-case flags such as `--gap-hours 12`); its
defaults come from `PrepareConfig`, their one home.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common.cli import run_function

from .config import PrepareConfig
from .errors import PrepareError
from .pipeline import prepare
from .records import STATS_FILE, TRAIN_FILE, VAL_FILE

_D = PrepareConfig()


def main(
    raw: Path = _D.raw,
    out: Path = _D.out,
    gap_hours: float = _D.gap_hours,
    max_context_turns: int = _D.max_context_turns,
    max_context_chars: int = _D.max_context_chars,
    max_response_chars: int = _D.max_response_chars,
    val_fraction: float = _D.val_fraction,
    seed: int = _D.seed,
    scrub_report: Path | None = _D.scrub_report,
    feedback: Path | None = _D.feedback,
) -> dict[str, Any]:
    """Turn raw Telegram chats into train/val instruction records with secrets scrubbed.

    Args:
        raw: Folder of raw dialog files (`<dialog_id>.jsonl`) written by `make collect`.
        out: Folder for train.jsonl, val.jsonl, stats.json and prepare_config.json (created 0700).
        gap_hours: A silence longer than this between two messages starts a new conversation.
        max_context_turns: At most this many earlier turns go into a record's context.
        max_context_chars: The rendered context is at most this many characters (whole turns only).
        max_response_chars: Replies longer than this (pastes, logs) are skipped.
        val_fraction: Share of conversations held out for validation (0 for none).
        seed: Seed of the train/val split.
        scrub_report: Also write each replaced secret's kind and position (dialog file, message id,
            character offsets; never the value) to this JSONL file, owner-only, to audit before training.
        feedback: `python -m reply`'s feedback file: the replies you sent after its drafts (as they were,
            edited or replaced) join the train split (a missing file adds none; none: leave them out).
    """
    try:
        config = PrepareConfig(
            raw=Path(raw),
            out=Path(out),
            gap_hours=gap_hours,
            max_context_turns=max_context_turns,
            max_context_chars=max_context_chars,
            max_response_chars=max_response_chars,
            val_fraction=val_fraction,
            seed=seed,
            scrub_report=Path(scrub_report) if scrub_report is not None else None,
            feedback=Path(feedback) if feedback is not None else None,
        )
    except ValueError as e:
        raise PrepareError(str(e)) from None
    stats = prepare(config)
    print_summary(stats, config)
    return stats


def print_summary(stats: dict[str, Any], config: PrepareConfig, console: Console | None = None) -> None:
    """The short table at the end of a run, then one line saying what was written where."""
    console = console or Console()
    table = Table(title="prepare", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("dialogs", stats["dialogs"]),
        ("  without a reply of yours", stats["dialogs_without_replies"]),
        ("messages read", stats["messages_read"]),
        ("conversations", stats["conversations"]),
        ("records (train / val)", f"{stats['train_records']} / {stats['val_records']}"),
    ]
    if stats.get("feedback", {}).get("records"):
        rows.append(("  of them from reply's drafts", stats["feedback"]["records"]))
    rows += [(f"skipped: {k}", v) for k, v in stats["skipped"].items() if v]
    rows += [(f"scrubbed: <{k}>", v) for k, v in stats["scrubbed"].items() if v]
    resp = stats["length_chars"]["response"]
    rows.append(("reply length p50 / p99 (chars)", f"{resp['p50']} / {resp['p99']}"))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    scrubbed = {kind: n for kind, n in stats["scrubbed"].items() if n}
    by_kind = ", ".join(f"{n} {kind}" for kind, n in scrubbed.items())
    secrets = f"; scrubbed {sum(scrubbed.values())} secrets" + (f" ({by_kind})" if by_kind else "")
    report = f"; where: {stats['scrub_report']}" if stats.get("scrub_report") else ""
    console.print(
        f"Wrote {stats['train_records']} train and {stats['val_records']} val records to "
        f"{config.out}/ ({TRAIN_FILE}, {VAL_FILE}, {STATS_FILE}) in {stats['seconds']:.1f} s"
        + _dropped_dates(stats)
        + _dropped_empty(stats)
        + secrets
        + report,
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


def _dropped_dates(stats: dict[str, Any]) -> str:
    """The summary's note on the messages left out for a date no message can have (1970, 2100)."""
    n = stats["skipped"].get("implausible_date", 0)
    what = "message" if n == 1 else "messages"
    return f"; left out {n} {what} with an impossible date (before 2013-08 or over a year ahead)" if n else ""


def _dropped_empty(stats: dict[str, Any]) -> str:
    """The summary's note on the replies left out for being empty once scrubbed: each would have taught
    the twin to answer with nothing. (reply's feedback counts its own among `feedback.skipped`.)"""
    n = stats["skipped"].get("response_only_placeholders", 0)
    return f"; left out {n} empty {'reply' if n == 1 else 'replies'} (nothing but secrets)" if n else ""


def cli(argv: list[str] | None = None) -> int:
    """Entry point: parse flags, run; a user error is one line on stderr and exit code 2."""
    return run_function(
        main,
        argv,
        prog="python -m prepare",
        errors=(PrepareError,),
        prefix="prepare: ",
        interrupted="prepare: interrupted",
    )


if __name__ == "__main__":
    sys.exit(cli())
