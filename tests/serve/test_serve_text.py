"""Incremental detokenization and stop strings on the tiny checkpoint's byte-level BPE."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litgpt.tokenizer import Tokenizer

from serve.text import TextStream, decode_ids

ALPHABET = "ab ,.!?\nxyzéжЖ🙂😂"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Tokenizer:
    return Tokenizer(tiny_checkpoint)


def stream_text(
    tokenizer: Tokenizer, ids: list[int], stop: list[str], step: int = 1
) -> tuple[str, list[str], TextStream]:
    ts = TextStream(tokenizer, tokenizer.encode("### My reply:\n").tolist(), stop)
    pieces = [ts.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    pieces.append(ts.flush())
    return "".join(pieces), pieces, ts


def test_multibyte_characters_come_out_whole(tokenizer: Tokenizer) -> None:
    text = "привет 🙂 ça va? 😂😂 ok"
    ids = tokenizer.encode(text).tolist()
    assert len(ids) > len(text.split())  # the byte-level BPE splits these characters across tokens
    out, pieces, ts = stream_text(tokenizer, ids, [])
    assert out == text == decode_ids(tokenizer, ids)
    assert not any("\ufffd" in p for p in pieces)
    assert ts.n_tokens == len(ids) and not ts.stopped


def test_stop_string_cuts_the_reply_and_counts_tokens_up_to_it(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("sure, see you at eight\n### Anna's new message").tolist()
    out, pieces, ts = stream_text(tokenizer, ids, ["\n###"])
    assert out == "sure, see you at eight"
    assert ts.stopped
    assert ts.n_tokens < len(ids)  # the tokens after the stop are not part of the reply
    assert not any("#" in p for p in pieces)


def test_a_stop_prefix_is_held_back_until_it_is_clear(tokenizer: Tokenizer) -> None:
    ts = TextStream(tokenizer, [], ["STOP"])
    first = ts.push(tokenizer.encode("go ST").tolist())
    assert first == "go "  # "ST" might begin "STOP"
    assert ts.push(tokenizer.encode("ART").tolist()) == "START"  # "START" is no prefix of "STOP"
    assert ts.push(tokenizer.encode(" STO").tolist()) == " "
    assert ts.flush() == "STO"  # the reply ended before the stop string completed
    assert ts.text == "go START STO" and not ts.stopped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=3), max_size=2),
    step=st.integers(1, 4),
)
def test_streamed_text_is_the_full_text_cut_at_the_first_stop(
    tokenizer: Tokenizer, text: str, stops: list[str], step: int
) -> None:
    ids = tokenizer.encode(text).tolist()
    full = decode_ids(tokenizer, ids)
    hits = [i for i in (full.find(s) for s in stops) if i >= 0]
    want = full[: min(hits)] if hits else full
    out, pieces, ts = stream_text(tokenizer, ids, stops, step)
    assert out == want
    assert ts.stopped == bool(hits)


def test_a_reply_cut_inside_a_character_keeps_the_text_before_it(tokenizer: Tokenizer) -> None:
    """max_tokens can end a reply on a token that holds whole characters and then the first bytes of the
    next one (" " + the first bytes of an emoji): the whole characters come out at the end, the cut one
    does not. Before, the end dropped the whole token's text."""
    ids = tokenizer.encode("ok 🙂 да 😂 ok").tolist()
    cuts = [n for n in range(1, len(ids)) if decode_ids(tokenizer, ids[:n]).endswith(" \ufffd")]
    assert cuts, "the tiny BPE has no token of a space and an emoji's first bytes any more: pick another text"
    for n in range(1, len(ids) + 1):
        out, pieces, ts = stream_text(tokenizer, ids[:n], [])
        assert out == ts.text == decode_ids(tokenizer, ids[:n]).rstrip("\ufffd"), n
    # a stop string that ends in that last token's whole characters still cuts the reply
    n = cuts[0]
    want = decode_ids(tokenizer, ids[:n]).rstrip("\ufffd")
    out, _, ts = stream_text(tokenizer, ids[:n], [want[-2:]])
    assert out == want[:-2] and ts.stopped
