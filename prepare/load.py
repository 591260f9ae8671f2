"""Read collect's raw JSONL (one `RawMessage` a line, one file per dialog) into one pandas frame.

Two readers give the same frame. The fast one hands all files to pyarrow's multi-threaded JSON reader
with the `RawMessage` schema; if anything at all looks wrong (a parse error, a missing field, a line
holding two objects, a bad date) it gives up, and the exact one re-reads line by line with orjson,
validating column-wise, to raise an error naming the first bad file:line. Errors say what is wrong and
never quote the line (it may hold a secret).

`load_feedback` reads the other input: `reply`'s feedback file, the replies the person sent after a twin
draft, as records for the train split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
from tqdm import tqdm

from collect.records import FIELDS, MANIFEST_NAME
from common.scrub import PLACEHOLDER, scrub_secrets_with_counts

from .build import clipped_turn
from .config import PrepareConfig
from .errors import PrepareError
from .jsonl import encoding_error, strip_bom
from .prompt import cap_turns, clean_text, clip_text, render_context
from .records import Record, Turn, is_blank

COLLECT_HINT = "run `make collect` first (see README, section 1)"
FIX_HINT = "fix or delete that line, or re-run `make collect`"
ARROW_SCHEMA = pa.schema(
    [(name, {int: pa.int64(), bool: pa.bool_(), str: pa.string()}[typ]) for name, typ in FIELDS.items()]
)
_MISSING = object()


def find_raw_files(raw_dir: Path) -> list[Path]:
    """The dialog files of a raw folder (sorted), or a PrepareError saying what to run first."""
    if not raw_dir.exists():
        raise PrepareError(f"raw folder {raw_dir} does not exist: {COLLECT_HINT}, or pass --raw <folder>")
    if not raw_dir.is_dir():
        raise PrepareError(f"--raw {raw_dir} is a file, not a folder of <dialog_id>.jsonl files")
    files = sorted(p for p in raw_dir.glob("*.jsonl") if p.is_file() and not p.name.startswith("."))
    if not files:
        if (raw_dir / MANIFEST_NAME).exists():  # collect ran here, but kept no message of any chat
            raise PrepareError(
                f"raw folder {raw_dir} has a {MANIFEST_NAME} but no *.jsonl dialog files: collect found no "
                "text messages in your one-to-one chats (its last line says what it skipped); collect an "
                "export or account whose personal chats hold messages you wrote, or pass --raw <folder>"
            )
        raise PrepareError(f"raw folder {raw_dir} has no *.jsonl dialog files: {COLLECT_HINT}")
    return files


def _progress(files: list[Path]) -> Iterator[Path]:
    yield from tqdm(files, desc="reading raw chats", unit="file", disable=None, leave=False)


def _read_bytes(path: Path, keep_bom: bool = False) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PrepareError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    return data if keep_bom else strip_bom(data)


_TIME_AND_OFFSET = r"[T ]\d{1,2}(?::?\d\d){0,2}(?:[.,]\d+)? ?(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"
"""A date's end: a time of day, then its UTC offset (`2024-05-01` alone is a day, not an instant)."""
DATE_EXAMPLE = "2024-05-01T09:30:00+00:00"


def _date_problem(date: str) -> str:
    """What is wrong with a `date` that did not read as an instant (names the shape, never the value)."""
    stripped = date.strip()
    if not stripped:
        return "field 'date' is empty"
    if stripped.lstrip("-").replace(".", "", 1).isdigit():
        return (
            "field 'date' is a number (a Unix timestamp?), not ISO-8601 text; write the instant with its UTC "
            f"offset, e.g. {DATE_EXAMPLE}"
        )
    if stripped != date:
        return "field 'date' has spaces around it"
    try:
        parsed = datetime.fromisoformat(date)
    except ValueError:
        return f"field 'date' is not ISO-8601 (e.g. {DATE_EXAMPLE})"
    if not re.search(r"[T ]\d", date):
        return f"field 'date' is a day, not an instant: it has no time and UTC offset (e.g. {DATE_EXAMPLE})"
    if parsed.utcoffset() is None:
        return (
            "field 'date' has no UTC offset, so its instant is unknown; add the offset it was written in "
            f"(e.g. {DATE_EXAMPLE} for UTC)"
        )
    return f"field 'date' is not ISO-8601 (e.g. {DATE_EXAMPLE})"


