"""The sample chats on the embedded real model (SmolLM2-135M-Instruct), prepared as `make demo` prepares
them: a few LoRA steps on the CPU lower the held-out loss, and a real `python -m serve` with that adapter
answers a Russian message in Cyrillic and an English one in Latin letters, ending the turn cleanly."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from finetune.train import Summary

pytestmark = pytest.mark.slow

# A message of each language that Sasha's partners send; greedy, every short run we tried answered both
# with a few words and the end of turn ("Смотришь сегодня матч?" can loop on "да\nда\n..." this early).
RUSSIAN = ("Оля Ковалёва", "Как прошли выходные?")
ENGLISH = ("Maya Fontaine", "Climbing on saturday?")
STEPS = 10


@pytest.fixture(scope="module")
def sample_data(demo: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """collect + prepare on examples/sample_export with the demo's own commands and flags."""
    root = tmp_path_factory.mktemp("demo")
    paths = demo.Paths.under(root / "data", root / "base", root / "out")
    for number, (title, cmd) in enumerate(demo.pipeline(paths)[:2], start=1):
        demo.step(number, 2, title, cmd, {})
    return Path(paths.prepared)


@pytest.fixture(scope="module")
def sample_run(
    smollm2_checkpoint: Path,
    sample_data: Path,
    tiny_run_args: Callable[..., object],
    tmp_path_factory: pytest.TempPathFactory,
) -> Summary:
    """`STEPS` LoRA steps of 4 sample records (fp32, CPU, one thread), LoRA on every matrix as in the demo."""
    from finetune.train import setup

    out = tmp_path_factory.mktemp("smollm2-sample") / "twin"
    args = tiny_run_args(
        smollm2_checkpoint, sample_data, out, global_batch_size=4, max_steps=STEPS, learning_rate=2e-3,
        max_seq_length=96, lora_key=True, lora_projection=True, lora_mlp=True, eval_interval=1000,
        save_interval=1000, eval_samples=0,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/conftest.py's fixtures train: faster than two on a shared 2-core box
    try:
        summary = setup(args)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    assert summary is not None
    return summary


def test_a_few_lora_steps_lower_the_held_out_loss(sample_run: Summary) -> None:
    assert sample_run.steps == STEPS
    # the untuned instruct model is far from Sasha's replies (measured: 5.4); 40 replies move it a lot (3.3)
    assert sample_run.first_val_loss > 4.0
    assert sample_run.final_val_loss < sample_run.first_val_loss - 1.0


def test_the_served_twin_answers_in_the_prompts_language_and_ends_cleanly(
    demo: ModuleType, smollm2_checkpoint: Path, sample_run: Summary, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    questions = [RUSSIAN, ENGLISH]
    russian, english = demo.ask(smollm2_checkpoint, sample_run.adapter, questions, log, max_tokens=48)
    assert re.search("[а-яё]", russian.text.lower()), russian
    assert re.search("[a-z]", english.text.lower()) and not re.search("[а-яё]", english.text.lower()), english
    for reply in (russian, english):
        assert reply.finish_reason == "stop", reply  # the model ended its turn, before the token cap
        assert reply.text.strip(), reply
        for marker in ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "\nuser", "\nassistant"):
            assert marker not in reply.text, reply
