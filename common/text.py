"""Text that any encoder, file or server takes."""

from __future__ import annotations


def valid_unicode(text: str) -> str:
    """`text` as valid Unicode: the two halves of a surrogate pair split into two code points (a broken
    "\\ud83d\\ude00" escape, an emoji cut between two stream pieces) joined again, a lone half made U+FFFD.
    Valid text comes back as it is, after one cheap check."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text
