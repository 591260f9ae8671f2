"""Walk a huge JSON document piece by piece, with the stdlib's C decoder doing the real parsing.

A 1M-message `result.json` is 200+ MB; `json.load` would hold all of it (several GB of Python objects)
in memory. `JsonStream` instead reads the file in chunks and lets the caller navigate the outer
structure (`object_keys`, `array_items`) while decoding each small inner value (one message) with
`JSONDecoder.raw_decode`. Memory stays bounded by the largest single value, and every syntax error is
reported with the file's line and column.

Telegram Desktop itself writes two kinds of invalid JSON, which are mended where the decoder trips over
them (so a valid file costs nothing extra):

- a control character in any string (a vertical tab pasted from a word processor, a byte in a bot
  button's data) as `\\x0B` instead of `\\u000B` (every version to date; tdesktop issue #27571);
- a custom emoji's `"document_id": video_files/sticker.webm` without quotes (4.1, August 2022;
  tdesktop issue #24961).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

from collect.errors import CollectError, os_reason

CHUNK_CHARS = 1 << 20
MAX_DEPTH = 64
"""Deepest nesting `skip` walks; Telegram Desktop's exports nest about six levels."""
TOO_DEEP = (
    "the JSON is nested too deeply to be a Telegram Desktop export (its files nest only a few levels); "
    "pass the export's result.json"
)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_TAIL_SLACK = 16
"""A decode error this close to the end of the buffer may only mean the value continues in the next chunk."""
_NUMBER_TAIL = 2
"""A number decoded this close to the buffer end may be cut short ("1." or "1e+" go on in the next chunk)."""
_HEX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
_ESCAPES = re.compile(r"\\(?:x([0-9A-Fa-f]{2})|.)", re.DOTALL)
"""An escape sequence; group 1 set for Desktop's `\\xHH` (matching whole escapes keeps `\\\\x41`, an escaped
backslash before "x41", as it is)."""
_DOCUMENT_ID_KEY = re.compile(r'[ \t]*"document_id": ')
_BARE_DOCUMENT_ID = re.compile(r'^([ \t]*"document_id": )([^"\r\n][^\r\n]*?)(,?)(?=\r?\n)', re.MULTILINE)
"""Desktop writes one key a line, and a string never holds a raw line break, so a line that starts with
this key is the key itself, never text inside a message."""


