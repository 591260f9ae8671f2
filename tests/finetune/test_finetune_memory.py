"""`python -m finetune --memory-k K`: prompts with K past exchanges of the train split, the memory saved
owner-only beside the adapter, memory_k in the adapter's spec (adapters without it: memory off)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml

from finetune.__main__ import main
from finetune.args import to_argv
from finetune.data import encode_records
from finetune.twin import HPARAMS_FILE, TwinError, read_adapter_spec, read_memory
from prepare.memory import MEMORY_FILE, Memory, record_memories
from prepare.prompt import TWIN_V1
from prepare.records import Record


def test_memory_k_trains_with_memories_and_saves_them_owner_only(
    tiny_checkpoint: Path,
    prepared_dir: Path,
    chat_records: dict[str, list[Record]],
    tmp_path: Path,
    capsys,
    tiny_run_args,
) -> None:
    out = tmp_path / "twin"
    args = tiny_run_args(tiny_checkpoint, prepared_dir, out, max_steps=1, memory_k=2)
    args.eval.eval_samples = 0
    assert main(to_argv(args)) == 0, capsys.readouterr().err

    path = out / MEMORY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    train = chat_records["train"]
    saved = read_memory(out)
    assert saved.exchanges == Memory.from_records(train).exchanges  # the train split only
    assert yaml.safe_load((out / HPARAMS_FILE).read_text())["memory_k"] == 2
    assert read_adapter_spec(out).memory_k == 2


def test_training_prompts_show_retrieved_exchanges(tiny_checkpoint: Path, chat_records) -> None:
    from litgpt.tokenizer import Tokenizer

    train = chat_records["train"][:64]
    memory = Memory.from_records(train)
    memories = record_memories(memory, train, 2)
    assert sum(1 for m in memories if m) > len(train) // 2  # the chats share their topics
    tokenizer = Tokenizer(tiny_checkpoint)
    plain = encode_records(train, tokenizer, 10_000, TWIN_V1)
    with_memory = encode_records(train, tokenizer, 10_000, TWIN_V1, memories)
    for without, shown, m in zip(plain.examples, with_memory.examples, memories, strict=True):
        assert (len(shown) > len(without)) == bool(m)
        # the reply (the loss) is the same: memories only lengthen the prompt
        assert (
            shown.input_ids[shown.prompt_len :].tolist() == without.input_ids[without.prompt_len :].tolist()
        )


def test_adapters_without_memory_k_have_memory_off(tiny_adapter: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_adapter, old)
    hparams = yaml.safe_load((old / HPARAMS_FILE).read_text())
    assert hparams["memory_k"] == 0  # every run records it
    del hparams["memory_k"]
    (old / HPARAMS_FILE).write_text(yaml.safe_dump(hparams))
    assert read_adapter_spec(old).memory_k == 0
    with pytest.raises(TwinError, match=f"{MEMORY_FILE} is missing.*TWIN_MEMORY_K=0"):
        read_memory(old)
    for bad in (-1, "two", True):
        (old / HPARAMS_FILE).write_text(yaml.safe_dump(hparams | {"memory_k": bad}))
        with pytest.raises(TwinError, match="memory_k"):
            read_adapter_spec(old)


def test_a_negative_memory_k_is_refused(capsys) -> None:
    assert main(["--memory-k", "-1"]) == 2
    assert "--memory-k must be 0 (off) or more" in capsys.readouterr().err
