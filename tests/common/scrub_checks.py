"""What every "this secret is found" case of the scrubber's tests checks."""

from __future__ import annotations

from common.scrub import maybe_secret, scrub_many, scrub_secrets, scrub_secrets_with_counts


def assert_found(text: str, kind: str, secret: str) -> str:
    """`secret` leaves `text` as a `kind` placeholder, the cheap pre-check flags the text, the batch path
    (prepare's) scrubs it the same way, and scrubbing again changes nothing; the scrubbed text."""
    scrubbed, counts = scrub_secrets_with_counts(text)
    assert secret not in scrubbed, scrubbed
    assert counts[kind] >= 1, scrubbed
    assert maybe_secret(text)
    assert scrub_many([text])[0] == [scrubbed]
    assert scrub_secrets(scrubbed) == scrubbed
    return scrubbed
