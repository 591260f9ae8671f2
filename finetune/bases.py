"""Which base models twin supports, and what kind of base a checkpoint is.

A base's *family* is read from its litgpt `Config`: the block it describes decides, since that is what
fine-tuning, serving's fast path and export have to match. The families and their blocks:

- Falcon: parallel attention + GELU MLP (`GptNeoxMLP`) on a LayerNorm, no biases, full rotary
  (falcon-7b/40b/180B, and the project's tiny-falcon).
- Llama: sequential residual, RMSNorm, SwiGLU MLP (`LLaMAMLP`), grouped-query attention, no biases, full
  rotary (Llama-2, Llama-3.x, SmolLM2, and litgpt's other configs with exactly this block and Llama's
  Hugging Face layout: TinyLlama, CodeLlama, Falcon3, ...). Phi-3/Phi-4 share the block but not the
  layout (Hugging Face fuses their q/k/v and gate/up projections, so a PEFT adapter would not fit): not
  supported.
- Qwen2.5 / Qwen3: the Llama block with q/k/v biases (Qwen2.5) or RMSNorm on queries and keys (Qwen3).
- Mistral: the Llama block (Mistral-7B v0.1 with a sliding window); told apart from Llama by its name.
- Gemma: Gemma's MLP (`GemmaMLP`, GELU-gated) on RMSNorm, scaled embeddings (Gemma, Gemma-2, Gemma-3).

Anything else (mixture-of-experts, GPT-NeoX/Pythia, Phi-2, OLMo, partial rotary, ...) is refused with one
line naming these families. `python -m finetune.bases MODEL` checks a hub id (before `make download`) or a
checkpoint folder.

A checkpoint is an instruct/chat model when it ships a chat template (`chat_template` in its
`tokenizer_config.json`, or a `chat_template.jinja` beside it); `describe_base` records that.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from litgpt.config import Config

from common.cli import run_function
from finetune.errors import UserError


class Family(StrEnum):
    """A supported base family (its value is what gets saved beside an adapter)."""

    FALCON = "falcon"
    LLAMA = "llama"
    QWEN = "qwen"
    MISTRAL = "mistral"
    GEMMA = "gemma"

    @property
    def label(self) -> str:
        return LABELS[self]


LABELS = {
    Family.FALCON: "Falcon",
    Family.LLAMA: "Llama (Llama-2, Llama-3.x, SmolLM2)",
    Family.QWEN: "Qwen2.5/Qwen3",
    Family.MISTRAL: "Mistral",
    Family.GEMMA: "Gemma",
}
SUPPORTED = ", ".join(LABELS[f] for f in list(Family)[:-1]) + f" and {LABELS[Family.GEMMA]}"
MISTRAL_NAMES = ("mistral", "mathstral")  # lowercase prefixes of litgpt's Mistral config names
PHI_NAMES = ("phi",)  # Llama's block in litgpt, but fused q/k/v and gate/up projections on the hub


class UnsupportedBaseError(UserError):
    """A base outside the supported families."""


# --------------------------------------------------------------------------------------------- families
def family_of(config: Config) -> Family | None:
    """The family whose block `config` describes, or None when it is none of them."""
    if any(unusual_parts(config)):
        return None
    if config.mlp_class_name == "GptNeoxMLP":
        is_falcon = config.parallel_residual and config.norm_class_name == "LayerNorm" and not config.bias
        return Family.FALCON if is_falcon else None
    if config.norm_class_name != "RMSNorm" or config.parallel_residual or config.bias:
        return None
    if config.mlp_class_name == "GemmaMLP":
        return Family.GEMMA
    if config.mlp_class_name != "LLaMAMLP" or config.post_attention_norm or config.post_mlp_norm:
        return None
    if config.scale_embeddings or config.attention_logit_softcapping is not None:
        return None
    if config.attn_bias or config.norm_qk:  # Qwen2.5's q/k/v biases, Qwen3's query/key norms
        return Family.QWEN
    if config.name.lower().startswith(MISTRAL_NAMES):
        return Family.MISTRAL
    return Family.LLAMA


def unusual_parts(config: Config) -> list[str]:
    """The parts of `config` that no supported family has."""
    parts = []
    if config.name.lower().startswith(PHI_NAMES):
        parts.append("a Phi model: its Hugging Face layout fuses q/k/v and gate/up")
    if config.mlp_class_name == "LLaMAMoE" or config.n_expert:
        parts.append("a mixture-of-experts MLP")
    if config.rotary_percentage != 1.0:
        parts.append(f"partial rotary embeddings ({config.rotary_percentage:g})")
    if config.latent_attention is not None:
        parts.append("latent attention")
    if config.lm_head_bias:
        parts.append("a bias on the output head")
    return parts


def describe_block(config: Config) -> str:
    """A few words on `config`'s block, for the refusal message."""
    if parts := unusual_parts(config):
        return ", ".join(parts)
    residual = "parallel" if config.parallel_residual else "sequential"
    extras = [" with biases" if config.bias else "", " and post-norms" if config.post_attention_norm else ""]
    return f"{config.mlp_class_name} MLP, {config.norm_class_name}, {residual} residual{''.join(extras)}"


