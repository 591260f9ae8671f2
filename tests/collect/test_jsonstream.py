"""The chunked JSON walker: json.loads's values at any chunk size, exact error positions, bounded buffer."""

from __future__ import annotations

import io
import json
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
