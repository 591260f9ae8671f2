"""`python -m finetune.export`: exported HF/PEFT models compute what litgpt's LoRA model does."""

from __future__ import annotations

import json
import shutil
import stat
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from litgpt.config import Config
from litgpt.lora import GPT as LoraGPT
from litgpt.lora import Config as LoraConfig
from litgpt.lora import lora_filter
from litgpt.model import GPT

from finetune.export import main

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

LORA_FLAGS = ("lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp", "lora_head")


def make_adapter(
    checkpoint: Path, out: Path, r: int = 4, alpha: int = 8, seed: int = 0, **flags: bool
) -> LoraGPT:
    """A finetune-shaped out-dir (adapter + hyperparameters.yaml) with random, non-zero LoRA tensors.

    Returns litgpt's LoRA model with those tensors, the reference the export must reproduce.
    """
    lora = {"lora_r": r, "lora_alpha": alpha, "lora_dropout": 0.0} | {
        f: flags.get(f, False) for f in LORA_FLAGS
    }
    config = LoraConfig.from_file(checkpoint / "model_config.yaml", **lora)
    model = LoraGPT(config)
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True), strict=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # B starts at zero in training; make both matter here
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    out.mkdir(parents=True, exist_ok=True)
    adapter = {k: v for k, v in model.state_dict().items() if lora_filter(k, v)}
    torch.save(adapter, out / "lit_model_lora_finetuned.pth")
    hparams = lora | {"checkpoint_dir": str(checkpoint), "precision": "32-true"}
    (out / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")
    return model.eval()


def tokens(vocab: int, seed: int = 1, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model_dir: Path, idx: torch.Tensor, adapter_dir: Path | None = None) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    with torch.no_grad():
        return model(input_ids=idx).logits


def variant_checkpoint(tiny: Path, out: Path, n_query_groups: int, shared_attention_norm: bool) -> Path:
    """The tiny checkpoint's shape with grouped-query attention and/or Falcon-40B's two norms."""
    config = Config.from_file(tiny / "model_config.yaml")
    config = Config(**{**asdict(config), "n_query_groups": n_query_groups,
                       "shared_attention_norm": shared_attention_norm})  # fmt: skip
    torch.manual_seed(3)
    model = GPT(config)
    model.apply(model._init_weights)
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "lit_model.pth")
    (out / "model_config.yaml").write_text(yaml.safe_dump(asdict(config)), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / name, out / name)
    return out