class JsonStream:
    """A cursor over one JSON text read from `f` in chunks of `chunk_chars` characters."""

    def __init__(self, f: TextIO, name: str, chunk_chars: int = CHUNK_CHARS) -> None:
        self.name = name
        self._f = f
        self._chunk = max(1, chunk_chars)
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # newlines in the text already dropped from the buffer
        self._col_before = 0  # characters of the current line already dropped from the buffer
        self._decoder = json.JSONDecoder()
        self.mended = 0
        """Places where Telegram Desktop's invalid JSON was mended (see the module docstring)."""

    # ---- buffer management -------------------------------------------------------------------
    def _read_more(self, at_least: int) -> bool:
        """Append at least `at_least` characters (or up to EOF); False when nothing was left."""
        if self._eof:
            return False
        try:
            chunk = self._f.read(max(self._chunk, at_least))
        except UnicodeDecodeError as e:
            where = locate_bad_utf8(self.name)
            raise CollectError(
                f"{self.name}: not UTF-8 text ({e.reason}{f' at {where}' if where else ''}); Telegram "
                "Desktop writes its JSON export as UTF-8, so the file is damaged or was re-saved in another "
                "encoding: export again (format 'Machine-readable JSON') and pass the new result.json"
            ) from None
        except OSError as e:  # e.g. EIO on a failing disk, or a file that vanished from a network share
            raise CollectError(
                f"{self.name}: can't read it ({os_reason(e)}); copy the export to a local disk and try again"
            ) from None
        if not chunk:
            self._eof = True  # the buffer is left as it was, so error positions stay valid
            return False
        if self._pos > len(self._buf) // 2:
            dropped = self._buf[: self._pos]
            newlines = dropped.count("\n")
            if newlines:
                self._lines_before += newlines
                self._col_before = len(dropped) - dropped.rindex("\n") - 1
            else:
                self._col_before += len(dropped)
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += chunk
        return True

    def _skip_whitespace(self) -> None:
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf) or not self._read_more(1):
                return

    @property
    def buffered_chars(self) -> int:
        """Characters held in memory right now (bounded by the largest value plus a chunk or two)."""
        return len(self._buf)

    def where(self, pos: int | None = None) -> str:
        """`line L, column C` (1-based) of buffer position `pos` (default: the cursor)."""
        pos = self._pos if pos is None else pos
        newlines = self._buf.count("\n", 0, pos)
        if newlines:
            column = pos - self._buf.rindex("\n", 0, pos)
        else:
            column = self._col_before + pos + 1
        return f"line {self._lines_before + newlines + 1}, column {column}"

    def error(self, what: str, pos: int | None = None) -> CollectError:
        return CollectError(f"{self.name}: {what} at {self.where(pos)}")

    def _truncated(self, pos: int | None = None) -> CollectError:
        return self.error(
            "the JSON ends too early (the file looks truncated: was the export still running, or the copy "
            "cut short?) — re-export the chats from Telegram Desktop and try again; it ends",
            pos,
        )

    # ---- primitives --------------------------------------------------------------------------
    def peek(self) -> str:
        """The next non-whitespace character without consuming it; "" at the end of the file."""
        self._skip_whitespace()
        return self._buf[self._pos] if self._pos < len(self._buf) else ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if not found:
            raise self._truncated()
        if found != char:
            raise self.error(f"invalid JSON: expected {char!r} but found {found!r}")
        self._pos += 1

    def at_end(self) -> bool:
        return self.peek() == ""

    def value(self) -> Any:
        """Decode the next complete JSON value (any type) and move past it."""
        self._skip_whitespace()
        while True:
            try:
                obj, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as e:
                near_end = e.msg.startswith("Unterminated string") or e.pos >= len(self._buf) - _TAIL_SLACK
                if near_end and self._read_more(len(self._buf) - self._pos):
                    continue
                if self._mend(e.pos, e.msg):
                    continue
                if self._eof and _cut_short(self._buf, e.pos, e.msg):
                    raise self._truncated(min(e.pos, len(self._buf))) from None
                raise self.error(f"invalid JSON ({e.msg})", e.pos) from None
            except RecursionError:  # the C decoder's own depth limit (about 1000 levels)
                raise self.error(f"{TOO_DEEP}; it goes too deep") from None
            # A number near the end of the buffer may go on in the next chunk ("1" + "2", "1." + "5").
            if end + _NUMBER_TAIL >= len(self._buf) and self._read_more(1):
                continue
            self._pos = end
            return obj

    def _mend(self, pos: int, msg: str) -> bool:
        """Mend Desktop's invalid JSON (see the module docstring) at the decode error at `pos`, and the same
        slip further on in the buffer in the same pass; True if the buffer changed."""
        buf = self._buf
        mended = 0

        def unicode_escape(match: re.Match[str]) -> str:  # \x0B -> \u000B; other escapes as they are
            nonlocal mended
            if match[1] is None:
                return match[0]
            mended += 1
            return f"\\u00{match[1]}"

        def quote_document_id(match: re.Match[str]) -> str:  # a value that is JSON already stays
            nonlocal mended
            key, value, comma = match.groups()
            try:
                json.loads(value)
            except ValueError:
                mended += 1
                return f"{key}{json.dumps(value, ensure_ascii=False)}{comma}"
            return match[0]

        if msg.startswith("Invalid \\escape") and _HEX_ESCAPE.match(buf, pos):
            start = pos  # a backslash the decoder reads as an escape: the scan from it stays in step
            rest = _ESCAPES.sub(unicode_escape, buf[start:])
        elif msg.startswith("Expecting value"):
            start = buf.rfind("\n", 0, pos) + 1
            if not _DOCUMENT_ID_KEY.fullmatch(buf, start, pos):
                return False
            if buf.find("\n", pos) < 0 and self._read_more(1):
                return True  # the value's line goes on in the next chunk: decode again with it
            rest = _BARE_DOCUMENT_ID.sub(quote_document_id, buf[start:])
        else:
            return False
        if not mended:
            return False
        self._buf = buf[:start] + rest
        self.mended += mended
        return True

    def array_values(self) -> Iterator[Any]:
        """Decode an array's elements one by one (the hot path: one message per element)."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        decode = self._decoder.raw_decode
        skip_ws = _WHITESPACE.match
        while True:
            buf = self._buf
            pos = skip_ws(buf, self._pos).end()  # type: ignore[union-attr]
            fast = False
            try:
                obj, end = decode(buf, pos)
                after = skip_ws(buf, end).end()  # type: ignore[union-attr]
                fast = after + _NUMBER_TAIL < len(buf)
            except (json.JSONDecodeError, RecursionError):
                pass  # the careful way below reports it
            if fast:  # the element and the character after it are in the buffer
                self._pos = after
            else:  # near the end of the buffer: the careful way, reading more as needed
                self._pos = pos
                obj = self.value()
            nxt = self.peek()
            if nxt == ",":
                self._pos += 1
                yield obj
            elif nxt == "]":
                self._pos += 1
                yield obj
                return
            elif not nxt:
                raise self._truncated()
            else:
                raise self.error(f"invalid JSON: expected ',' or ']' after a value but found {nxt!r}")

    def string(self) -> str:
        if self.peek() != '"':
            raise self.error("invalid JSON: expected a string (an object key)")
        key = self.value()
        if not isinstance(key, str):  # cannot happen after the '"' check; keeps mypy and readers sure
            raise self.error("invalid JSON: expected a string (an object key)")
        return key

    # ---- structure ---------------------------------------------------------------------------
    def object_keys(self) -> Iterator[str]:
        """Iterate an object's keys; after each key the caller must consume its value."""
        self.expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            key = self.string()
            self.expect(":")
            yield key
            nxt = self.peek()
            if nxt == ",":
                self._pos += 1
            elif nxt == "}":
                self._pos += 1
                return
            elif not nxt:
                raise self._truncated()
            else:
                raise self.error(f"invalid JSON: expected ',' or '}}' after a value but found {nxt!r}")

    def array_items(self) -> Iterator[int]:
        """Iterate an array, yielding each element's index; the caller must consume each element."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        index = 0
        while True:
            yield index
            index += 1
            nxt = self.peek()
            if nxt == ",":
                self._pos += 1
            elif nxt == "]":
                self._pos += 1
                return
            elif not nxt:
                raise self._truncated()
            else:
                raise self.error(f"invalid JSON: expected ',' or ']' after a value but found {nxt!r}")

    def skip(self, depth: int = 0) -> None:
        """Consume the next value; arrays are walked element by element so memory stays bounded."""
        if depth > MAX_DEPTH and self.peek() in "[{":
            raise self.error(f"{TOO_DEEP}; it goes too deep")
        if self.peek() == "[":
            for _ in self.array_items():
                self.skip(depth + 1)
        elif self.peek() == "{":
            for _ in self.object_keys():
                self.skip(depth + 1)
        else:
            self.value()


def locate_bad_utf8(path: str, chunk_bytes: int = 1 << 20) -> str | None:
    """`line L, byte B of the file` of the first byte of `path` that is not UTF-8 (None if it can't be told).

    Only called after a decode error, so reading the file again costs nothing in the normal case."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines = 0, 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    # e.object is the bytes held back from the chunk before (never a newline) + this chunk
                    bad = offset - (len(e.object) - len(chunk)) + e.start
                    newlines += chunk[: max(0, bad - offset)].count(b"\n")
                    return f"line {newlines + 1}, byte {bad + 1} of the file"
                offset += len(chunk)
                newlines += chunk.count(b"\n")
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:  # the file ends inside a character
        return f"line {newlines + 1}, byte {offset - len(e.object) + e.start + 1} of the file"
    except OSError:
        return None
    return None


_PARTIAL_TOKEN = re.compile(r"(-?\d*(\.\d*)?([eE][-+]?\d*)?|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?)")


def _cut_short(buf: str, pos: int, msg: str) -> bool:
    """Does a decode error at `pos` of the *whole remaining text* mean the text just stops there?"""
    rest = buf[pos:].strip()
    if msg.startswith("Unterminated string"):
        return True
    if msg.startswith("Invalid \\uXXXX escape"):
        return len(rest) < 6
    return _PARTIAL_TOKEN.fullmatch(rest) is not None
