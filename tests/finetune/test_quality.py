"""finetune.quality on synthetic chats whose answer is known: a lowercase ")))"-writing person and
capitalised, formal partners, both drawn from a seeded generator."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from finetune.quality import (
    STYLE_FEATURES,
    Attributor,
    Contestant,
    attribution_share,
    compare_contestants,
    discriminator_accuracy,
    fit_attributor,
    style_features,
    to_markdown,
)

SEED = 7
PERSON_WORDS = "ну да щас го ок лол ахах мб кек норм пон жесть ваще хз типа кста спс пж ага неа".split()
PARTNER_OPENERS = ["Добрый день", "Здравствуйте", "Скажите, пожалуйста", "Уважаемый коллега", "Напомню"]
PARTNER_WORDS = (
    "встреча документы отчёт проект договор среда пятница сроки вопрос согласование презентация бюджет"
).split()


def person_message(rng: random.Random) -> str:
    """Lowercase short bursts, often ending in "))", sometimes two bursts on two lines (and now and then
    a capitalised sentence, so that not every message is obviously theirs)."""
    if rng.random() < 0.1:
        return partner_message(rng)
    bursts = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        burst = " ".join(rng.choice(PERSON_WORDS) for _ in range(rng.randint(1, 3)))
        bursts.append(burst + rng.choice(["))", ")))", "", ")"]))
    return "\n".join(bursts)


def partner_message(rng: random.Random) -> str:
    """Capitalised, formal, full sentences with commas and a full stop or question mark."""
    if rng.random() < 0.1:
        return " ".join(rng.choice(PERSON_WORDS) for _ in range(rng.randint(1, 2)))
    words = " ".join(rng.choice(PARTNER_WORDS) for _ in range(rng.randint(3, 7)))
    return f"{rng.choice(PARTNER_OPENERS)}, {words}{rng.choice(['.', '?', '. Спасибо.'])}"


def corpus(make: Callable[[random.Random], str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [make(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    return fit_attributor(corpus(person_message, 300, 1), corpus(partner_message, 300, 2), SEED)


@pytest.fixture(scope="module")
def real() -> list[str]:
    """The person's held-out replies (a different draw from the training messages)."""
    return corpus(person_message, 120, 3)


def test_style_features_measure_what_they_say() -> None:
    x = style_features(["ну да))", "Добрый день, коллега.", "ok 🙂\nyes", ""])
    assert x.shape == (4, len(STYLE_FEATURES))
    col = {name: x[:, i] for i, name in enumerate(STYLE_FEATURES)}
    assert list(col["lowercase_start"]) == [1, 0, 1, 0]
    assert col["cyrillic_share"][0] == 1 and col["cyrillic_share"][2] == 0
    assert col["newlines"][2] > 0 and col["newlines"][0] == 0
    assert col["emoji_per_char"][2] > 0 and col["emoji_per_char"][1] == 0
    assert col["uppercase_share"][1] > 0 and col["uppercase_share"][0] == 0
    assert np.isfinite(x).all()


def test_a_copy_of_the_real_replies_scores_like_them(attributor: Attributor, real: list[str]) -> None:
    reference = attribution_share(attributor, real, SEED)
    assert reference.share >= 0.8 and reference.low <= reference.share <= reference.high
    copy = attribution_share(attributor, list(real), SEED)
    assert reference.contains(copy.share)
    # a prompt's two identical replies share a fold and a verdict: exactly one of them is right
    assert discriminator_accuracy(real, list(real), SEED).mean == pytest.approx(0.5)


def test_a_twin_writing_like_the_person_is_hard_to_tell_apart(
    attributor: Attributor, real: list[str]
) -> None:
    twin = corpus(person_message, len(real), 4)  # same style, other words
    reference, share = attribution_share(attributor, real, SEED), attribution_share(attributor, twin, SEED)
    assert share.low <= reference.high and reference.low <= share.high  # two draws: the intervals overlap
    acc = discriminator_accuracy(real, twin, SEED)
    assert acc.mean <= 0.6 and acc.low <= 0.5


def test_one_fixed_text_is_caught(real: list[str]) -> None:
    acc = discriminator_accuracy(real, ["Понятно, спасибо за сообщение."] * len(real), SEED)
    assert acc.mean >= 0.9 and acc.folds == 5


def test_a_contestant_in_the_partners_style_is_not_the_person(
    attributor: Attributor, real: list[str]
) -> None:
    formal = corpus(partner_message, len(real), 5)
    share = attribution_share(attributor, formal, SEED)
    reference = attribution_share(attributor, real, SEED)
    assert share.share <= 0.2 and share.high < reference.low
    # a tenth of the person's own messages are formal too: caught less often than one fixed text
    assert discriminator_accuracy(real, formal, SEED).mean >= 0.8


def test_small_sets_use_fewer_folds_and_tiny_ones_are_refused(real: list[str]) -> None:
    acc = discriminator_accuracy(real[:6], ["Понятно, спасибо."] * 6, SEED, folds=10)
    assert acc.folds == 6
    with pytest.raises(ValueError, match="at least 4 real and 4 contestant replies"):
        discriminator_accuracy(real[:3], ["Понятно."] * 3, SEED)
    with pytest.raises(ValueError, match="same prompts"):
        discriminator_accuracy(real[:8], ["Понятно."] * 6, SEED)
    unpaired = discriminator_accuracy(real[:8], ["Понятно."] * 6, SEED, paired=False)
    assert unpaired.folds == 5
    with pytest.raises(ValueError, match="partners"):
        fit_attributor(real, ["", "  "], SEED)
    capped = fit_attributor(real, corpus(partner_message, 50, 2), SEED, max_per_side=30)
    assert (capped.person_texts, capped.partner_texts) == (30, 30)


def test_deterministic_given_a_seed(attributor: Attributor, real: list[str]) -> None:
    twin = corpus(person_message, len(real), 4)
    assert discriminator_accuracy(real, twin, SEED) == discriminator_accuracy(real, twin, SEED)
    assert attribution_share(attributor, twin, SEED) == attribution_share(attributor, twin, SEED)
    again = fit_attributor(corpus(person_message, 300, 1), corpus(partner_message, 300, 2), SEED)
    assert (again.is_person(twin) == attributor.is_person(twin)).all()


def test_contestant_rows_and_their_markdown(attributor: Attributor, real: list[str]) -> None:
    contestants = [
        Contestant("real", real),
        Contestant("twin", corpus(person_message, len(real), 4)),
        Contestant("base | formal", corpus(partner_message, len(real), 5)),
    ]
    rows = compare_contestants(attributor, real, contestants, SEED, n_boot=200)
    assert [r.contestant for r in rows] == ["real", "twin", "base | formal"]
    assert rows[0].discrimination.mean == pytest.approx(0.5)
    assert rows[2].attribution.share < rows[1].attribution.share
    assert (
        compare_contestants(attributor, real, {c.name: c.replies for c in contestants}, SEED, n_boot=200)
        == rows
    )
    table = to_markdown(rows).splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| contestant |")
    assert table[4].startswith("| base \\| formal | 120 | ")