FLAG_SETS = {
    "default q+v": {"lora_query": True, "lora_value": True},
    "everything": {f: True for f in LORA_FLAGS},
    "key only + mlp": {"lora_key": True, "lora_mlp": True},
    "projection + head, no qkv": {"lora_projection": True, "lora_head": True},
}


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_merged_and_peft_exports_match_litgpt(
    tiny_checkpoint: Path, tmp_path: Path, flags: dict[str, bool]
) -> None:
    reference = make_adapter(tiny_checkpoint, tmp_path / "run", **flags)
    idx = tokens(reference.config.vocab_size)
    with torch.no_grad():
        expected = reference(idx)  # (B, T, padded vocab): litgpt's LoRA model, unmerged
        base = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
        base.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True))
        base_logits = base.eval()(idx)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter changes the model noticeably

    assert main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tmp_path / "run"),
                 "--out", str(tmp_path / "merged")]) == 0  # fmt: skip
    merged = tmp_path / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in merged.iterdir()
    }
    torch.testing.assert_close(hf_logits(merged, idx), expected, atol=1e-4, rtol=1e-4)

    adapter_file = tmp_path / "run" / "lit_model_lora_finetuned.pth"  # the file works as well as its folder
    assert main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(adapter_file), "--out",
                 str(tmp_path / "peft"), "--format", "peft"]) == 0  # fmt: skip
    adapter_dir = tmp_path / "peft"
    torch.testing.assert_close(hf_logits(adapter_dir / "base", idx), base_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        hf_logits(adapter_dir / "base", idx, adapter_dir), expected, atol=1e-4, rtol=1e-4
    )
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] / cfg["r"] == 8 / 4  # the scaling survives the rank change
    # the twin is private data: everything written is owner-only
    for path in [merged, adapter_dir, *merged.iterdir(), *adapter_dir.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.parametrize("groups,shared_norm", [(2, False), (4, True), (1, False)])
def test_grouped_query_and_two_norm_layouts(
    tiny_checkpoint: Path, tmp_path: Path, groups: int, shared_norm: bool
) -> None:
    ckpt = variant_checkpoint(tiny_checkpoint, tmp_path / "ckpt", groups, shared_norm)
    reference = make_adapter(ckpt, tmp_path / "run", lora_query=True, lora_key=True, lora_value=False)
    idx = tokens(reference.config.vocab_size, seed=5)
    with torch.no_grad():
        expected = reference(idx)
    assert main(["--checkpoint-dir", str(ckpt), "--lora-path", str(tmp_path / "run"), "--out",
                 str(tmp_path / "merged")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["new_decoder_architecture"]
    torch.testing.assert_close(hf_logits(tmp_path / "merged", idx), expected, atol=1e-4, rtol=1e-4)
    assert main(["--checkpoint-dir", str(ckpt), "--lora-path", str(tmp_path / "run"), "--out",
                 str(tmp_path / "peft"), "--format", "peft"]) == 0  # fmt: skip
    got = hf_logits(tmp_path / "peft" / "base", idx, tmp_path / "peft")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_export_and_falcon7b_hub_base(tiny_checkpoint: Path, tmp_path: Path) -> None:
    make_adapter(tiny_checkpoint, tmp_path / "run", lora_query=True, lora_value=True)
    assert main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tmp_path / "run"), "--out",
                 str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0  # fmt: skip
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"

    # a checkpoint that litgpt knows from the Hub gets the Hub name as its PEFT base, and no copy of it
    hub = tmp_path / "hub"
    shutil.copytree(tiny_checkpoint, hub)
    cfg = yaml.safe_load((hub / "model_config.yaml").read_text())
    cfg["hf_config"] = {"org": "tiiuae", "name": "falcon-7b"}
    (hub / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--checkpoint-dir", str(hub), "--lora-path", str(tmp_path / "run"), "--out",
                 str(tmp_path / "peft"), "--format", "peft"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "tiiuae/falcon-7b"
    )
    assert not (tmp_path / "peft" / "base").exists()


def test_user_errors_are_one_clear_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_adapter(tiny_checkpoint, tmp_path / "run", lora_query=True, lora_value=True)
    out = str(tmp_path / "x")

    assert (
        main(["--checkpoint-dir", str(tmp_path / "nope"), "--lora-path", str(tmp_path / "run"), "--out", out])
        == 2
    )
    assert "make download" in capsys.readouterr().err

    assert main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tmp_path), "--out", out]) == 2
    assert "lit_model_lora_finetuned.pth" in capsys.readouterr().err

    # a llama-shaped checkpoint (a supported family) has no HF Falcon equivalent: refused, naming why
    llama = tmp_path / "llama"
    shutil.copytree(tiny_checkpoint, llama)
    cfg = yaml.safe_load((llama / "model_config.yaml").read_text())
    cfg.update(
        mlp_class_name="LLaMAMLP", norm_class_name="RMSNorm", name="tiny-llama", parallel_residual=False
    )
    (llama / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--checkpoint-dir", str(llama), "--lora-path", str(tmp_path / "run"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "no exact Hugging Face Falcon equivalent" in err and "GptNeoxMLP" in err and "Traceback" not in err

    # an adapter trained with other settings than its hyperparameters.yaml says
    hp = tmp_path / "run" / "hyperparameters.yaml"
    hp.write_text(hp.read_text().replace("lora_r: 4", "lora_r: 8"))
    assert (
        main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tmp_path / "run"), "--out", out])
        == 2
    )
    assert "do not fit r=8" in capsys.readouterr().err
