"""The tiny checkpoint loads through litgpt exactly like a downloaded one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import check_valid_checkpoint_dir

from finetune import tiny


def test_litgpt_loads_the_tiny_checkpoint(tiny_checkpoint: Path) -> None:
    check_valid_checkpoint_dir(tiny_checkpoint, raise_error=True)
    config = Config.from_file(tiny_checkpoint / "model_config.yaml")
    model = GPT(config)
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True), strict=True)
    # Falcon-7B's code paths at toy size
    assert config.parallel_residual and config.shared_attention_norm
    assert config.n_query_groups == 1 and config.n_head > 1
    assert config.rotary_percentage == 1.0 and not config.bias
    assert config.norm_class_name == "LayerNorm"

    tokenizer = Tokenizer(tiny_checkpoint)
    assert tokenizer.eos_id is not None and not tokenizer.use_bos
    assert tokenizer.vocab_size <= config.padded_vocab_size
    text = "Want to grab sushi later?\n### My reply:\nalways down for sushi 😄"
    ids = tokenizer.encode(text, eos=True)
    assert ids[-1].item() == tokenizer.eos_id
    assert tokenizer.decode(ids[:-1]) == text


def test_pretrained_base_predicts_chat_text_better_than_chance(tiny_checkpoint: Path, chat_records) -> None:
    from finetune.data import render_texts

    config = Config.from_file(tiny_checkpoint / "model_config.yaml")
    model = GPT(config).eval()
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True))
    tokenizer = Tokenizer(tiny_checkpoint)
    ids = tokenizer.encode(render_texts(chat_records["val"][:1])[0]).long()[None]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
    chance = torch.log(torch.tensor(float(config.vocab_size)))
    assert loss < 0.5 * chance


def test_files_are_owner_only(tiny_checkpoint: Path) -> None:
    assert stat.S_IMODE(tiny_checkpoint.stat().st_mode) == 0o700
    for path in tiny_checkpoint.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_cli_builds_from_prepared_folder(prepared_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ck"
    argv = ["--data", str(prepared_dir), "--out", str(out), "--vocab-size", "400", "--n-layer", "1"]
    argv += ["--n-embd", "32", "--block-size", "128", "--pretrain-steps", "2"]
    assert tiny.main(argv) == 0
    assert "tiny checkpoint" in capsys.readouterr().out
    check_valid_checkpoint_dir(out, raise_error=True)


@pytest.mark.parametrize("argv_extra", [[], ["--n-head", "3"]])
def test_cli_explains_bad_input(tmp_path: Path, capsys, argv_extra: list[str]) -> None:
    (tmp_path / "prepared").mkdir()
    argv = ["--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "ck"), *argv_extra]
    assert tiny.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert ("make prepare" in err) if not argv_extra else ("multiple of --n-head" in err)
    assert not (tmp_path / "ck").exists()
