"""The report's "does it write like the person?" section: finetune.quality over the report's records."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from finetune.evaluate import Perplexity
from finetune.report import Findings, ReportArgs, findings_json, measure_quality, render_markdown
from finetune.style import style_stats
from prepare.records import Record


def record(instruction: str, response: str) -> Record:
    return Record(instruction, "", response, 1, "2024-01-01T00:00:00+00:00", "Anna")


def person(rng: random.Random) -> str:
    return " ".join(rng.choice("ну да щас го ок лол мб кек норм".split()) for _ in range(2)) + "))"


def partner(rng: random.Random) -> str:
    return "Добрый день, " + " ".join(rng.choice("отчёт проект среда сроки".split()) for _ in range(4)) + "."


def test_measure_quality_rows_and_why_there_are_none() -> None:
    rng = random.Random(0)
    train = [record(partner(rng), person(rng)) for _ in range(200)]
    real = [person(rng) for _ in range(20)]
    replies = {
        "real": real,
        "twin": [person(rng) for _ in range(20)],
        "base": [partner(rng) for _ in range(20)],
    }
    rows, note = measure_quality(train, replies, seed=1)
    assert note == "" and [r.contestant for r in rows] == ["real", "twin", "base"]
    by = {r.contestant: r for r in rows}
    assert by["real"].discrimination.mean == pytest.approx(0.5)
    assert by["base"].attribution.share < by["twin"].attribution.share
    assert by["base"].discrimination.mean >= 0.9

    assert measure_quality(train, {k: v[:3] for k, v in replies.items()}, seed=1) == (
        [],
        "only 3 sampled prompts; use --samples 4 or more",
    )
    rows, note = measure_quality([], replies, seed=1)
    assert rows == [] and "train.jsonl" in note


def test_the_section_in_markdown_and_json() -> None:
    rng = random.Random(0)
    train = [record(partner(rng), person(rng)) for _ in range(100)]
    replies = {"real": [person(rng) for _ in range(8)], "twin": [person(rng) for _ in range(8)]}
    replies["base"] = [partner(rng) for _ in range(8)]
    rows, _ = measure_quality(train, replies, seed=1)
    ppl = Perplexity(nll=0.69, tokens=10)
    style = {who: style_stats(texts) for who, texts in replies.items()}
    f = Findings(ppl, ppl, style, [], [], val_records=8, seconds=1.0, quality=rows)
    args = ReportArgs(data=Path("d"))
    text = render_markdown(args, f, [])
    assert "## Does it write like the person?" in text and "| base | 8 | " in text
    assert findings_json(args, f)["quality"]["rows"][2]["contestant"] == "base"
    empty = Findings(ppl, ppl, style, [], [], 8, 1.0, quality_note="only 3 sampled prompts")
    assert "Not measured: only 3 sampled prompts." in render_markdown(args, empty, [])


def test_the_prompting_baseline_shows_real_exchanges_from_train_before_the_prompt() -> None:
    from finetune.report import example_turns, prompted_prompt
    from prepare.chat_template import ChatTemplate
    from prepare.prompt import CHAT_TEMPLATE, TWIN_V1, Prompter

    rng = random.Random(0)
    train = [record(partner(rng) + f" {i}", person(rng) + f" #{i}") for i in range(50)]
    shots = example_turns(train, 8, seed=1)
    assert [t.speaker for t in shots] == ["partner", "me"] * 8
    assert example_turns(train, 8, seed=1) == shots  # seeded
    pairs = {(r.instruction, r.response) for r in train}
    assert all((a.text, b.text) in pairs for a, b in zip(shots[::2], shots[1::2], strict=True))
    assert len(example_turns(train, 8, seed=1, max_chars=150)) < 16  # fewer when they would not fit
    assert example_turns([], 8, seed=1) == []

    target = Record("Are you free on friday?", "Anna: hi", "yes", 1, "2024-01-01T00:00:00+00:00", "Anna")
    plain = prompted_prompt(TWIN_V1, target, [])
    assert plain == TWIN_V1.render_record(target)[0]  # no examples: the twin's own prompt
    shown = prompted_prompt(TWIN_V1, target, shots)
    assert all(t.text.split("\n")[0] in shown for t in shots) and shown.endswith(plain[-60:])
    assert shown.index(shots[-1].text) < shown.index("Anna: hi")  # the examples come first

    chatml = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "chatml.jinja"
    prompter = Prompter(CHAT_TEMPLATE, ChatTemplate(chatml.read_text(encoding="utf-8")))
    target = Record("Are you free?", "", "yes", 1, "2024-01-01T00:00:00+00:00", "Anna", turns=())
    chat = prompted_prompt(prompter, target, shots)
    assert (
        chat.count("<|im_start|>assistant") == 8 + 1
    )  # the person's 8 example replies + the generation prompt
