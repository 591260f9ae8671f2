"""`python -m finetune.export`: exported HF/PEFT models compute what litgpt's LoRA model does."""

from __future__ import annotations

import json
import re
import shutil
import stat
from dataclasses import asdict, replace
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
    checkpoint: Path,
    out: Path,
    r: int = 4,
    alpha: int = 8,
    seed: int = 0,
    scale: float = 0.2,
    **flags: bool,
) -> LoraGPT:
    """A finetune-shaped out-dir (adapter + hyperparameters.yaml) with random, non-zero LoRA tensors
    (standard deviation `scale`).

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
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    out.mkdir(parents=True, exist_ok=True)
    adapter = {k: v for k, v in model.state_dict().items() if lora_filter(k, v)}
    torch.save(adapter, out / "lit_model_lora_finetuned.pth")
    hparams = lora | {"checkpoint_dir": str(checkpoint), "precision": "32-true"}
    (out / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")
    return model.eval()


def tokens(vocab: int, seed: int = 1, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model_dir: Path, idx: torch.Tensor, adapter_dir: Path | None = None) -> torch.Tensor:
    # transformers soft-caps attention scores (Gemma-2) only in its eager attention, for the Hub's own
    # Gemma-2 as well: the export says so, and so load it
    capped = json.loads((model_dir / "config.json").read_text()).get("attn_logit_softcapping")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager" if capped else None
    )
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


LLAMA_WITH_YARN = {
    "mlp_class_name": "LLaMAMLP",
    "norm_class_name": "RMSNorm",
    "parallel_residual": False,
    "rope_adjustments": {"factor": 4.0, "beta_fast": 32, "beta_slow": 1, "original_max_seq_len": 64},
}
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

    # a supported family's checkpoint that transformers' class for it cannot express: refused, naming why
    for name, changes, architecture, why in [
        ("tiny-llama", LLAMA_WITH_YARN, "LlamaForCausalLM", "only Llama-3's and linear scaling"),
        ("tiny-falcon", {"gelu_approximate": "tanh"}, "FalconForCausalLM", "GELU must be exact"),
    ]:
        odd = tmp_path / name
        shutil.copytree(tiny_checkpoint, odd, dirs_exist_ok=True)
        cfg = yaml.safe_load((odd / "model_config.yaml").read_text())
        (odd / "model_config.yaml").write_text(yaml.safe_dump(cfg | {"name": name} | changes))
        assert main(["--checkpoint-dir", str(odd), "--lora-path", str(tmp_path / "run"), "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"no exact Hugging Face {architecture} equivalent" in err and why in err, err
        assert len(err.splitlines()) == 1 and not Path(out).exists()

    # an adapter trained with other settings than its hyperparameters.yaml says
    hp = tmp_path / "run" / "hyperparameters.yaml"
    hp.write_text(hp.read_text().replace("lora_r: 4", "lora_r: 8"))
    assert (
        main(["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tmp_path / "run"), "--out", out])
        == 2
    )
    assert "do not fit r=8" in capsys.readouterr().err


# --------------------------------------------------------------------------------- every family, tiny
# litgpt's own config of each exported architecture, shrunk to 2 layers of width 64 (random weights), with
# what makes it differ from plain Llama kept and made to bite at this size
SHRINK = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_query_groups": 2, "head_size": 16,
          "intermediate_size": 96, "vocab_size": 512, "padded_vocab_size": 512, "block_size": 64,
          "hf_config": {}}  # fmt: skip
WINDOWS = {"sliding_window_size": 4, "sliding_window_indices": [1, 0]}
FAMILY_BASES: dict[str, tuple[str, dict, bool]] = {  # id: (litgpt config, its changes, tied embeddings)
    "llama-3.1 llama3-rope": (
        "Llama-3.1-8B",
        {
            "rope_adjustments": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_seq_len": 32,
            }
        },
        False,
    ),  # fmt: skip
    "smollm2 tied": ("SmolLM2-135M-Instruct", {}, True),
    "llama-2-32k condensed-rope": ("LLaMA-2-7B-32K", {}, False),
    "mistral-v0.1 sliding-window": ("Mistral-7B-v0.1", WINDOWS | {"sliding_window_indices": [1, 1]}, False),
    "qwen2.5 qkv-bias": ("Qwen2.5-0.5B", {}, True),
    "qwen3 qk-norm head-dim-24": ("Qwen3-0.6B", {"head_size": 24}, False),
    "gemma multi-query": ("Gemma-2b", {"n_query_groups": 1}, True),
    "gemma-2 softcap windows": (
        "Gemma-2-2b",
        WINDOWS
        | {"attention_logit_softcapping": 2.0, "final_logit_softcapping": 1.5, "attention_scores_scalar": 12},
        True,
    ),  # fmt: skip
    "gemma-3 local-rope linear-scaling": ("Gemma-3-4b-it", WINDOWS | {"rope_indices": [1, 0]}, True),
}


def family_checkpoint(tiny: Path, out: Path, name: str, changes: dict, tied: bool) -> Path:
    """A tiny random litgpt checkpoint of `name`'s architecture, with the tiny checkpoint's tokenizer."""
    config = Config.from_name(name, **(SHRINK | changes))
    torch.manual_seed(7)
    model = GPT(config)
    model.apply(model._init_weights)
    with torch.no_grad():
        for p in model.parameters():  # norms and biases off their defaults too, so each must map right
            p.add_(torch.randn_like(p) * 0.05)
    if tied:  # one tensor, saved once, as litgpt's converter saves a tied checkpoint
        model.lm_head.weight = model.transformer.wte.weight
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "lit_model.pth")
    (out / "model_config.yaml").write_text(yaml.safe_dump(asdict(config)), encoding="utf-8")
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / file, out / file)
    return out


FAMILY_CASES = [pytest.param(key, FLAG_SETS["everything"], id=f"{key}, everything") for key in FAMILY_BASES]
FAMILY_CASES += [
    pytest.param("smollm2 tied", FLAG_SETS["key only + mlp"], id="smollm2 tied, key only + mlp"),
    pytest.param("qwen2.5 qkv-bias", FLAG_SETS["default q+v"], id="qwen2.5 qkv-bias, default q+v"),
]


@pytest.mark.parametrize("family,flags", FAMILY_CASES)
def test_every_family_exports_to_transformers_and_peft(
    tiny_checkpoint: Path, tmp_path: Path, family: str, flags: dict[str, bool]
) -> None:
    name, changes, tied = FAMILY_BASES[family]
    ckpt = family_checkpoint(tiny_checkpoint, tmp_path / "ckpt", name, changes, tied)
    reference = make_adapter(ckpt, tmp_path / "run", scale=0.1, **flags)
    idx = tokens(reference.config.padded_vocab_size, seed=2, length=12)  # longer than the windows (4)
    with torch.no_grad():
        expected = reference(idx)  # litgpt's LoRA model, unmerged
        base = GPT(Config.from_file(ckpt / "model_config.yaml"))
        base.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True))
        base_logits = base.eval()(idx)
    assert (expected - base_logits).abs().max() > 1e-2

    run = str(tmp_path / "run")
    assert main(["--checkpoint-dir", str(ckpt), "--lora-path", run, "--out", str(tmp_path / "merged")]) == 0
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == (tied and not flags.get("lora_head", False))
    torch.testing.assert_close(hf_logits(tmp_path / "merged", idx), expected, atol=1e-4, rtol=1e-4)

    peft_dir = tmp_path / "peft"
    assert main(["--checkpoint-dir", str(ckpt), "--lora-path", run, "--out", str(peft_dir), "--format",
                 "peft"]) == 0  # fmt: skip
    torch.testing.assert_close(hf_logits(peft_dir / "base", idx), base_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf_logits(peft_dir / "base", idx, peft_dir), expected, atol=1e-4, rtol=1e-4)
    adapter_config = json.loads((peft_dir / "adapter_config.json").read_text())
    hf_names = {"lora_query": "q_proj", "lora_key": "k_proj", "lora_value": "v_proj",
                "lora_projection": "o_proj", "lora_head": "lm_head"}  # fmt: skip
    wanted = {hf_names[f] for f in hf_names if flags.get(f)}
    wanted |= {"gate_proj", "up_proj", "down_proj"} if flags.get("lora_mlp") else set()
    assert set(adapter_config["target_modules"]) == wanted
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8)  # per projection: litgpt's own


def test_peft_refuses_what_one_lora_per_module_cannot_express(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Phi-3's Hugging Face layout fuses gate and up into gate_up_proj: litgpt's two MLP LoRAs would both
    land on it, which a PEFT adapter cannot say (the refusal guards any such layout)."""
    from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama

    from finetune.errors import UserError
    from finetune.export import check_inputs, peft_tensors
    from finetune.hf_export import Arch, HFLayout

    name, changes, tied = FAMILY_BASES["smollm2 tied"]
    ckpt = family_checkpoint(tiny_checkpoint, tmp_path / "ckpt", name, changes, tied)
    make_adapter(ckpt, tmp_path / "run", lora_query=True, lora_mlp=True)
    inputs = check_inputs(ckpt, tmp_path / "run")
    assert "model.layers.1.mlp.up_proj.lora_B.weight" in "".join(peft_tensors(inputs)[0])

    def fused_gate_up(config: Config, hf: dict[str, torch.Tensor], lit: dict[str, torch.Tensor]) -> None:
        copy_weights_llama(config, hf, lit)
        for key in [k for k in hf if re.search(r"\.(gate|up)_proj\.", k)]:
            hf[re.sub(r"(gate|up)_proj", "gate_up_proj", key)] = hf.pop(key)

    phi_like = replace(inputs, layout=HFLayout(Arch.LLAMA, "Phi3ForCausalLM", "Phi3Config", fused_gate_up))
    with pytest.raises(
        UserError, match=r"both become model\.layers\.0\.mlp\.gate_up_proj in Phi3ForCausalLM"
    ):
        peft_tensors(phi_like)


