"""finetune.forgetting: the shipped general set, and the forgetting metric on constructed adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from litgpt.lora import GPT, LoRALinear
from litgpt.tokenizer import Tokenizer

from finetune.evaluate import Perplexity, load_lora_model
from finetune.forgetting import (
    GENERAL_FILE,
    GOAL_RATIO,
    GeneralSet,
    encode_texts,
    load_general_set,
    measure_model,
)
from finetune.report import Findings, ReportArgs, findings_json, main, parse_args, render_markdown
from finetune.style import style_stats
from finetune.tiny import make_tiny_checkpoint
from finetune.twin import read_adapter_spec


def test_the_shipped_general_set_has_both_languages() -> None:
    general = load_general_set()
    assert GENERAL_FILE.is_file() and len(general.texts) >= 40
    for lang in ("en", "ru"):
        assert sum(t.lang == lang for t in general.texts) >= 20
        assert sum(q.lang == lang for q in general.questions) >= 4
    assert sum(len(t.text.split()) for t in general.texts) > 2000
    assert any("Москва" in q.reference for q in general.questions)
    france = next(q for q in general.questions if "France" in q.question)
    assert france.is_right("It is Paris, of course") and not france.is_right("London")
    week = next(q for q in general.questions if q.question == "Сколько дней в неделе?")
    assert week.is_right("Семь дней") and not week.is_right("пять")


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"kind": "text", "lang": "de", "topic": "x", "text": "Hallo"}) + "\n")
    with pytest.raises(ValueError, match=r"g\.jsonl:1: .*lang"):
        load_general_set(path)


@pytest.fixture(scope="module")
def general_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A tiny base shaped like `tiny_checkpoint` (so `tiny_adapter`'s tensors fit) that has read the general
    text: the chat-only tiny base is worse than a uniform guess there, which no damage could show."""
    texts = [t.text for t in load_general_set().texts]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the module fixture is built before the autouse one-thread fixture runs
    try:
        return make_tiny_checkpoint(
            tmp_path_factory.mktemp("general") / tiny_checkpoint.name,
            texts,
            vocab_size=512,
            n_layer=2,
            n_embd=64,
            n_head=4,
            block_size=256,
            pretrain_steps=60,
            seed=0,
        )
    finally:
        torch.set_num_threads(before)


def small_set() -> GeneralSet:
    """A quarter of the texts and four questions: seconds on the tiny model."""
    general = load_general_set()
    return GeneralSet(general.texts[::4], general.questions[::3])


def twin_with_lora_b(checkpoint: Path, tiny_adapter: Path, fill: str) -> GPT:
    model, _ = load_lora_model(checkpoint, tiny_adapter, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear) and hasattr(m, "lora_B"):
                if fill == "zero":
                    m.lora_B.zero_()
                else:  # large random B: the LoRA update swamps the base weights
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 2.0)
    return model


@pytest.mark.parametrize("fill", ["zero", "damaged"])
def test_the_metric_on_known_adapters(general_checkpoint: Path, tiny_adapter: Path, fill: str) -> None:
    general = small_set()
    model = twin_with_lora_b(general_checkpoint, tiny_adapter, fill)
    tokenizer = Tokenizer(general_checkpoint)
    prompter = read_adapter_spec(tiny_adapter).prompter
    f = measure_model(model, tokenizer, prompter, general, max_new_tokens=8)
    tokens = sum(ex.loss_tokens for ex in encode_texts(general.texts, tokenizer, model.config.block_size))
    assert f.base.tokens == f.twin.tokens == tokens
    assert len(f.answers) == len(general.questions)
    if fill == "zero":  # an untrained LoRA (B = 0) is the base: nothing forgotten
        assert f.ratio == pytest.approx(1.0, abs=1e-5) and f.within_goal
        assert [a.twin for a in f.answers] == [a.base for a in f.answers]  # greedy, same model
        assert "meets the goal" in f.verdict()
    else:
        assert f.ratio > 2 * GOAL_RATIO and not f.within_goal
        assert "does **not** meet" in f.verdict()
    d = f.as_dict()
    assert d["within_goal"] == f.within_goal and d["right"]["questions"] == len(general.questions)
    json.dumps(d, ensure_ascii=False)


def test_the_report_has_the_section(
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "report"
    argv = ["--data", str(prepared_dir), "--checkpoint-dir", str(tiny_checkpoint), "--lora-path"]
    argv += [str(tiny_adapter), "--out", str(out), "--samples", "4", "--max-new-tokens", "8"]
    assert main(argv) == 0
    assert "general-text perplexity base " in capsys.readouterr().out
    found = json.loads((out / "report.json").read_text(encoding="utf-8"))["forgetting"]
    ppl = found["perplexity"]
    assert found["ratio"] == pytest.approx(ppl["twin"] / ppl["base"])
    assert found["within_goal"] == (found["ratio"] <= GOAL_RATIO)
    general = load_general_set()
    assert [a["question"] for a in found["answers"]] == [q.question for q in general.questions]
    assert all(set(a) >= {"base", "twin", "reference", "base_right", "twin_right"} for a in found["answers"])
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Has it forgotten the world?" in text and "Сколько дней в неделе?" in text
    assert ("meets the goal" in text) == found["within_goal"]

    args = ReportArgs(data=Path("d"), forgetting=False)
    f = Findings(Perplexity(0.7, 10), Perplexity(0.6, 10), {"real": style_stats(["a"])}, [], [], 1, 1.0)
    assert findings_json(args, f)["forgetting"] is None
    assert "Not measured (`--no-forgetting`)." in render_markdown(args, f, [])
    assert parse_args(["--no-forgetting"]).forgetting is False and parse_args([]).forgetting is True
