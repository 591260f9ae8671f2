"""Reading JSONL files (one JSON value a line, UTF-8) with errors a user can act on.

Editors and spreadsheet tools save text with a UTF-8 byte-order mark, in the system's code page (Windows-1252
or Latin-1 for Western text, Windows-1251 for Cyrillic), or as UTF-16 (Windows Notepad's "Unicode"). A BOM
is skipped; any other encoding is named, with the file, the line and the byte where it shows and how to
re-save the file, instead of a "not valid JSON" that sends the user looking for a syntax error. The checks
cost nothing on a good file: they run only once a line has failed to parse. Errors never quote a line (it
may hold a secret).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
_HEAD = 256  # bytes of a file that tell its encoding


def strip_bom(line: bytes) -> bytes:
    """`line` without a leading UTF-8 byte-order mark (an editor's, or one of two files joined by `cat`)."""
    return line[len(UTF8_BOM) :] if line.startswith(UTF8_BOM) else line


def wide_encoding(head: bytes) -> str | None:
    """The UTF-16 or UTF-32 encoding ("UTF-16LE", ...) of a file that begins with `head`, or None.

    Known by the byte-order mark, or else by where the zero bytes fall: UTF-8 JSON holds none (a NUL in a
    string is escaped), UTF-16 has one beside each ASCII character (the keys, the digits), UTF-32 two or
    three in every four bytes. Zeros at every position (a write cut short) are no encoding."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    head = head[:_HEAD]
    if b"\x00" not in head:
        return None
    q = [head[i::4].count(0) / max(1, len(head[i::4])) for i in range(4)]  # share of zeros at 4k + i
    if q[2] > 0.6 and q[3] > 0.6 and q[0] < 0.2:
        return "UTF-32LE"
    if q[0] > 0.6 and q[1] > 0.6 and q[3] < 0.2:
        return "UTF-32BE"
    even, odd = (q[0] + q[2]) / 2, (q[1] + q[3]) / 2
    if odd > 0.25 and even < 0.05:
        return "UTF-16LE"
    if even > 0.25 and odd < 0.05:
        return "UTF-16BE"
    return None


def file_encoding_problem(head: bytes) -> str | None:
    """What is wrong with a file that begins with `head`, when it is UTF-16 or UTF-32 text."""
    wide = wide_encoding(head)
    if wide is None:
        return None
    return (
        f"the file is {wide} text, not UTF-8; re-save it as UTF-8 (your editor's 'Save with encoding', or "
        f"`iconv -f {wide} -t UTF-8 old.jsonl > new.jsonl`)"
    )


def line_encoding_problem(line: bytes, offset: int) -> str | None:
    """What is wrong with `line` (which begins `offset` bytes into its file) when it is not UTF-8 text:
    the first byte that is not UTF-8, by value, offset in the file and column, and what to do."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            f"line is not valid UTF-8: byte 0x{line[e.start]:02X} at byte offset {offset + e.start} (column "
            f"{e.start + 1}) is from another encoding (e.g. Windows-1252, Latin-1 or Windows-1251); re-save "
            "the file as UTF-8 (your editor's 'Save with encoding', or `iconv -f <its encoding> -t UTF-8`)"
        )
    if b"\x00" in line:
        return "line holds zero bytes: the file is damaged (a write cut short?) or not text"
    return None


def read_jsonl(path: Path, fix: str, redo: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line of the JSONL file at `path`.

    A line that is not JSON, or a file that is not UTF-8, is a ValueError naming the file and the line (for
    an encoding, the byte too). `fix` says what to do about a bad line ("delete that line"), `redo` how else
    to get a good file than re-saving it ("re-run `make prepare`"). A UTF-8 BOM is skipped. OSError (a
    missing or unreadable file) is left to the caller."""
    offset = 0
    head = b""  # the file's first bytes: a UTF-16 file's byte order shows there
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if len(head) < _HEAD:
                head += raw[: _HEAD - len(head)]
            line = strip_bom(raw)
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                message = encoding_error(path, number, raw, start, head, redo)
                raise ValueError(message or f"{path}:{number}: not valid JSON; {fix}") from None
            yield number, value


def encoding_error(
    path: Path, number: int, raw: bytes, offset: int, head: bytes, redo: str | None = None
) -> str | None:
    """The one-line error for line `number` of `path` (its bytes `raw`, `offset` bytes into the file that
    begins with `head`), which did not parse, when the file is not UTF-8 (None: it is); `redo` as
    `read_jsonl` takes it."""
    otherwise = f"; or {redo}" if redo else ""
    if (problem := file_encoding_problem(head)) is not None:
        return f"{path}: {problem}{otherwise}"
    if (problem := line_encoding_problem(raw, offset)) is not None:
        return f"{path}:{number}: {problem}{otherwise}"
    return None
