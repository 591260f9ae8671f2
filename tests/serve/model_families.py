"""Tiny random models of the families serve decodes, and the check that ours decodes what litgpt decodes.

Each family is litgpt's own config of a real model (its block kind, norm, MLP, attention grouping, RoPE
settings, biases) with toy sizes; weights are random, norms included, so a dropped bias, a swapped
gate/up or a missing norm offset shows.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from litgpt.config import Config
from litgpt.generate.base import generate
from litgpt.model import GPT

from serve.engine import Engine, EngineConfig, GenerationRequest
from serve.generate import decode_logits, prefill, setup_caches

VOCAB = 300
SMALL = {"n_layer": 2, "vocab_size": VOCAB, "padded_vocab_size": 320, "block_size": 128}

# name → (litgpt config it is cut from, toy sizes); n_head / n_query_groups keep the family's grouping kind
FAMILIES: dict[str, tuple[str, dict[str, int]]] = {
    "smollm2": ("SmolLM2-135M-Instruct", {"n_embd": 72, "n_head": 6, "n_query_groups": 2, "head_size": 16}),
    "llama-3.1": ("Llama-3.1-8B", {"n_embd": 64, "n_head": 8, "n_query_groups": 2, "head_size": 16}),
    "llama-2": ("Llama-2-7b-hf", {"n_embd": 64, "n_head": 4, "n_query_groups": 4, "head_size": 16}),
    "qwen2.5": ("Qwen2.5-7B-Instruct", {"n_embd": 64, "n_head": 6, "n_query_groups": 2, "head_size": 16}),
    "qwen3": ("Qwen3-8B", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "head_size": 32}),
    "mistral": (
        "Mistral-7B-Instruct-v0.3",
        {"n_embd": 64, "n_head": 8, "n_query_groups": 2, "head_size": 16},
    ),
    "gemma": ("gemma-2b", {"n_embd": 64, "n_head": 4, "n_query_groups": 1, "head_size": 32}),
    "gemma-2": ("gemma-2-2b", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "head_size": 32}),
    "falcon": ("falcon-7b", {"n_embd": 64, "n_head": 4, "n_query_groups": 1, "head_size": 16}),
}
FUSED_FAMILIES = [name for name in FAMILIES if name != "gemma-2"]
"""Families whose blocks `fuse_blocks` fuses; Gemma 2's (norms after attention and MLP) stay litgpt's."""


def family_config(name: str, **overrides: Any) -> Config:
    base, sizes = FAMILIES[name]
    config = Config.from_name(base, **{**SMALL, **sizes, "intermediate_size": 96, **overrides})
    config.name = f"{config.name}-tiny"  # litgpt reads some settings off the name (Gemma's norm offset)
    return config


@torch.no_grad()
def random_family_model(
    name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any
) -> GPT:
    """litgpt's GPT of the family, random weights: matrices N(0, 0.05), biases N(0, 0.1), norm weights
    near 1 (near 0 for Gemma's unit-offset norms)."""
    torch.manual_seed(seed)
    config = family_config(name, **overrides)
    model = GPT(config)
    for param_name, param in model.named_parameters():
        if "norm" in param_name or "ln_f" in param_name:
            offset = 0.0 if "Gemma" in config.name else 1.0
            param.copy_(offset + 0.1 * torch.randn_like(param))
        elif param_name.endswith(".bias"):
            param.normal_(0.0, 0.1)
        else:
            param.normal_(0.0, 0.05)
    return model.to(dtype).eval()


def check_decodes_like_litgpt(
    reference: GPT,
    build: Callable[[GPT], None],
    close: Callable[[torch.Tensor, torch.Tensor], None],
    steps: int = 4,
) -> GPT:
    """Ours — a copy of `reference` made by `build` (fusing, kernels), slot caches of 3 — against litgpt's
    own KV-cache decoding of one request: the prompt's last logits, then `steps` decode steps with the
    request prefilled into slots 0 and 2 and decoded three at a time (slot 1 elsewhere) and alone.

    With attention soft-capping (Gemma 2) litgpt's KV-cache path masks nothing (it adds a boolean mask
    to the scores), so there the reference is litgpt's forward over the whole sequence, without a cache.
    """
    ours = copy.deepcopy(reference)
    build(ours)
    vocab = reference.config.vocab_size
    use_cache = reference.config.attention_logit_softcapping is None
    if use_cache:
        reference.set_kv_cache(batch_size=1, max_seq_length=40)
    setup_caches(ours, 3, 40)
    prompt = torch.randint(0, vocab, (9,), generator=torch.Generator().manual_seed(1))
    seen: list[int] = []  # the request's tokens so far

    def expected_logits(new: list[int]) -> torch.Tensor:
        positions = torch.arange(len(seen), len(seen) + len(new))
        seen.extend(new)
        if use_cache:
            return reference(torch.tensor([new]), positions)[0, -1, :vocab]
        return reference(torch.tensor([seen]))[0, -1, :vocab]

    with torch.no_grad():
        expected = expected_logits(prompt.tolist())
        for slot in (0, 2):
            close(_prefill_logits(ours, prompt, slot), expected)
        for position in range(9, 9 + steps):
            token = (7 * position) % vocab
            expected = expected_logits([token])
            tokens = torch.tensor([[token], [2], [token]])
            positions = torch.tensor([[position], [0], [position]])
            three = decode_logits(ours, tokens, positions)  # batch 3: torch matmuls
            close(three[0], expected)
            close(three[2], expected)
            one = decode_logits(ours, tokens[:1], positions[:1])[0]  # batch 1 (slot 0): the GEMVs
            close(one, expected)
    return ours


def _prefill_logits(model: GPT, prompt: torch.Tensor, slot: int) -> torch.Tensor:
    """The last prompt token's logits as `prefill` computes them (it returns only the sampled token)."""
    captured: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out))  # (1, T, V)
    try:
        ones = torch.ones(1)
        prefill(model, prompt, slot, ones, ones)
    finally:
        handle.remove()
    return captured[-1][0, -1, : model.config.vocab_size]


