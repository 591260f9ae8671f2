"""The chunked JSON walker: json.loads's values at any chunk size, exact error positions, bounded buffer."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collect.errors import CollectError
from collect.jsonstream import MAX_DEPTH, JsonStream

scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
)


def stream(text: str, chunk: int) -> JsonStream:
    return JsonStream(io.StringIO(text), "doc.json", chunk)


@settings(max_examples=150, deadline=None)
@given(
    doc=values, chunk=st.integers(1, 40), indent=st.sampled_from([None, 0, 1, 2]), ascii_only=st.booleans()
)
def test_value_matches_json_loads_at_any_chunk_size(
    doc: Any, chunk: int, indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    s = stream(text, chunk)
    assert s.value() == json.loads(text)
    assert s.at_end()


def walk(s: JsonStream) -> Any:
    """Rebuild a value through the structural API only (object_keys / array_values / value)."""
    first = s.peek()
    if first == "{":
        return {key: walk(s) for key in s.object_keys()}
    if first == "[":
        return list(s.array_values())
    return s.value()


@settings(max_examples=150, deadline=None)
@given(
    doc=st.dictionaries(st.text(max_size=6), values, max_size=4)
    | st.lists(st.dictionaries(st.text(max_size=6), scalars, max_size=4), max_size=6),
    chunk=st.integers(1, 30),
    indent=st.sampled_from([None, 1]),
)
def test_structural_walk_matches_json_loads(doc: Any, chunk: int, indent: int | None) -> None:
    text = json.dumps(doc, indent=indent)
    s = stream(text, chunk)
    assert walk(s) == json.loads(text) and s.at_end()


def test_a_number_split_across_chunks_is_read_whole() -> None:
    text = "[" + ",".join(str(10**15 + i) for i in range(50)) + "]"
    for chunk in range(1, 25):
        assert list(stream(text, chunk).array_values()) == json.loads(text)


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_errors_report_the_same_line_and_column_as_json(chunk: int) -> None:
    text = '{\n "a": [1, 2],\n "list": [\n  {"id": 1},\n  {"id": 2,, "x": 3}\n ]\n}'
    expected = json.JSONDecodeError
    with pytest.raises(expected) as reference:
        json.loads(text)
    s = stream(text, chunk)
    with pytest.raises(CollectError) as info:
        for key in s.object_keys():
            if key == "list":
                list(s.array_values())
            else:
                s.value()
    where = f"line {reference.value.lineno}, column {reference.value.colno}"
    assert (
        str(info.value)
        == f"doc.json: invalid JSON (Expecting property name enclosed in double quotes) at {where}"
    )


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
@pytest.mark.parametrize(
    "cut", ['{"a": [1, 2', '{"a": "unterminated', '{"a": tr', '{"a": 1', '{"a": [{"b": 1},']
)
def test_truncated_documents_are_called_truncated(chunk: int, cut: str) -> None:
    s = stream(cut, chunk)
    with pytest.raises(CollectError, match=r"looks truncated.*line 1, column \d+"):
        for _ in s.object_keys():
            list(s.array_values()) if s.peek() == "[" else s.value()


def test_long_array_is_streamed_with_a_bounded_buffer() -> None:
    element = {"id": 1, "type": "message", "text": "x" * 100}
    text = json.dumps({"messages": [element] * 5000})  # ~650 kB
    s = stream(text, 4096)
    largest, count = 0, 0
    for key in s.object_keys():
        assert key == "messages"
        for item in s.array_values():
            assert item == element
            count += 1
            largest = max(largest, s.buffered_chars)
    assert count == 5000
    assert largest < 3 * 4096  # never the whole document


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(chunk: int) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    as_a_value = stream(deep, chunk)
    with pytest.raises(CollectError, match=r"doc\.json: the JSON is nested too deeply .* at line 1"):
        as_a_value.value()
    as_an_element = stream(f"[1, {deep}]", chunk)
    with pytest.raises(CollectError, match="nested too deeply"):
        list(as_an_element.array_values())
    skipped = stream('{"a": ' + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "}", chunk)
    with pytest.raises(CollectError, match=rf"nested too deeply .* at line 1, column {MAX_DEPTH + 8}"):
        for _ in skipped.object_keys():
            skipped.skip()
    shallow = stream('{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + ', "b": 1}', chunk)
    assert [(key, shallow.skip()) for key in shallow.object_keys()] == [("a", None), ("b", None)]


def test_a_failing_read_is_one_line() -> None:
    class FailingDisk(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            raise OSError(5, "Input/output error")

    with pytest.raises(
        CollectError, match=r"doc\.json: can't read it \(input/output error\); copy the export"
    ):
        JsonStream(FailingDisk(), "doc.json").peek()


# ---- Telegram Desktop's own invalid JSON, mended ---------------------------------------------------
_JSON_ESCAPE = re.compile(r"\\(u00[01][0-9a-f]|[bf])|\\.")


def desktop_dumps(doc: Any, indent: int | None = None) -> str:
    """`json.dumps` as Telegram Desktop writes it: control characters as `\\xHH` (invalid JSON)."""

    def as_desktop(match: re.Match[str]) -> str:
        escape = match[1]
        if escape is None:
            return match[0]
        code = {"b": 8, "f": 12}[escape] if len(escape) == 1 else int(escape[1:], 16)
        return f"\\x{code:02X}"

    return _JSON_ESCAPE.sub(as_desktop, json.dumps(doc, indent=indent, ensure_ascii=False))


def test_desktop_dumps_writes_what_desktop_writes() -> None:
    assert desktop_dumps(["a\x0bb\x00\x1f\b\f\n\t", "\\x41", "\\\x01"]) == (
        r'["a\x0Bb\x00\x1F\x08\x0C\n\t", "\\x41", "\\\x01"]'
    )


control_text = st.text(alphabet='ab\\x0B"\x00\x01\x08\x0b\x0c\x1f\n\t', max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    doc=st.lists(st.dictionaries(st.sampled_from(["text", "data", "x\x01"]), control_text), max_size=6),
    chunk=st.integers(1, 40),
    indent=st.sampled_from([None, 1]),
)
def test_control_characters_written_as_backslash_x_are_read(
    doc: list[dict[str, str]], chunk: int, indent: int | None
) -> None:
    """Desktop writes a control character as `\\x0B`, which JSON has no escape for (tdesktop #27571)."""
    s = stream(desktop_dumps(doc, indent), chunk)
    assert walk(s) == doc and s.at_end()


def test_an_escaped_backslash_before_x_stays_text() -> None:
    # the text \x41 (a backslash, then "x41") is written "\\x41": not a control character
    text = r'{"a": "\\x41 and \x0B", "b": "\\\\x42", "c": "\\\x0C"}'
    for chunk in (1, 2, 3, 1 << 20):
        s = stream(text, chunk)
        assert walk(s) == {"a": "\\x41 and \x0b", "b": "\\\\x42", "c": "\\\x0c"}
        assert s.mended == 2


CUSTOM_EMOJI_41 = """{
 "text": [
  {
   "type": "custom_emoji",
   "text": "😮",
   "document_id": video_files/sticker (2).webm
  },
  " and ",
  {
   "type": "custom_emoji",
   "text": "🙂",
   "document_id": (File not included. Change data exporting settings to download.)
  },
  {
   "type": "custom_emoji",
   "text": "👍",
   "document_id": "5368324170671202286"
  }
 ],
 "next": 1
}"""


@pytest.mark.parametrize("chunk", [1, 2, 7, 30, 1 << 20])
def test_an_unquoted_custom_emoji_document_id_is_read(chunk: int) -> None:
    """Desktop 4.1 wrote a custom emoji's document_id as a bare file path (tdesktop #24961)."""
    s = stream(CUSTOM_EMOJI_41, chunk)
    doc = walk(s)
    assert s.at_end() and doc["next"] == 1
    assert [part["document_id"] for part in doc["text"] if isinstance(part, dict)] == [
        "video_files/sticker (2).webm",
        "(File not included. Change data exporting settings to download.)",
        "5368324170671202286",
    ]
    s = stream('{"a": 1,\n "b": bare\n}', chunk)  # other bare words stay errors
    with pytest.raises(CollectError, match=r"invalid JSON \(Expecting value\) at line 2"):
        walk(s)
