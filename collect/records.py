"""The raw-message contract between `collect` and every later stage.

One JSONL file per dialog, `<raw>/<dialog_id>.jsonl`, sorted by date, one `RawMessage` a line;
plus `<raw>/manifest.json`. Later stages read only the `*.jsonl` files. Documented in docs/data-format.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FIELDS: dict[str, type] = {
    "id": int,
    "date": str,
    "out": bool,
    "message": str,
    "dialog_id": int,
    "dialog_name": str,
}


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One text message of a one-to-one chat."""

    id: int
    """Telegram's message id, unique within the dialog."""
    date: str
    """When it was sent: ISO-8601 with a UTC offset, e.g. `2024-05-01T09:30:00+00:00`."""
    out: bool
    """True when the person (the one whose twin is built) wrote it; False for the chat partner."""
    message: str
    """The text (a media caption counts as text); never empty."""
    dialog_id: int
    """The chat's id: the partner's Telegram user id."""
    dialog_name: str
    """The partner's display name."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "") -> RawMessage:
        """Validate a decoded JSON object; `where` (e.g. `file.jsonl:12`) goes into the error."""
        prefix = f"{where}: " if where else ""
        if not isinstance(obj, dict):
            raise ValueError(
                f"{prefix}expected a JSON object with fields {list(FIELDS)}, got {type(obj).__name__}"
            )
        problems = []
        for name, typ in FIELDS.items():
            if name not in obj:
                problems.append(f"missing field {name!r}")
            elif typ is int and (isinstance(obj[name], bool) or not isinstance(obj[name], int)):
                problems.append(f"field {name!r} must be an integer")
            elif not isinstance(obj[name], typ):
                problems.append(f"field {name!r} must be {typ.__name__}")
        if not problems:
            try:
                parsed = datetime.fromisoformat(obj["date"])
                if parsed.utcoffset() is None:
                    problems.append("field 'date' has no UTC offset")
            except ValueError:
                problems.append(f"field 'date' is not ISO-8601: {obj['date'][:40]!r}")
        if problems:
            raise ValueError(f"{prefix}{'; '.join(problems)}")
        return cls(**{name: obj[name] for name in FIELDS})


def dialog_path(raw_dir: str | Path, dialog_id: int) -> Path:
    """Where a dialog's messages live."""
    return Path(raw_dir) / f"{dialog_id}.jsonl"
