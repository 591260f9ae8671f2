"""Token ids → text, incrementally, with stop strings — what a stream sends as content deltas.

`TextStream.push(ids)` returns only text that is final: a byte-level BPE token can end in the middle of
a UTF-8 character (emoji, Cyrillic), and text that might be the start of a stop string is held back
until it is clear it is not. Pure Python over litgpt's `Tokenizer`; no torch work per token.
"""

from __future__ import annotations

from collections.abc import Sequence

from litgpt.tokenizer import Tokenizer

CONTEXT_TOKENS = 5
"""Prompt tokens decoded along with the reply, so a reply's first token keeps its leading space."""


def decode_ids(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.decode(list(ids), skip_special_tokens=True)
    return tokenizer.processor.decode(list(ids))  # sentencepiece


class TextStream:
    """Detokenize a growing reply and cut it at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._ids = context
        self._prefix = 0  # window start: decode(ids[prefix:]) minus decode(ids[prefix:read]) is new text
        self._read = len(context)
        self._stops = [s for s in stop if s]
        self._held = ""  # decoded text not yet returned (may start a stop string)
        self.text = ""  # all text returned so far
        self.n_tokens = 0  # reply tokens pushed before the stop (what `usage` counts)
        self.stopped = False

    def push(self, ids: Sequence[int]) -> str:
        """Add reply tokens; return the newly final text ("" while waiting). Ignores tokens after a stop."""
        if self.stopped:
            return ""
        out = []
        for token in ids:
            self.n_tokens += 1
            self._ids.append(token)
            out.append(self._release(self._decode_new()))
            if self.stopped:
                break
        text = "".join(out)
        self.text += text
        return text

    def flush(self) -> str:
        """The end of the reply: the whole characters of tokens that ended inside a character (a reply
        cut by max_tokens after the first bytes of an emoji: the bytes are dropped, a space in the same
        token is not), and whatever was held back (a stop string's prefix that never completed)."""
        if self.stopped:
            return ""
        text = self._release(self._decode_rest())
        if not self.stopped:
            text, self._held = text + self._held, ""
        self.text += text
        return text

    def _release(self, new: str) -> str:
        """Hold `new` text; return what of the held text is final: up to a stop string (and stop there),
        or all but an end that may begin one."""
        if not new:
            return ""
        self._held += new
        cut = self._find_stop()
        if cut is not None:
            text, self._held = self._held[:cut], ""
            self.stopped = True
            return text
        keep = self._partial_stop_len()
        ready = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return ready

    def _decode_new(self) -> str:
        before = decode_ids(self.tokenizer, self._ids[self._prefix : self._read])
        after = decode_ids(self.tokenizer, self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # a complete character at the end
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def _decode_rest(self) -> str:
        """The text of the tokens `_decode_new` is still waiting on, but the incomplete character at its
        end (the decoder's U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        before = decode_ids(self.tokenizer, self._ids[self._prefix : self._read])
        after = decode_ids(self.tokenizer, self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :].rstrip("\ufffd")

    def _find_stop(self) -> int | None:
        hits = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop_len(self) -> int:
        """Length of the longest end of the held text that begins some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best