def _check_dates(frame: pd.DataFrame) -> tuple[pd.Series, int | None, str]:
    """(instants in µs since the epoch, UTC; first bad row or None; what is wrong with it)."""
    dates = frame["date"].astype("string[pyarrow]")
    has_offset = dates.str.contains(_TIME_AND_OFFSET, regex=True).fillna(False)
    ts = pd.to_datetime(dates, format="ISO8601", utc=True, errors="coerce")
    bad = (~has_offset.to_numpy(dtype=bool)) | ts.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        return ts, row, _date_problem(str(frame["date"].iloc[row]))
    return ts.dt.as_unit("us").astype("int64"), None, ""


# ---- fast reader --------------------------------------------------------------------------------------


def _count_lines(data: bytes) -> int:
    """Non-blank lines of a file (blank lines are rare: only then look at each line)."""
    if not data:
        return 0
    n = data.count(b"\n") + (not data.endswith(b"\n"))
    if b"\n\n" in data or data[:1] in b" \t\r\n" or b"\n " in data or b"\n\t" in data or b"\n\r" in data:
        n = sum(1 for line in data.split(b"\n") if line.strip())
    return n


def _load_fast(files: list[Path]) -> pd.DataFrame | None:
    parts: list[bytes] = []
    expected = 0
    for path in _progress(files):
        data = _read_bytes(path)
        expected += _count_lines(data)
        parts.append(data if data.endswith(b"\n") or not data else data + b"\n")
    if expected == 0:
        return None
    options = pa_json.ParseOptions(explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="ignore")
    buffer = b"".join(parts)
    parts.clear()
    try:
        table = pa_json.read_json(
            pa.BufferReader(buffer),
            read_options=pa_json.ReadOptions(block_size=1 << 24),
            parse_options=options,
        )
        table.validate(full=True)  # the JSON reader does not check that strings are valid UTF-8
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    del buffer
    # A line with two objects on it reads as two rows; a missing field reads as null.
    if table.num_rows != expected or any(col.null_count for col in table.columns):
        return None
    frame = table.select(list(FIELDS)).to_pandas()
    ts, bad_row, _ = _check_dates(frame)
    if bad_row is not None:
        return None
    frame["ts"] = ts
    return frame


# ---- exact reader ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    first_row: int
    line_numbers: np.ndarray  # 1-based line number of each record read from the file


def _read_lines(path: Path) -> tuple[list[Any], np.ndarray]:
    """Decoded JSON values of a file's non-blank lines and their 1-based line numbers."""
    data = _read_bytes(path, keep_bom=True)
    lines = data.split(b"\n")
    keep = [i for i, line in enumerate(lines) if strip_bom(line).strip()]
    values = []
    for i in keep:
        try:
            values.append(orjson.loads(strip_bom(lines[i])))
        except orjson.JSONDecodeError as e:
            offset = sum(len(line) + 1 for line in lines[:i])
            # a file in another encoding (UTF-16, a code page) is named as such, with the byte that shows it
            message = encoding_error(path, i + 1, lines[i], offset, data[:256], "re-run `make collect`")
            raise PrepareError(
                message or f"{path}:{i + 1}: line is not valid JSON (column {e.colno}); {FIX_HINT}"
            ) from None
    return values, np.asarray(keep, dtype=np.int64) + 1


