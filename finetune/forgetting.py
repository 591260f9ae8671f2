"""Has the twin forgotten the world? Catastrophic forgetting, measured on general text the repo ships.

Fine-tuning on one person's chats must not wipe out what the base knew. `finetune/assets/general.jsonl`
(self-written, so free of licence questions) holds English and Russian prose and dialogue on everyday
topics (weather, cooking, travel, history, science) and a few general questions with reference answers.
The base and the twin are the report's one litgpt LoRA model (`finetune.evaluate`): first with every LoRA
scaling at zero (the base, exactly), then with the LoRA merged (the twin). Each gets

- the perplexity of every token of the general text (`reply_perplexity` over examples whose prompt is
  empty), and
- its greedy answer to each general question, asked in the twin's prompt format as a chat partner would.

The goal (issue 15): the twin's general-text perplexity at most 10% above the base's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from litgpt.lora import GPT
from litgpt.tokenizer import Tokenizer

from finetune.data import Example
from finetune.evaluate import Perplexity, generate_replies, lora_off, merge, reply_perplexity
from prepare.prompt import Prompter

GENERAL_FILE = Path(__file__).parent / "assets" / "general.jsonl"
GOAL_RATIO = 1.10
"""The twin's general-text perplexity may be at most this times the base's."""
LANGS = ("en", "ru")


@dataclass(frozen=True, slots=True)
class GeneralText:
    """One paragraph of general prose or dialogue."""

    lang: str
    topic: str
    text: str


@dataclass(frozen=True, slots=True)
class GeneralQuestion:
    """A general-knowledge question; an answer counts as right if it contains one of `accept`
    (lower-cased stems, so Russian inflections match)."""

    lang: str
    question: str
    reference: str
    accept: tuple[str, ...]

    def is_right(self, answer: str) -> bool:
        low = answer.lower()
        return any(a in low for a in self.accept)


@dataclass(frozen=True, slots=True)
class GeneralSet:
    texts: list[GeneralText]
    questions: list[GeneralQuestion]


def load_general_set(path: Path = GENERAL_FILE) -> GeneralSet:
    """The general texts and questions of `path` (JSONL, `kind` "text" or "question"), checked per line."""
    texts: list[GeneralText] = []
    questions: list[GeneralQuestion] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row["lang"] not in LANGS:
                raise ValueError(f"lang must be one of {LANGS}")
            if row["kind"] == "text":
                texts.append(GeneralText(row["lang"], row["topic"], row["text"]))
            elif row["kind"] == "question":
                accept = tuple(str(a).lower() for a in row["accept"])
                if not accept:
                    raise ValueError("accept must list at least one answer")
                questions.append(GeneralQuestion(row["lang"], row["question"], row["reference"], accept))
            else:
                raise ValueError(f"unknown kind {row['kind']!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: bad general-set record ({e!r})") from None
    return GeneralSet(texts, questions)


def encode_texts(texts: Sequence[GeneralText], tokenizer: Tokenizer, block_size: int) -> list[Example]:
    """Every token of every text scored (an empty prompt), texts longer than `block_size` cut into
    consecutive windows."""
    examples = []
    for t in texts:
        ids = tokenizer.encode(t.text).to(torch.long)
        for start in range(0, len(ids), block_size):
            window = ids[start : start + block_size]
            if len(window) > 1:  # one token has nothing to predict
                examples.append(Example(window, prompt_len=0))
    return examples


@dataclass(frozen=True, slots=True)
class Answer:
    lang: str
    question: str
    reference: str
    base: str
    twin: str
    base_right: bool
    twin_right: bool


@dataclass(frozen=True, slots=True)
class Forgetting:
    """The general-text perplexity of the base and the twin, and their answers to the general questions."""

    base: Perplexity
    twin: Perplexity
    answers: list[Answer]

    @property
    def ratio(self) -> float:
        """Twin perplexity / base perplexity (1.0: nothing forgotten)."""
        return self.twin.value / self.base.value

    @property
    def within_goal(self) -> bool:
        return self.ratio <= GOAL_RATIO

    def as_dict(self) -> dict[str, Any]:
        return {
            "perplexity": {"base": self.base.value, "twin": self.twin.value, "tokens": self.twin.tokens},
            "ratio": self.ratio,
            "goal_ratio": GOAL_RATIO,
            "within_goal": self.within_goal,
            "right": {
                "base": sum(a.base_right for a in self.answers),
                "twin": sum(a.twin_right for a in self.answers),
                "questions": len(self.answers),
            },
            "answers": [asdict(a) for a in self.answers],
        }

    def verdict(self) -> str:
        """One sentence saying whether the goal is met."""
        change = (self.ratio - 1) * 100
        meets = "meets" if self.within_goal else "does **not** meet"
        return (
            f"General-text perplexity base {self.base.value:.2f} → twin {self.twin.value:.2f} "
            f"({change:+.1f}%): the twin {meets} the goal of at most +{(GOAL_RATIO - 1) * 100:.0f}%."
        )


@dataclass(frozen=True, slots=True)
class Side:
    """What one model (the base or the twin) did on the general set."""

    perplexity: Perplexity
    answers: list[str]


def measure_side(
    model: GPT,
    tokenizer: Tokenizer,
    prompter: Prompter,
    general: GeneralSet,
    max_new_tokens: int = 48,
    who: Literal["base", "twin"] = "twin",
) -> Side:
    """The model as it stands (the base under `lora_off`): general-text perplexity and greedy answers."""
    examples = encode_texts(general.texts, tokenizer, model.config.block_size)
    perplexity = reply_perplexity(model, examples, desc=f"{who} general perplexity")
    prompts = [prompter.render((), q.question) for q in general.questions]
    answers = generate_replies(
        model, tokenizer, prompter, prompts, max_new_tokens, temperature=0.0, top_p=1.0, desc=f"{who} answers"
    )
    return Side(perplexity, answers)


def compare(general: GeneralSet, base: Side, twin: Side) -> Forgetting:
    answers = [
        Answer(q.lang, q.question, q.reference, b, t, q.is_right(b), q.is_right(t))
        for q, b, t in zip(general.questions, base.answers, twin.answers, strict=True)
    ]
    return Forgetting(base.perplexity, twin.perplexity, answers)


def measure_model(
    model: GPT, tokenizer: Tokenizer, prompter: Prompter, general: GeneralSet, max_new_tokens: int = 48
) -> Forgetting:
    """Base (LoRA scaled to zero) then twin (LoRA merged) on an unmerged LoRA model; leaves it merged."""
    with lora_off(model):
        base = measure_side(model, tokenizer, prompter, general, max_new_tokens, "base")
    merge(model)
    twin = measure_side(model, tokenizer, prompter, general, max_new_tokens, "twin")
    return compare(general, base, twin)