def check_supported(config: Config) -> Family:
    """`config`'s family; raises `UnsupportedBaseError` (one line naming the families) for any other."""
    family = family_of(config)
    if family is None:
        raise UnsupportedBaseError(
            f"{config.name} is not a supported base ({describe_block(config)}): twin fine-tunes and serves "
            f"{SUPPORTED} bases; pick one with `make download MODEL=<hub id>`"
        )
    return family


# ------------------------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class BaseInfo:
    """What kind of base a checkpoint folder holds."""

    name: str
    """litgpt's config name (`model_config.yaml`)."""
    family: Family
    """Its supported family."""
    chat_template: str | None
    """Its chat template (Jinja), or None for a plain (non-instruct) base."""

    @property
    def is_chat(self) -> bool:
        """An instruct/chat model: prompts go through its own chat template."""
        return self.chat_template is not None

    def line(self) -> str:
        kind = (
            "instruct/chat model (has a chat template)" if self.is_chat else "base model (no chat template)"
        )
        return f"{self.name}, {self.family.label} family, {kind}"


def read_chat_template(checkpoint_dir: Path) -> str | None:
    """The checkpoint's chat template: `chat_template` in `tokenizer_config.json` (a string, or a list of
    named templates whose "default" one is used), else the `chat_template.jinja` file; None if neither."""
    config_path = checkpoint_dir / "tokenizer_config.json"
    if config_path.is_file():
        try:
            template: Any = json.loads(config_path.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as e:
            raise UserError(f"{config_path} is not a JSON object: {e}") from None
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template.strip():
            return template
    jinja = checkpoint_dir / "chat_template.jinja"
    if jinja.is_file() and (text := jinja.read_text(encoding="utf-8")).strip():
        return text
    return None


def load_base_config(checkpoint_dir: Path) -> Config:
    path = Path(checkpoint_dir) / "model_config.yaml"
    if not path.is_file():
        raise UserError(f"{checkpoint_dir} is not a litgpt checkpoint (no model_config.yaml)")
    return Config.from_file(path)


def describe_base(checkpoint_dir: str | Path) -> BaseInfo:
    """The family and chat template of the litgpt checkpoint in `checkpoint_dir` (refused if unsupported)."""
    checkpoint_dir = Path(checkpoint_dir)
    config = load_base_config(checkpoint_dir)
    return BaseInfo(config.name, check_supported(config), read_chat_template(checkpoint_dir))


def config_for_model(model: str) -> Config:
    """litgpt's config for a hub id (`tiiuae/falcon-7b`) or config name (`falcon-7b`)."""
    try:
        config = Config.from_name(model)
    except ValueError:
        try:
            config = Config.from_name(model.rsplit("/", 1)[-1])
        except ValueError:
            raise UserError(
                f"litgpt knows no model {model!r}: `.venv/bin/litgpt download list` lists the hub ids it can "
                f"download; twin supports the {SUPPORTED} ones"
            ) from None
    assert config is not None
    return config


# ------------------------------------------------------------------------------------------------- CLI
def main(model: str) -> Family:
    """Check that a base model is one twin supports, and say which family it is.

    Args:
        model: A Hugging Face hub id litgpt can download (tiiuae/falcon-7b, Qwen/Qwen2.5-7B-Instruct) or a
            litgpt checkpoint folder.
    """
    if Path(model).is_dir():
        info = describe_base(model)
        print(f"{model}: {info.line()}")
        return info.family
    family = check_supported(config_for_model(model))
    print(f"{model}: {family.label} family, supported")
    return family


def cli(argv: Sequence[str] | None = None) -> int:
    return run_function(main, argv, prog="python -m finetune.bases", errors=(UserError,))


if __name__ == "__main__":
    sys.exit(cli())
