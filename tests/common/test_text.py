"""`common.text.valid_unicode`: what collect, reply and the chat page all do to broken UTF-16 halves."""

from __future__ import annotations

from common.text import valid_unicode


def test_split_pairs_are_joined_lone_halves_replaced_valid_text_kept() -> None:
    assert valid_unicode("hi \ud83d\ude00!") == "hi 😀!"  # a pair as two code points: one emoji
    assert valid_unicode("half \ud83d here") == "half \ufffd here"
    assert valid_unicode("\ude00") == "\ufffd"
    text = "привет 😀"
    assert valid_unicode(text) is text
