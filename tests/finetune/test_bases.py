"""finetune.bases: the supported families from litgpt's own configs (no weights), the refusal, chat models."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from litgpt.config import Config, configs

from finetune.bases import (
    SUPPORTED,
    Family,
    UnsupportedBaseError,
    check_supported,
    cli,
    describe_base,
    family_of,
    read_chat_template,
)
from finetune.errors import UserError
from finetune.tiny import tiny_config

FAMILY_MEMBERS = {
    Family.FALCON: ["falcon-7b", "falcon-7b-instruct", "falcon-40b", "falcon-180B-chat"],
    Family.LLAMA: [
        "Llama-2-7b-hf",
        "Llama-2-13b-chat-hf",
        "Llama-3-8B-Instruct",
        "Llama-3.1-8B",
        "Llama-3.2-1B-Instruct",
        "Llama-3.3-70B-Instruct",
        "SmolLM2-135M-Instruct",
        "SmolLM2-1.7B",
    ],
    Family.QWEN: ["Qwen2.5-0.5B", "Qwen2.5-7B-Instruct", "Qwen2.5-Coder-7B", "Qwen3-0.6B-Base", "Qwen3-8B"],
    Family.MISTRAL: ["Mistral-7B-v0.1", "Mistral-7B-Instruct-v0.3", "Mathstral-7B-v0.1"],
    Family.GEMMA: ["Gemma-2b", "Gemma-7b-it", "Gemma-2-9b-it", "Gemma-3-1b-it", "Gemma-3-27b-it"],
}
UNSUPPORTED = [
    "Mixtral-8x7B-v0.1",  # mixture of experts
    "Qwen3-30B-A3B",  # Qwen3's mixture of experts
    "pythia-160m",  # GPT-NeoX: biases, partial rotary
    "phi-2",
    "Phi-3.5-mini-instruct",  # Llama's block in litgpt, fused projections on the hub
    "phi-4",
    "OLMo-2-1124-7B",  # post-norms
    "stablelm-3b-4e1t",  # LayerNorm, partial rotary
]


@pytest.mark.parametrize(
    ("name", "family"), [(name, family) for family, names in FAMILY_MEMBERS.items() for name in names]
)
def test_family_of_litgpt_configs(name: str, family: Family) -> None:
    config = Config.from_name(name)
    assert config is not None
    assert family_of(config) is family
    assert check_supported(config) is family


def test_every_litgpt_config_of_a_named_family_is_supported() -> None:
    """A sweep of litgpt's whole list: the names the issue promises all map to their family."""
    prefixes = {
        "falcon-": Family.FALCON,
        "Llama-2-": Family.LLAMA,
        "Llama-3": Family.LLAMA,
        "SmolLM2-": Family.LLAMA,
        "Qwen2.5-": Family.QWEN,
        "Qwen3-": Family.QWEN,
        "Mistral-": Family.MISTRAL,
        "Gemma-": Family.GEMMA,
    }
    checked = 0
    for entry in configs:
        name = entry["name"]
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None or "-A3B" in name or "-A22B" in name:  # Qwen3's mixtures of experts: refused
            continue
        assert family_of(Config(**entry)) is prefixes[prefix], name
        checked += 1
    assert checked > 60


def test_the_tiny_falcon_is_a_falcon() -> None:
    config = tiny_config(vocab_size=512, n_layer=2, n_embd=64, n_head=4, block_size=256)
    assert family_of(config) is Family.FALCON


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_base_is_refused_in_one_line_naming_the_families(name: str) -> None:
    config = Config.from_name(name)
    assert config is not None
    assert family_of(config) is None
    with pytest.raises(UnsupportedBaseError) as caught:
        check_supported(config)
    message = str(caught.value)
    assert "\n" not in message
    assert name in message and SUPPORTED in message
    for label in ("Falcon", "Llama", "Qwen2.5/Qwen3", "Mistral", "Gemma"):
        assert label in message


def test_supported_names_every_family() -> None:
    assert SUPPORTED == "Falcon, Llama (Llama-2, Llama-3.x, SmolLM2), Qwen2.5/Qwen3, Mistral and Gemma"


# ---------------------------------------------------------------------------------- chat templates
def write_checkpoint(folder: Path, name: str, tokenizer_config: dict | None = None) -> Path:
    folder.mkdir()
    config = Config.from_name(name)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(asdict(config)))
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def test_instruct_checkpoint_has_its_chat_template(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
    folder = write_checkpoint(tmp_path / "qwen", "Qwen2.5-0.5B-Instruct", {"chat_template": template})
    info = describe_base(folder)
    assert info.family is Family.QWEN and info.name == "Qwen2.5-0.5B-Instruct"
    assert info.is_chat and info.chat_template == template
    assert "instruct/chat model" in info.line()


def test_base_checkpoint_has_no_chat_template(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "falcon", "falcon-7b", {"eos_token": "<|endoftext|>"})
    info = describe_base(folder)
    assert info.family is Family.FALCON and not info.is_chat and info.chat_template is None
    assert read_chat_template(write_checkpoint(tmp_path / "bare", "falcon-7b")) is None


def test_chat_template_from_a_named_list_or_a_jinja_file(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    folder = write_checkpoint(tmp_path / "a", "Mistral-7B-v0.3", {"chat_template": named})
    assert read_chat_template(folder) == "D"
    folder = write_checkpoint(tmp_path / "b", "Llama-3.1-8B-Instruct", {"eos_token": "<|eot_id|>"})
    (folder / "chat_template.jinja").write_text("J")
    assert read_chat_template(folder) == "J"


def test_describe_base_refuses_unsupported_and_non_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedBaseError, match="Mixtral-8x7B-v0.1 is not a supported base"):
        describe_base(write_checkpoint(tmp_path / "moe", "Mixtral-8x7B-v0.1"))
    with pytest.raises(UserError, match="not a litgpt checkpoint"):
        describe_base(tmp_path)


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_checks_a_hub_id_before_download(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tiiuae/falcon-7b"]) == 0
    assert "Falcon family, supported" in capsys.readouterr().out
    assert cli(["meta-llama/Llama-3.1-8B-Instruct"]) == 0
    assert "Llama (Llama-2, Llama-3.x, SmolLM2) family" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["EleutherAI/pythia-160m", "nobody/no-such-model"])
def test_cli_refuses_in_one_line(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and SUPPORTED in err
