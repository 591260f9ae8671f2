"""Does the twin write like the person? Two measurements the research uses, on plain text only.

* **Authorship attribution** ("Catch Me If You Can? Not Yet", 2025): a stylometric classifier — character
  n-grams plus a few style rates — learns the person's own messages (train split) against their
  partners' messages, then says which share of a contestant's replies it attributes to the person. The
  person's real held-out replies give the reference share; a good twin lands inside its interval.
* **Real-vs-generated discrimination**: the same kind of classifier is trained, with k-fold
  cross-validation, to tell the person's real replies from a contestant's replies to the same prompts.
  Out-of-fold accuracy near 50% means the two cannot be told apart; near 100% means the contestant is
  caught.

Torch-free (scikit-learn + numpy), deterministic given a seed, nothing leaves the process, and log lines
carry counts only, never message text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from finetune.style import EMOJI, PUNCTUATION

log = logging.getLogger(__name__)

MIN_PER_CLASS = 4
"""Fewest replies of each side the discriminator accepts (fewer cannot be cross-validated)."""
STYLE_FEATURES = (
    "log_chars",
    "log_words",
    "lowercase_start",
    "emoji_per_char",
    "punctuation_per_char",
    "newlines",
    "cyrillic_share",
    "uppercase_share",
)
"""The hand-made style columns next to the character n-grams, in `style_features`' order."""


# ------------------------------------------------------------------------------------------- features
def style_features(texts: Sequence[str]) -> np.ndarray:
    """One row of STYLE_FEATURES per text (length, letter case, emoji, punctuation, lines, script)."""
    s = pd.Series(list(texts), dtype="string").fillna("")
    chars = s.str.len().astype(float)
    letters = s.str.count(r"[^\W\d_]").astype(float)
    safe_chars = chars.clip(lower=1)
    safe_letters = letters.clip(lower=1)
    first_letter = s.str.extract(r"([^\W\d_])", expand=False).fillna("")
    lowercase_start = (first_letter != "") & (first_letter == first_letter.str.lower())
    upper = s.str.count(r"[A-ZА-ЯЁÀ-ÖØ-Þ]").astype(float)
    columns = [
        np.log1p(chars),
        np.log1p(s.str.split().str.len().fillna(0).astype(float)),
        lowercase_start.astype(float),
        s.str.count(EMOJI).astype(float) / safe_chars,
        s.str.count(PUNCTUATION).astype(float) / safe_chars,
        np.log1p(s.str.count("\n").astype(float)),
        s.str.count(r"[А-Яа-яЁё]").astype(float) / safe_letters,
        upper / safe_letters,
    ]
    return np.column_stack([c.to_numpy(dtype=float) for c in columns]).reshape(len(s), len(STYLE_FEATURES))


def build_classifier(seed: int) -> Pipeline:
    """Character 1–4-grams (within word boundaries) and the scaled style rates → logistic regression."""
    features = FeatureUnion(
        [
            (
                "chars",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, lowercase=False),
            ),
            ("style", make_pipeline(FunctionTransformer(style_features), StandardScaler())),
        ]
    )
    # balanced: a person usually writes fewer (or more) messages than all their partners together;
    # liblinear: single-threaded, so a cross-validation's many small fits don't fight over BLAS threads
    classifier = LogisticRegression(
        C=4.0, solver="liblinear", max_iter=1000, class_weight="balanced", random_state=seed
    )
    return Pipeline([("features", features), ("classifier", classifier)])


# ------------------------------------------------------------------------------------------- attribution
@dataclass(frozen=True, slots=True)
class Share:
    """A share of replies with its bootstrap 95% interval; all in [0, 1]."""

    share: float
    """The measured share."""
    low: float
    """2.5th percentile of the bootstrap shares."""
    high: float
    """97.5th percentile of the bootstrap shares."""
    n: int
    """How many replies it was measured on."""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Attributor:
    """A stylometric classifier fitted to tell the person (1) from their partners (0)."""

    pipeline: Pipeline
    person_texts: int
    """How many of the person's messages it learned from."""
    partner_texts: int
    """How many partner messages it learned from."""

    def is_person(self, texts: Sequence[str]) -> np.ndarray:
        """True where a text is attributed to the person."""
        if not texts:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.pipeline.predict(list(texts))) == 1


def fit_attributor(
    person_texts: Sequence[str], partner_texts: Sequence[str], seed: int, max_per_side: int | None = 20_000
) -> Attributor:
    """Fit the attribution classifier on the person's train-split messages against their partners'.

    Empty texts are skipped; a side with more than `max_per_side` texts is subsampled (seeded) to keep
    the fit to seconds on years of chats.
    """
    rng = np.random.default_rng(seed)

    def usable(texts: Sequence[str]) -> list[str]:
        kept = [t for t in texts if t.strip()]
        if max_per_side is not None and len(kept) > max_per_side:
            kept = [kept[i] for i in sorted(rng.choice(len(kept), max_per_side, replace=False))]
        return kept

    person, partners = usable(person_texts), usable(partner_texts)
    if not person or not partners:
        raise ValueError(
            f"authorship attribution needs messages of the person and of their partners "
            f"(got {len(person)} and {len(partners)} non-empty ones): prepare more chats"
        )
    pipeline = build_classifier(seed)
    pipeline.fit(person + partners, np.r_[np.ones(len(person), int), np.zeros(len(partners), int)])
    log.info("attributor fitted on %d person and %d partner messages", len(person), len(partners))
    return Attributor(pipeline, len(person), len(partners))


