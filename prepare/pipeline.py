"""One `prepare` run: read raw chats, build and split records, write them with their stats and config."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.files import make_private_dir, open_private_atomic, write_private_atomic
from common.scrub import KINDS

from .build import SKIP_REASONS, Built, build_records
from .config import PrepareConfig
from .errors import PrepareError
from .load import load_feedback, load_messages
from .records import CONFIG_FILE, STATS_FILE, TRAIN_FILE, VAL_FILE, Record
from .split import split_conversations

STATS_VERSION = 1


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    """Write records one JSON object a line, atomically (temp file + rename), 0600 from the first byte."""
    with open_private_atomic(path, "wb") as f:
        buf: list[bytes] = []
        for record in records:
            buf.append(orjson.dumps(record))
            if len(buf) >= 8192:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")


def write_scrub_report(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object a line per replaced span (kind and position, never the value), owner-only."""
    if not path.parent.exists():
        make_private_dir(path.parent)
    write_private_atomic(path, b"".join(orjson.dumps(row) + b"\n" for row in rows))


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    arr = np.asarray(lengths)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(arr.max())}


def _why_no_records(built: Built) -> str:
    c, s = built.counts, built.skipped
    if c["messages_kept"] == 0:
        if s["implausible_date"]:
            rest = ", the others are empty" if s["empty_message"] else ""
            return (
                f"{s['implausible_date']} messages have impossible dates (before 2013-08 or more than a "
                f"year ahead: a zero or mis-scaled timestamp){rest}; fix the `date` fields (ISO-8601 with a "
                "UTC offset) or re-run `make collect`"
            )
        return "every message is empty after cleaning; check the raw files (re-run `make collect`)"
    if c["my_messages"] == 0:
        return (
            "none of the messages is yours (`out: true`), and twin learns from your replies; check that "
            "collect exported both sides of your chats (re-run `make collect`)"
        )
    if c["my_messages"] == c["messages_kept"]:
        return (
            "every message is yours (`out: true`): with nothing of your partners' there is nothing your "
            "replies answer; check that collect exported both sides of your chats (re-run `make collect`)"
        )
    if (
        s["reply_opens_conversation"]
        and sum(s[r] for r in ("response_too_long", "response_only_placeholders")) == 0
    ):
        return (
            "each of your messages opens a conversation: none follows a partner's message within "
            "--gap-hours; try a larger --gap-hours"
        )
    parts = ", ".join(f"{n} {reason}" for reason, n in s.items() if n and reason in SKIP_REASONS)
    return f"every reply of yours was skipped ({parts}); see docs/data-format.md for the reasons"


def make_stats(built: Built, is_val: np.ndarray, seconds: float, config: PrepareConfig) -> dict[str, Any]:
    records = built.records
    val_convs = np.unique(built.conversation[is_val])
    train_convs = np.unique(built.conversation[~is_val])
    return {
        "version": STATS_VERSION,
        **built.counts,
        "records": len(records),
        "train_records": int((~is_val).sum()),
        "val_records": int(is_val.sum()),
        "train_conversations": len(train_convs),
        "val_conversations": len(val_convs),
        "skipped": {reason: int(built.skipped.get(reason, 0)) for reason in SKIP_REASONS},
        "scrubbed": {kind: int(built.scrubbed.get(kind, 0)) for kind in KINDS},
        "scrub_report": str(config.scrub_report) if config.scrub_report is not None else None,
        "length_chars": {
            "instruction": _percentiles([len(r.instruction) for r in records]),
            "context": _percentiles([len(r.context) for r in records]),
            "response": _percentiles([len(r.response) for r in records]),
        },
        "seconds": round(seconds, 2),
    }


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run the whole stage; returns the stats it also writes to `<out>/stats.json`."""
    started = time.perf_counter()
    messages = load_messages(Path(config.raw))
    built = build_records(messages, config, report=config.scrub_report is not None)
    del messages
    if not built.records:
        raise PrepareError(
            f"no training records from {built.counts['messages_read']} messages: {_why_no_records(built)}"
        )
    is_val = split_conversations(built.conversation, config.val_fraction, config.seed)
    feedback = load_feedback(config, built.records)  # train only: val stays the raw chats' own
    built.scrubbed.update(feedback.scrubbed)
    if config.scrub_report is not None:
        try:
            write_scrub_report(Path(config.scrub_report), built.scrub_report)
        except OSError as e:
            raise PrepareError(
                f"cannot write {e.filename or config.scrub_report}: {e.strerror or type(e).__name__}; "
                "pick another --scrub-report"
            ) from None

    try:
        out = make_private_dir(config.out)
        is_val_list = is_val.tolist()
        train = (r for r, v in zip(built.records, is_val_list, strict=True) if not v)
        write_jsonl(out / TRAIN_FILE, [*train, *feedback.records])
        write_jsonl(out / VAL_FILE, (r for r, v in zip(built.records, is_val_list, strict=True) if v))
        settings = orjson.dumps(config.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
        write_private_atomic(out / CONFIG_FILE, settings)
        stats = make_stats(built, is_val, time.perf_counter() - started, config)
        stats["records"] += len(feedback.records)
        stats["train_records"] += len(feedback.records)
        stats["feedback"] = {"file": str(config.feedback) if config.feedback else None, **feedback.counts}
        write_private_atomic(out / STATS_FILE, orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as e:
        where = e.filename or config.out
        raise PrepareError(
            f"cannot write {where}: {e.strerror or type(e).__name__}; pick another --out"
        ) from None
    return stats