def test_peft_base_is_the_hub_repo_only_when_it_holds_these_weights(tmp_path: Path) -> None:
    from finetune.hf_export import hub_model_id

    assert hub_model_id(Config.from_name("Qwen2.5-0.5B-Instruct"), tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_model_id(Config.from_name("Gemma-3-1b-it"), tmp_path) == "google/gemma-3-1b-it"
    assert hub_model_id(Config.from_name("Gemma-3-4b-it"), tmp_path) is None  # an image+text repo
    (tmp_path / "source.json").write_text("{}")  # finetune.embedded's: dequantized from a GGUF
    assert hub_model_id(Config.from_name("SmolLM2-135M-Instruct"), tmp_path) is None


# --------------------------------------------------------------------------------- the real checkpoint
@pytest.mark.slow
def test_smollm2_export_round_trip_matches_logits(smollm2_checkpoint: Path, tmp_path: Path) -> None:
    """The embedded SmolLM2-135M-Instruct as a chat-template twin with a random non-zero LoRA on every
    layer kind: the merged export, the exported base and the PEFT adapter over it compute litgpt's logits
    for a chat prompt rendered by the exported tokenizer, in float32."""
    from finetune.evaluate import lora_off
    from finetune.twin import HPARAMS_FILE, AdapterSpec, LoraArgs, choose_prompter, save_adapter_spec_files

    flags = FLAG_SETS["everything"]
    run = tmp_path / "run"
    reference = make_adapter(smollm2_checkpoint, run, r=8, alpha=16, scale=0.02, **flags)
    prompter = choose_prompter(smollm2_checkpoint)  # an instruct base: the twin learns its chat template
    lora = LoraArgs(lora_r=8, lora_alpha=16, lora_dropout=0.0, **flags)
    spec = AdapterSpec(lora, reference.config.name, "llama", prompter.format, prompter.template)
    hparams = yaml.safe_load((run / HPARAMS_FILE).read_text()) | spec.hparams()
    (run / HPARAMS_FILE).write_text(yaml.safe_dump(hparams))
    save_adapter_spec_files(run, spec)

    merged = tmp_path / "merged"
    assert (
        main(["--checkpoint-dir", str(smollm2_checkpoint), "--lora-path", str(run), "--out", str(merged)])
        == 0
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(merged)
    assert prompter.template is not None and tokenizer.chat_template == prompter.template.source
    messages = [{"role": "user", "content": "Hey, are you free on Friday evening?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    idx = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])  # (1, T)
    with torch.no_grad():
        expected = reference(idx)  # (1, T, vocab): litgpt's LoRA model, unmerged
        with lora_off(reference):
            base_logits = reference(idx)
    assert (expected - base_logits).abs().max() > 1e-2

    got = hf_logits(merged, idx)
    print(f"merged: max |Δlogit| {(got - expected).abs().max():.2e} (max |logit| {expected.abs().max():.1f})")
    # float32 rounding through 30 layers, summed in another order (measured: 8e-5 to 1.1e-4 on logits up
    # to ~30, with the threads this machine gives torch); the adapter moves them by more than 1e-2
    torch.testing.assert_close(got, expected, atol=3e-4, rtol=1e-5)
    assert got[0, -1].argmax() == expected[0, -1].argmax()
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and not config["tie_word_embeddings"]

    adapter = tmp_path / "peft"
    assert main(["--checkpoint-dir", str(smollm2_checkpoint), "--lora-path", str(run), "--out", str(adapter),
                 "--format", "peft"]) == 0  # fmt: skip
    # dequantized from a 4-bit GGUF, so not the Hub's weights: the adapter's base is exported beside it
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        (adapter / "base").resolve()
    )
    got_base = hf_logits(adapter / "base", idx)
    got_peft = hf_logits(adapter / "base", idx, adapter)
    print(f"base: {(got_base - base_logits).abs().max():.2e}, peft: {(got_peft - expected).abs().max():.2e}")
    torch.testing.assert_close(got_base, base_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_peft, expected, atol=1e-4, rtol=1e-5)
    assert json.loads((adapter / "base" / "config.json").read_text())["tie_word_embeddings"]