def bootstrap_mean(values: np.ndarray, seed: int, n_boot: int) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the mean of `values` resampled with replacement."""
    if len(values) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def attribution_share(attributor: Attributor, replies: Sequence[str], seed: int, n_boot: int = 1000) -> Share:
    """Share of `replies` the attributor gives to the person, with a bootstrap 95% interval."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1 (got {n_boot})")
    hits = attributor.is_person(replies).astype(float)
    low, high = bootstrap_mean(hits, seed, n_boot)
    return Share(float(hits.mean()) if len(hits) else 0.0, low, high, len(hits))


# ------------------------------------------------------------------------------------------- discrimination
@dataclass(frozen=True, slots=True)
class Accuracy:
    """Out-of-fold accuracy of telling real replies from a contestant's; 0.5 = indistinguishable."""

    mean: float
    """Accuracy over all out-of-fold predictions."""
    low: float
    """2.5th percentile of the bootstrap accuracies (pairs, or replies, resampled)."""
    high: float
    """97.5th percentile of the bootstrap accuracies."""
    std: float
    """Standard deviation of the per-fold accuracies."""
    folds: int
    """How many folds were used (fewer than asked when a side is small)."""


def discriminator_accuracy(
    real_replies: Sequence[str],
    contestant_replies: Sequence[str],
    seed: int,
    folds: int = 5,
    paired: bool = True,
    n_boot: int = 1000,
) -> Accuracy:
    """How well a classifier tells the person's real replies from a contestant's, cross-validated.

    `paired` (the default) means reply i of both lists answers the same prompt i: a prompt's two replies
    always land in the same fold, so the classifier never learns one prompt's answer to judge its twin
    (a copy of the real replies then scores exactly 50%). Unpaired lists get stratified folds. Folds are
    min(`folds`, the smaller side); fewer than MIN_PER_CLASS replies on a side is a ValueError.
    """
    real, fake = list(real_replies), list(contestant_replies)
    smallest = min(len(real), len(fake))
    problems = []
    if smallest < MIN_PER_CLASS:
        problems.append(
            f"needs at least {MIN_PER_CLASS} real and {MIN_PER_CLASS} contestant replies "
            f"(got {len(real)} and {len(fake)}): sample more prompts"
        )
    if paired and len(real) != len(fake):
        problems.append(
            f"paired replies must answer the same prompts (got {len(real)} real and {len(fake)} "
            "contestant replies): pass paired=False for unrelated sets"
        )
    if folds < 2:
        problems.append(f"folds must be at least 2 (got {folds})")
    if n_boot < 1:
        problems.append(f"n_boot must be at least 1 (got {n_boot})")
    if problems:
        raise ValueError("discriminator: " + "; ".join(problems))
    k = min(folds, smallest)
    texts = real + fake
    labels = np.r_[np.ones(len(real), int), np.zeros(len(fake), int)]
    if paired:
        n = len(real)
        splits = [
            (np.r_[train, train + n], np.r_[test, test + n])
            for train, test in KFold(k, shuffle=True, random_state=seed).split(np.arange(n))
        ]
    else:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(labels)), labels))
    correct = np.zeros(len(texts), dtype=float)
    fold_accuracies = []
    for train, test in splits:
        pipeline = build_classifier(seed).fit([texts[i] for i in train], labels[train])
        hits = np.asarray(pipeline.predict([texts[i] for i in test])) == labels[test]
        correct[test] = hits
        fold_accuracies.append(float(hits.mean()))
    # resample whole prompts when paired: a prompt's two verdicts are not independent
    units = correct.reshape(2, -1).mean(axis=0) if paired else correct
    low, high = bootstrap_mean(units, seed, n_boot)
    log.info("discriminator: %d real vs %d contestant replies, %d folds", len(real), len(fake), k)
    return Accuracy(float(correct.mean()), low, high, float(np.std(fold_accuracies)), k)


# ------------------------------------------------------------------------------------------- contestants
@dataclass(frozen=True)
class Contestant:
    """Someone answering the held-out prompts: reply i answers prompt i, as the real replies do."""

    name: str
    replies: Sequence[str]


@dataclass(frozen=True, slots=True)
class QualityRow:
    """Both measurements for one contestant."""

    contestant: str
    replies: int
    attribution: Share
    """Share of the contestant's replies attributed to the person."""
    discrimination: Accuracy
    """How well its replies are told from the real ones (0.5 = indistinguishable)."""


def compare_contestants(
    attributor: Attributor,
    real_replies: Sequence[str],
    contestants: Sequence[Contestant] | Mapping[str, Sequence[str]],
    seed: int,
    folds: int = 5,
    n_boot: int = 1000,
) -> list[QualityRow]:
    """Attribution share and discriminator accuracy for each contestant, in the given order.

    Put the real replies themselves among the contestants to get the reference row (its discriminator
    accuracy is exactly 50%).
    """
    if isinstance(contestants, Mapping):
        contestants = [Contestant(name, replies) for name, replies in contestants.items()]
    rows = []
    for c in contestants:
        rows.append(
            QualityRow(
                contestant=c.name,
                replies=len(c.replies),
                attribution=attribution_share(attributor, c.replies, seed, n_boot),
                discrimination=discriminator_accuracy(real_replies, c.replies, seed, folds, n_boot=n_boot),
            )
        )
    return rows


def to_markdown(rows: Sequence[QualityRow]) -> str:
    """A Markdown table of the rows, one per contestant (percentages with 95% intervals)."""

    def pct(value: float, low: float, high: float) -> str:
        return f"{value:.0%} ({low:.0%}–{high:.0%})"

    lines = [
        "| contestant | replies | attributed to the person (95% CI) | told from real (95% CI) | folds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, d = r.attribution, r.discrimination
        name = r.contestant.replace("|", "\\|")
        cells = [name, str(r.replies), pct(a.share, a.low, a.high), pct(d.mean, d.low, d.high), str(d.folds)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