def _problem(obj: Any) -> str:
    """What is wrong with one decoded line (names fields and types, never values)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object with fields {list(FIELDS)}, got {type(obj).__name__}"
    problems = []
    for name, typ in FIELDS.items():
        value = obj.get(name, _MISSING)
        if value is _MISSING:
            problems.append(f"missing field {name!r}")
        elif typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"field {name!r} must be an integer")
        elif typ is int and not -(2**63) <= value < 2**63:
            problems.append(f"field {name!r} is out of range")
        elif name == "date" and isinstance(value, int | float) and not isinstance(value, bool):
            problems.append(
                "field 'date' is a number (a Unix timestamp?); it must be ISO-8601 text with a UTC offset, "
                f"e.g. {DATE_EXAMPLE}"
            )
        elif not isinstance(value, typ):
            problems.append(f"field {name!r} must be {'true or false' if typ is bool else typ.__name__}")
    return "; ".join(problems)


def _where(sources: list[_Source], row: int) -> str:
    for src in reversed(sources):
        if row >= src.first_row:
            return f"{src.path}:{int(src.line_numbers[row - src.first_row])}"
    raise IndexError(row)


def _load_exact(files: list[Path]) -> pd.DataFrame:
    values: list[Any] = []
    sources: list[_Source] = []
    for path in _progress(files):
        decoded, line_numbers = _read_lines(path)
        sources.append(_Source(path, len(values), line_numbers))
        values.extend(decoded)
    if not values:
        raise PrepareError(f"the dialog files in {files[0].parent} are all empty: {COLLECT_HINT}")

    columns: dict[str, pd.Series] = {}
    for name, typ in FIELDS.items():
        col = pd.Series([v.get(name, _MISSING) if type(v) is dict else _MISSING for v in values])
        if typ is int:
            ok = col.dtype.kind == "i"
        elif typ is bool:
            ok = col.dtype.kind == "b"
        else:  # a JSON null turns into a missing value of an otherwise string column
            ok = isinstance(col.dtype, pd.StringDtype) and not col.isna().any()
        if not ok:
            for row, value in enumerate(values):
                if problem := _problem(value):
                    raise PrepareError(f"{_where(sources, row)}: {problem}; {FIX_HINT}")
        columns[name] = col
    frame = pd.DataFrame(columns)
    ts, bad_row, what = _check_dates(frame)
    if bad_row is not None:
        raise PrepareError(f"{_where(sources, bad_row)}: {what}; {FIX_HINT}")
    frame["ts"] = ts
    return frame


def load_messages(raw_dir: Path, exact: bool = False) -> pd.DataFrame:
    """All raw messages of `raw_dir` as one frame: the `RawMessage` fields as columns plus `ts`, the
    instant as int64 microseconds since the epoch in UTC (so offsets and DST never mislead order or
    gaps). Raises PrepareError naming the file and line of the first bad line. `exact` skips the fast
    reader (both give the same frame)."""
    files = find_raw_files(raw_dir)
    frame = None if exact else _load_fast(files)
    return frame if frame is not None else _load_exact(files)


# ---- reply's feedback ------------------------------------------------------------------------------------


@dataclass
class FeedbackLoad:
    """Training records from `reply`'s feedback file (what the person sent after a twin draft)."""

    records: list[Record]
    counts: dict[str, int]
    """`records`, per outcome (`unchanged`, `edited`, `replaced`), `not_sent`, `duplicates` (already a
    record of the raw chats), `skipped` (empty, only secrets, or longer than --max-response-chars)."""
    scrubbed: Counter[str]


def load_feedback(config: PrepareConfig, raw_records: list[Record]) -> FeedbackLoad:
    """The sent replies of `config.feedback` as records, built by training's rules: cleaned, scrubbed,
    the context capped by `cap_turns` with this run's caps. A reply the raw chats already hold (same chat,
    same reply text: `make collect` ran since) is left out, so no reply counts twice."""
    from prepare.feedback import SENT, read_feedback

    counts: Counter[str] = Counter({"records": 0, "not_sent": 0, "duplicates": 0, "skipped": 0})
    scrubbed: Counter[str] = Counter()
    if config.feedback is None:
        return FeedbackLoad([], dict(counts), scrubbed)
    try:
        items = read_feedback(config.feedback)
    except ValueError as e:
        raise PrepareError(f"{e}; or leave reply's feedback out with --feedback none") from None
    except OSError as e:
        raise PrepareError(f"{config.feedback}: cannot read it ({e.strerror or type(e).__name__})") from None

    def scrub(text: str) -> str:
        clean, found = scrub_secrets_with_counts(clean_text(text))
        scrubbed.update(found)
        return clean

    seen = {(r.dialog_id, r.response) for r in raw_records}
    records = []
    for item in items:
        if item.response is None or item.outcome not in SENT:
            counts["not_sent"] += 1
            continue
        response = scrub(item.response)
        instruction = clip_text(scrub(item.instruction))
        if (
            is_blank(PLACEHOLDER.sub("", response))
            or not instruction
            or len(response) > config.max_response_chars
        ):
            counts["skipped"] += 1
            continue
        if (item.dialog_id, response) in seen:
            counts["duplicates"] += 1
            continue
        seen.add((item.dialog_id, response))
        partner = scrub(" ".join(item.partner.split()))
        turns = [Turn(t.speaker, text) for t in item.turns if (text := scrub(t.text))]
        kept = cap_turns(turns, config.max_context_turns, config.max_context_chars, partner)
        records.append(
            Record(
                instruction=instruction,
                context=render_context(kept, partner),
                response=response,
                dialog_id=item.dialog_id,
                date=item.date,
                partner=partner,
                turns=tuple(clipped_turn(t) for t in kept),
            )
        )
        counts["records"] += 1
        counts[item.outcome] += 1
    return FeedbackLoad(records, dict(counts), scrubbed)