ENGINE_PROMPTS = [[5, 17, 99, 3, 250], list(range(40, 61)), [200, 2]]
"""Prompts `engine_greedy_tokens` decodes: the first two together (batch bucket 2), the third alone."""


def engine_greedy_tokens(
    reference: GPT, n: int, compile: bool, device: torch.device | str = "cpu"
) -> tuple[list[list[int]], Engine]:
    """Greedy tokens of the serve engine over a copy of `reference` (moved to `device`) for each of
    `ENGINE_PROMPTS`: two requests decoded together (batch bucket 2), a third alone (bucket 1). Returns
    the stopped engine too, for its stats."""
    engine = Engine(
        lambda: copy.deepcopy(reference).to(device),
        EngineConfig(max_batch_size=2, max_seq_length=64, warmup_prompt_tokens=16, compile=compile),
    )
    engine.start()
    try:
        if not engine.wait_ready(600):
            raise RuntimeError(f"the engine did not start: {engine.load_error}")

        async def drain(prompt: list[int]) -> list[int]:
            seq = engine.submit(GenerationRequest(prompt, n, temperature=0.0, ignore_eos=True))
            return [t async for chunk in seq.tokens() for t in chunk]

        async def run() -> list[list[int]]:
            together = await asyncio.gather(drain(ENGINE_PROMPTS[0]), drain(ENGINE_PROMPTS[1]))
            return [*together, await drain(ENGINE_PROMPTS[2])]

        return asyncio.run(run()), engine
    finally:
        engine.stop()


@torch.no_grad()
def litgpt_greedy(reference: GPT, prompt: Sequence[int], n: int) -> list[int]:
    """litgpt's greedy tokens: its `generate` with its KV cache, or, with attention soft-capping (Gemma 2),
    its forward over the whole sequence each step (litgpt 0.5.13's cache path masks nothing there)."""
    if reference.config.attention_logit_softcapping is not None:
        seq = list(prompt)
        for _ in range(n):
            logits = reference(torch.tensor([seq]))[0, -1, : reference.config.vocab_size]
            seq.append(int(logits.argmax()))
        return seq[len(prompt) :]
    model = copy.deepcopy(reference)
    model.max_seq_length = len(prompt) + n
    model.set_kv_cache(batch_size=1)
    out = generate(model, torch.tensor(list(prompt)), len(prompt) + n, temperature=0.0, include_prompt=False)
    return out.tolist()
