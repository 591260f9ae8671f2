"""Train/validation split by conversation: all records of one conversation land on the same side."""

from __future__ import annotations

import numpy as np


def split_conversations(conversation: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask over records, True for validation.

    The conversations that have records are shuffled with `seed` and the first `round(n * val_fraction)`
    of them (at least one when `val_fraction > 0` and there are two or more, never all) go to validation.
    Same records and seed, same split.
    """
    convs = np.unique(conversation)  # sorted: conversation numbers follow dialog and time order
    n = len(convs)
    if val_fraction <= 0 or n < 2:
        return np.zeros(len(conversation), dtype=bool)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    rng = np.random.default_rng(seed)
    val_convs = convs[rng.permutation(n)[:n_val]]
    return np.isin(conversation, val_convs)
