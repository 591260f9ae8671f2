"""How a set of replies looks: length, emoji, punctuation and letter case, as comparable rates.

Used by the twin-quality report to put the twin's replies next to the person's real ones (and the base
model's). Every rate is computed over a pandas column at once; a reply is one string, possibly several
newline-joined messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd

# Emoji blocks (pictographs, symbols, dingbats, flags, keycaps' combining mark, variation selector 16).
EMOJI = "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2190-\u21ff\u20e3\ufe0f]"
EMOJI_RE = re.compile(EMOJI)
PUNCTUATION = r"[.,!?;:…\-—()\"'«»]"


@dataclass(frozen=True, slots=True)
class StyleStats:
    """Style of a set of replies; rates are fractions in [0, 1]."""

    replies: int
    """How many replies were measured."""
    mean_chars: float
    """Average reply length in characters."""
    median_chars: float
    """Median reply length in characters."""
    emoji_rate: float
    """Share of replies with at least one emoji."""
    punctuation_per_char: float
    """Punctuation marks per character."""
    full_stop_rate: float
    """Share of replies whose last message ends with a full stop."""
    question_rate: float
    """Share of replies containing a question mark."""
    uppercase_share: float
    """Uppercase letters among all letters."""
    capitalised_rate: float
    """Share of replies whose first letter is uppercase."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


RATE_LABELS = {
    "emoji_rate": "has an emoji",
    "full_stop_rate": "ends with '.'",
    "question_rate": "asks a question",
    "capitalised_rate": "starts with a capital",
    "uppercase_share": "uppercase letters",
    "punctuation_per_char": "punctuation / char",
}
"""The rates the report plots side by side, with their axis labels."""


def style_stats(replies: Sequence[str]) -> StyleStats:
    """Measure a set of replies (an empty set gives zeros)."""
    s = pd.Series(list(replies), dtype="string").fillna("").str.strip()
    n = len(s)
    if n == 0:
        return StyleStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    chars = s.str.len()
    letters = s.str.count(r"[^\W\d_]")
    upper = s.str.count(r"[A-ZА-ЯЁ]") + s.str.count(r"[À-ÖØ-Þ]")
    first_letter = s.str.extract(r"([^\W\d_])", expand=False).fillna("")
    total_chars = max(int(chars.sum()), 1)
    return StyleStats(
        replies=n,
        mean_chars=float(chars.mean()),
        median_chars=float(chars.median()),
        emoji_rate=float(s.str.contains(EMOJI, regex=True).mean()),
        punctuation_per_char=float(s.str.count(PUNCTUATION).sum() / total_chars),
        full_stop_rate=float((s.str.endswith(".") & ~s.str.endswith("...")).mean()),
        question_rate=float(s.str.contains("?", regex=False).mean()),
        uppercase_share=float(upper.sum() / max(int(letters.sum()), 1)),
        capitalised_rate=float((first_letter != first_letter.str.lower()).mean()),
    )
