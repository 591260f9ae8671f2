"""The trained-twin contract (finetune/twin.py): one checkpoint check, the adapter spec, one loader."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from litgpt.config import Config

from finetune.bases import SUPPORTED, UnsupportedBaseError
from finetune.twin import (
    ADAPTER_FILE,
    HPARAMS_FILE,
    TwinError,
    check_base,
    check_checkpoint_dir,
    load_adapter,
    load_base_config,
    load_twin,
    read_adapter_spec,
)
from prepare.prompt import PROMPT_FORMAT

SPEC_KEYS = ("base_name", "base_family", "prompt_format")


def copy_run(adapter_dir: Path, out: Path, drop: tuple[str, ...] = (), **changes: object) -> Path:
    """A copy of a finetune out-dir (adapter + hyperparameters.yaml) with some hyperparameters changed."""
    out.mkdir(parents=True)
    shutil.copy(adapter_dir / ADAPTER_FILE, out / ADAPTER_FILE)
    hparams = yaml.safe_load((adapter_dir / HPARAMS_FILE).read_text())
    hparams = {k: v for k, v in hparams.items() if k not in drop} | changes
    (out / HPARAMS_FILE).write_text(yaml.safe_dump(hparams, sort_keys=False))
    return out


def test_one_checkpoint_check_says_how_to_get_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    check_checkpoint_dir(tiny_checkpoint)
    with pytest.raises(TwinError, match="does not exist") as missing:
        check_checkpoint_dir(tmp_path / "nowhere")
    assert "make download" in str(missing.value) and "python -m finetune.tiny" in str(missing.value)

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "tokenizer_config.json").unlink()  # special tokens may come from generation_config.json
    check_checkpoint_dir(ckpt)
    (ckpt / "tokenizer.json").rename(ckpt / "tokenizer.model")  # litgpt's Tokenizer reads either
    check_checkpoint_dir(ckpt)
    (ckpt / "tokenizer.model").unlink()
    (ckpt / "lit_model.pth").unlink()
    with pytest.raises(TwinError, match=r"lacks lit_model\.pth, tokenizer\.json or tokenizer\.model"):
        check_checkpoint_dir(ckpt)


def test_finetune_records_the_spec_and_the_adapter_loads_from_file_or_folder(
    tiny_adapter: Path, tiny_checkpoint: Path
) -> None:
    hparams = yaml.safe_load((tiny_adapter / HPARAMS_FILE).read_text())
    assert {k: hparams[k] for k in SPEC_KEYS} == {
        "base_name": "tiny-falcon",
        "base_family": "falcon",
        "prompt_format": PROMPT_FORMAT,
    }
    from_folder, from_file = load_adapter(tiny_adapter), load_adapter(tiny_adapter / ADAPTER_FILE)
    assert from_folder.path == from_file.path == tiny_adapter / ADAPTER_FILE
    assert from_folder.spec == from_file.spec == read_adapter_spec(tiny_adapter)
    assert from_folder.spec.lora.targets == ("lora_query", "lora_value")  # the training defaults
    assert from_folder.tensors.keys() == from_file.tensors.keys()
    assert all("lora_" in k and isinstance(v, torch.Tensor) for k, v in from_folder.tensors.items())
    config, adapter = load_twin(tiny_checkpoint, tiny_adapter)
    assert config.name == adapter.spec.base_name


def test_old_hyperparameters_without_the_spec_still_load(
    tiny_adapter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = copy_run(tiny_adapter, tmp_path / "old", drop=SPEC_KEYS)
    spec = read_adapter_spec(old)  # the base is read from the recorded checkpoint_dir
    assert (spec.base_name, spec.base_family, spec.prompt_format) == ("tiny-falcon", "falcon", PROMPT_FORMAT)

    gone = copy_run(tiny_adapter, tmp_path / "gone", drop=SPEC_KEYS, checkpoint_dir=str(tmp_path / "moved"))
    spec = read_adapter_spec(gone)
    assert spec.base_name is None and spec.prompt_format == PROMPT_FORMAT
    with caplog.at_level(logging.WARNING):
        check_base(spec, Config(name="anything"), tmp_path)  # nothing to check against: accepted
    assert "does not record its base" in caplog.text


def test_a_base_other_than_the_adapters_is_refused_naming_both(
    tiny_adapter: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = copy_run(tiny_adapter, tmp_path / "run", base_name="falcon-7b")
    with pytest.raises(TwinError, match="trained on 'falcon-7b'.*holds 'tiny-falcon'"):
        load_twin(tiny_checkpoint, run)


def test_bad_specs_are_one_error_naming_every_problem(tiny_adapter: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_adapter, tmp_path / "bad", lora_r=0, lora_query="yes", prompt_format="chatml-v9")
    with pytest.raises(TwinError) as error:
        read_adapter_spec(run)
    message = str(error.value)
    assert "lora_r: 0" in message and "lora_query: 'yes'" in message and "'chatml-v9'" in message

    run = copy_run(tiny_adapter, tmp_path / "short", drop=("lora_alpha", "lora_mlp"))
    with pytest.raises(TwinError, match="lacks lora_alpha, lora_mlp"):
        read_adapter_spec(run)
    (run / HPARAMS_FILE).unlink()
    with pytest.raises(TwinError, match=f"{HPARAMS_FILE} is missing"):
        load_adapter(run)
    with pytest.raises(TwinError, match=f"no LoRA adapter at .*{ADAPTER_FILE}"):
        load_adapter(tmp_path)


def test_an_unsupported_family_is_refused_in_one_line_by_every_stage(
    tiny_adapter: Path, prepared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """finetune, serve, export and the report load a base through `load_base_config`: one refusal."""
    from litgpt.utils import save_config

    from finetune.__main__ import main as finetune_main
    from finetune.evaluate import load_lora_model
    from finetune.export import check_inputs
    from serve.service import build_service
    from serve.settings import Settings

    ckpt = tmp_path / "pythia-14m"
    ckpt.mkdir()
    save_config(Config.from_name("pythia-14m"), ckpt)
    for name in ("lit_model.pth", "tokenizer.json"):
        (ckpt / name).write_bytes(b"")
    refusal = rf"pythia-14m is not a supported base .*{re.escape(SUPPORTED)} bases"
    with pytest.raises(UnsupportedBaseError, match=refusal):
        load_base_config(ckpt)

    argv = ["--data", str(prepared_dir), "--checkpoint-dir", str(ckpt), "--out-dir", str(tmp_path / "o")]
    assert finetune_main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(refusal, lines[0])
    settings = Settings(_env_file=None, checkpoint_dir=ckpt, device="cpu")  # type: ignore[call-arg]
    with pytest.raises(UnsupportedBaseError, match=refusal):
        build_service(settings)
    with pytest.raises(UnsupportedBaseError, match=refusal):
        check_inputs(ckpt, tiny_adapter)
    with pytest.raises(UnsupportedBaseError, match=refusal):
        load_lora_model(ckpt, tiny_adapter, torch.device("cpu"), torch.float32)
