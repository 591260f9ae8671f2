"""Fixtures of the ui tests (helpers live in `ui_standin.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ui_standin import StandIn, running_standin


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A stand-in twin server on 127.0.0.1; set `.answer` to script it."""
    with running_standin() as server:
        yield server
