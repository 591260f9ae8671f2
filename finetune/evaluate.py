"""Score and sample the twin and its base with litgpt: held-out reply perplexity and generated replies.

One litgpt LoRA model serves both: with every LoRA scaling set to zero it *is* the base model (exactly),
so the base is measured first; then the scalings are restored and the LoRA merged into the weights for
the twin. Generation is litgpt's KV-cache generation on the same prompt (text and token ids) the server
builds, in the adapter's prompt format, ending where the server ends a reply (`finetune.twin.stop_token_ids`
and the format's stop strings).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from litgpt.generate.base import generate_fn
from litgpt.lora import GPT, LoRALinear, merge_lora_weights
from litgpt.tokenizer import Tokenizer
from torch.nn import functional as F
from tqdm import tqdm

from finetune.data import IGNORE_INDEX, Example
from finetune.errors import UserError
from finetune.twin import (
    TwinError,
    encode_prompt,
    load_base_weights,
    load_tokenizer,
    load_twin,
    lora_config,
    one_line,
    stop_token_ids,
)
from prepare.prompt import Prompter


@dataclass(frozen=True, slots=True)
class Perplexity:
    """Mean negative log-likelihood of the reply tokens (and the EOS after each reply)."""

    nll: float
    tokens: int

    @property
    def value(self) -> float:
        return float(torch.tensor(self.nll).exp())


def load_lora_model(
    checkpoint_dir: Path, lora_path: Path, device: torch.device, dtype: torch.dtype
) -> tuple[GPT, Tokenizer]:
    """litgpt's LoRA GPT with the base weights and the adapter loaded, unmerged, in eval mode."""
    base_config, adapter = load_twin(checkpoint_dir, lora_path)
    config = lora_config(base_config, adapter.spec)
    with torch.device("meta"):
        model = GPT(config)
    state = {**load_base_weights(checkpoint_dir, base_config), **adapter.tensors}
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise TwinError(
            f"the adapter {adapter.path} does not fit {checkpoint_dir}: {one_line(e)}; pass the checkpoint "
            "it was trained on as --checkpoint-dir"
        ) from None
    model.cos, model.sin = model.rope_cache(device=device)  # built on the meta device above
    model.max_seq_length = config.block_size
    return model.eval(), load_tokenizer(checkpoint_dir)


@contextlib.contextmanager
def lora_off(model: GPT) -> Iterator[None]:
    """The base model: every LoRA update scaled by zero (the LoRA must not be merged yet)."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and hasattr(m, "scaling")]
    if any(m.merged for m in layers):
        raise RuntimeError("LoRA already merged: measure the base first")
    saved = [m.scaling for m in layers]
    for m in layers:
        m.scaling = 0.0
    try:
        yield
    finally:
        for m, s in zip(layers, saved, strict=True):
            m.scaling = s


def merge(model: GPT) -> None:
    """Fold the LoRA into the weights: the twin, as fast as the base."""
    model.clear_kv_cache()
    merge_lora_weights(model)


@torch.inference_mode()
def reply_perplexity(
    model: GPT, examples: Sequence[Example], batch_tokens: int = 4096, desc: str = ""
) -> Perplexity:
    """Perplexity over the reply tokens of `examples` (prompt tokens carry no loss, as in training)."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    batches: list[list[int]] = []
    for i in order:  # length-sorted, so padding stays small
        if batches and (len(batches[-1]) + 1) * len(examples[i]) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    nll, tokens = 0.0, 0
    for batch in tqdm(batches, desc=desc or "perplexity", unit="batch", leave=False):
        length = max(len(examples[i]) for i in batch)
        x = torch.zeros(len(batch), length, dtype=torch.long)
        y = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(batch):
            ex = examples[i]
            x[row, : len(ex)] = ex.input_ids
            y[row, : len(ex) - 1] = ex.labels[1:]  # position t predicts token t + 1
        logits = model(x.to(device))  # (B, T, vocab)
        target = y.to(device)
        nll += F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="sum").item()
        tokens += int((target != IGNORE_INDEX).sum())
    if tokens == 0:
        raise UserError("the validation records have no reply tokens to score")
    return Perplexity(nll / tokens, tokens)


@torch.inference_mode()
def sample_reply(
    model: GPT,
    tokenizer: Tokenizer,
    prompter: Prompter,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float = 1.0,
) -> str:
    """One sampled reply to a rendered `prompt`, ended as the server ends it: at a stop token (EOS, the
    chat template's end-of-turn marker) or a stop string (twin-v1's next `###` heading). The model's KV
    cache must hold `max_new_tokens` more than the prompt (its newest tokens are kept if it is too long)."""
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompter, prompt)[-(model.max_seq_length - max_new_tokens) :]
    stops = stop_token_ids(tokenizer, prompter)
    out = list(
        generate_fn(
            model,
            torch.tensor(ids, device=device),
            len(ids) + max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=tuple([i] for i in stops),
            include_prompt=False,
            include_eos=False,
        )
    )
    text = tokenizer.decode(torch.cat(out)) if out else ""
    for stop in prompter.stop_strings:
        text = text.split(stop, 1)[0]
    return text.strip()


@torch.inference_mode()
def generate_replies(
    model: GPT,
    tokenizer: Tokenizer,
    prompter: Prompter,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 42,
    desc: str = "",
) -> list[str]:
    """One sampled reply per prompt (sample i is seeded with seed + i, so base and twin draw alike)."""
    device = next(model.parameters()).device
    max_new_tokens = min(max_new_tokens, model.config.block_size // 2)
    model.set_kv_cache(batch_size=1, device=device)
    replies = []
    for i, prompt in enumerate(tqdm(prompts, desc=desc or "generating", unit="reply", leave=False)):
        torch.manual_seed(seed + i)
        replies.append(
            sample_reply(model, tokenizer, prompter, prompt, max_new_tokens, temperature, top_p=top_p)
        )
    model.clear_kv_cache()
    return replies
