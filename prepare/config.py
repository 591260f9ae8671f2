"""The settings of one `prepare` run: the single home of every default (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .prompt import MAX_CONTEXT_CHARS, MAX_CONTEXT_TURNS


@dataclass(frozen=True)
class PrepareConfig:
    """How raw chats become instruction records."""

    raw: Path = Path("data/raw")
    """Folder of raw dialog files (`<dialog_id>.jsonl`) written by `collect`."""
    out: Path = Path("data/prepared")
    """Folder for train.jsonl, val.jsonl, stats.json and prepare_config.json (created 0700)."""
    gap_hours: float = 24.0
    """A silence longer than this between two messages of a dialog starts a new conversation."""
    max_context_turns: int = MAX_CONTEXT_TURNS
    """At most this many earlier turns go into a record's context (the most recent ones)."""
    max_context_chars: int = MAX_CONTEXT_CHARS
    """The rendered context is at most this many characters (whole turns only)."""
    max_response_chars: int = 2000
    """Replies longer than this (pasted articles, logs) are skipped: they are not the person's voice."""
    val_fraction: float = 0.05
    """Share of conversations (not records) held out for validation; 0 writes an empty val.jsonl."""
    seed: int = 42
    """Seed of the train/val split: the same data and seed always give the same split."""
    feedback: Path | None = Path("data/feedback/feedback.jsonl")
    """`reply`'s feedback file: what you sent after each twin draft (as is, edited or replaced) joins the
    train split as records (a missing file adds none). None: leave it out."""
    scrub_report: Path | None = None
    """Also write where each secret was replaced (kind, dialog file, message id, character offsets; never the
    value) to this JSONL file, owner-only, to audit before training. None: no report."""

    def __post_init__(self) -> None:
        problems = []
        if not self.gap_hours > 0:
            problems.append(f"--gap-hours must be > 0 (got {self.gap_hours}); 24 is a good start")
        if self.max_context_turns < 0:
            problems.append(f"--max-context-turns must be >= 0 (got {self.max_context_turns})")
        if self.max_context_chars < 0:
            problems.append(f"--max-context-chars must be >= 0 (got {self.max_context_chars})")
        if self.max_response_chars < 1:
            problems.append(f"--max-response-chars must be >= 1 (got {self.max_response_chars})")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"--val-fraction must be in [0, 1) (got {self.val_fraction}); e.g. 0.05")
        if self.scrub_report is not None and Path(self.scrub_report).resolve().is_relative_to(
            Path(self.raw).resolve()
        ):
            problems.append("--scrub-report must be outside --raw: prepare reads every file there as chats")
        raw = Path(self.raw).resolve()
        if self.feedback is not None and Path(self.feedback).resolve().is_relative_to(raw):
            problems.append("--feedback must be outside --raw: prepare reads every file there as chats")
        if Path(self.raw).resolve() == Path(self.out).resolve():
            problems.append(
                "--out must differ from --raw: prepare would read its own output as chats next time"
            )
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
