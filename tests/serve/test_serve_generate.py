"""Generation functions and model loading against litgpt itself: sampling, the fused blocks of every
served family (Falcon, Llama, SmolLM2, Qwen, Mistral, Gemma; litgpt's own blocks for the rest), the slot
KV cache with continuous batching (identical tokens to litgpt's own `generate`), the LoRA merge, load
errors."""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import lora
from litgpt.config import Config
from litgpt.generate.base import generate
from litgpt.model import GPT, build_rope_cache
from model_families import (
    ENGINE_PROMPTS,
    FAMILIES,
    check_decodes_like_litgpt,
    engine_greedy_tokens,
    family_config,
    litgpt_greedy,
    random_family_model,
)
from serve_helpers import LORA_HPARAMS, make_adapter

from finetune.tiny import tiny_config
from serve.engine import Engine, EngineConfig, GenerationRequest
from serve.generate import (
    ParallelBlock,
    SequentialBlock,
    argmax_rows,
    decode_logits,
    fuse_blocks,
    fuse_parallel_blocks,
    sample,
    setup_caches,
)
from serve.model import ModelLoadError, load_model

CPU = torch.device("cpu")


def test_sample_greedy_rows_take_the_argmax_and_top_p_zero_is_greedy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    temperature = torch.tensor([0.0, 1.0, 0.0, 1.5])
    top_p = torch.tensor([1.0, 1e-6, 0.5, 1e-6])  # a tiny nucleus keeps only the most likely token
    for _ in range(20):
        assert sample(logits, temperature, top_p).tolist() == logits.argmax(-1).tolist()


def test_sample_follows_the_distribution_and_cuts_the_nucleus() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 4000
    logits = probs.log().expand(n, 4).contiguous()
    drawn = sample(logits, torch.ones(n), torch.ones(n))
    freq = torch.bincount(drawn, minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=0.03), freq
    # top_p 0.7: tokens 0 (0.5) and 1 (0.3) make the nucleus; 2 and 3 never come out
    drawn = sample(logits, torch.ones(n), torch.full((n,), 0.7))
    assert set(drawn.tolist()) == {0, 1}
    # temperature sharpens: at 0.25 token 0 dominates far beyond its 50%
    drawn = sample(logits, torch.full((n,), 0.25), torch.ones(n))
    assert (drawn == 0).float().mean() > 0.85


def test_chunked_argmax_is_argmax_including_ties_and_padding() -> None:
    torch.manual_seed(0)
    for width in (5, 256, 300, 1000, 65024):  # below, at, and not a multiple of the 256-wide chunk
        x = torch.randn(7, width)
        assert torch.equal(argmax_rows(x), x.argmax(-1)), width
    ties = torch.zeros(3, 600)
    ties[0, [10, 500]] = 1.0  # the first of equal maxima, across chunks
    ties[2, 599] = 2.0  # in the padded last chunk
    assert argmax_rows(ties).tolist() == [10, 0, 599] == ties.argmax(-1).tolist()


def test_top_p_nucleus_is_cut_at_the_candidate_count_and_top_p_one_samples_everything() -> None:
    torch.manual_seed(0)
    n = 3000
    logits = torch.arange(10, 0, -1).float().log().expand(n, 10).contiguous()  # p ∝ 10, 9, ..., 1
    ones = torch.ones(n)
    # a 0.99 nucleus holds 9 tokens, but only the 3 most likely are candidates
    drawn = sample(logits, ones, torch.full((n,), 0.99), candidates=3)
    assert set(drawn.tolist()) == {0, 1, 2}
    # top_p 1 is the whole vocabulary, whatever the candidate count
    drawn = sample(logits, ones, ones, candidates=3)
    assert set(drawn.tolist()) == set(range(10))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_parallel_blocks_compute_what_litgpt_computes(bias: bool) -> None:
    """Falcon's four matmuls a block as two: litgpt's logits, on a prompt and in KV-cache decoding."""
    torch.manual_seed(0)
    config = tiny_config(300)
    config.bias = bias
    reference = GPT(config).eval()
    if bias:  # nonzero biases, so that a dropped or misplaced one shows
        for name, param in reference.named_parameters():
            if name.endswith(".bias"):
                torch.nn.init.normal_(param)
    fused = GPT(config).eval()
    fused.load_state_dict(reference.state_dict())
    assert fuse_parallel_blocks(fused) == config.n_layer
    assert all(isinstance(block, ParallelBlock) for block in fused.transformer.h)
    # the same matrices, stacked (the two output biases are summed into one)
    matrices = [sum(p.numel() for p in m.parameters() if p.dim() == 2) for m in (fused, reference)]
    assert matrices[0] == matrices[1]
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
        for model in (reference, fused):
            model.set_kv_cache(batch_size=2, max_seq_length=16)
        pos = torch.arange(9)
        torch.testing.assert_close(fused(x, pos), reference(x, pos))
        step = torch.tensor([9])
        torch.testing.assert_close(fused(x[:, :1], step), reference(x[:, :1], step))


def test_blocks_of_other_shapes_are_left_alone() -> None:
    """Only parallel-residual blocks with one shared norm are fused (e.g. not Pythia's two norms)."""
    config = Config.from_name("pythia-14m")
    assert config.parallel_residual and not config.shared_attention_norm
    model = GPT(config)
    assert fuse_parallel_blocks(model) == 0
    assert not any(isinstance(block, ParallelBlock) for block in model.transformer.h)


def close_fp32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_blocks_decode_what_litgpt_decodes(family: str) -> None:
    """Every family's blocks fused (or, Gemma 2, left as litgpt's): the same logits as litgpt's model on
    a whole prompt without a cache, and in prefill + KV-cache decoding through the slot caches, batched
    and alone."""
    reference = random_family_model(family)
    n_layer = reference.config.n_layer
    fused = copy.deepcopy(reference)
    expected_kind = {"falcon": ParallelBlock, "gemma-2": None}.get(family, SequentialBlock)
    assert fuse_blocks(fused, gemv=False) == (0 if expected_kind is None else n_layer)
    if expected_kind is not None:
        assert all(type(block) is expected_kind for block in fused.transformer.h)
    # the same matrices, stacked (Falcon's two output biases are summed into one)
    matrices = [sum(p.numel() for p in m.parameters() if p.dim() == 2) for m in (fused, reference)]
    assert matrices[0] == matrices[1]
    x = torch.randint(0, reference.config.vocab_size, (2, 11))
    with torch.no_grad():
        close_fp32(fused(x), reference(x))
    check_decodes_like_litgpt(reference, lambda model: fuse_blocks(model, gemv=False), close_fp32)


def test_unfused_families_fall_back_to_litgpt_blocks_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = random_family_model("gemma-2")
    with caplog.at_level(logging.WARNING, logger="serve.generate"):
        assert fuse_blocks(model) == 0
    assert "2 of 2 blocks run as litgpt's own blocks" in caplog.text
    assert "norms after attention and MLP" in caplog.text


def test_grouped_query_decoding_never_broadcasts_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """litgpt repeats each key/value group to its query heads (a copy of the whole cache a layer and
    step); our one-token steps attend to the groups as they are."""
    model = random_family_model("llama-3.1")
    fuse_blocks(model, gemv=False)
    setup_caches(model, 2, 32)
    tokens, positions = torch.tensor([[3], [4]]), torch.tensor([[5], [0]])
    with torch.no_grad():
        decode_logits(model, tokens, positions)  # works
        monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **k: pytest.fail("broadcast"))
        decode_logits(model, tokens, positions)


def test_rope_cache_keeps_the_configs_rope_adjustments() -> None:
    """Llama-3.1's scaled RoPE (`rope_adjustments`) is what setup_caches builds, not plain RoPE."""
    model = random_family_model("llama-3.1")
    config = model.config
    setup_caches(model, 1, 64)
    adjusted = {k: config.rope_adjustments[k] for k in config.rope_adjustments}  # type: ignore[union-attr]
    cos, _ = build_rope_cache(64, config.rope_n_elem, base=config.rope_base, extra_config=adjusted)
    plain, _ = build_rope_cache(64, config.rope_n_elem, base=config.rope_base)
    torch.testing.assert_close(model.cos, cos)
    assert not torch.allclose(model.cos, plain)


def test_sliding_window_attention_is_served_up_to_its_window() -> None:
    config = family_config("mistral")
    config.sliding_window_size, config.sliding_window_indices = 32, [1] * config.n_layer
    model = GPT(config).eval()
    with pytest.raises(ValueError, match="max_seq_length of at most 32"):
        setup_caches(model, 1, 40)
    setup_caches(model, 1, 32)  # a window as long as the cache: plain causal attention
    assert not any(block.attn.apply_sliding_window_attention for block in model.transformer.h)


def llama_reference() -> GPT:
    # no padded vocabulary rows: litgpt's generate samples among them too, the engine does not
    return random_family_model("llama-3.1", vocab_size=320)


def test_engine_on_a_llama_shaped_model_matches_litgpt_generate() -> None:
    """The engine (fused sequential blocks, GQA, Llama-3.1 RoPE) generates litgpt's greedy tokens."""
    reference, n = llama_reference(), 12
    outs, engine = engine_greedy_tokens(reference, n, compile=False)
    assert engine.stats()["fused_blocks"] == reference.config.n_layer
    for prompt, out in zip(ENGINE_PROMPTS, outs, strict=True):
        assert out == litgpt_greedy(reference, prompt, n)


@pytest.mark.slow
def test_compiled_llama_decode_step_gives_the_eager_tokens() -> None:
    """torch.compile (fullgraph, on this CPU) of the Llama-shaped decode step: the eager engine's tokens."""
    reference = llama_reference()
    eager, _ = engine_greedy_tokens(reference, 10, compile=False)
    try:
        compiled, engine = engine_greedy_tokens(reference, 10, compile=True)
    finally:
        torch._dynamo.reset()  # the compiled step's caches stay out of later tests
    assert engine.compiled and engine.compile_error is None  # fullgraph, the first attempt on a CPU
    assert compiled == eager


def reference_greedy(checkpoint: Path, prompt: list[int], n: int) -> list[int]:
    """litgpt's own generate (its KV cache and attention) on the same weights."""
    model = load_model(checkpoint, None, CPU, torch.float32)
    model.max_seq_length = len(prompt) + n
    model.set_kv_cache(batch_size=1)
    out = generate(model, torch.tensor(prompt), len(prompt) + n, temperature=0.0, include_prompt=False)
    return out.tolist()


def test_continuous_batching_matches_litgpt_generate(tiny_checkpoint: Path) -> None:
    """Three prompts of different lengths join a running batch at different steps; each slot decodes at
    its own position, and every sequence comes out token for token as litgpt generates it alone."""
    n = 24
    prompts = [[5, 17, 99, 3, 250], list(range(40, 71)), [300, 2]]
    engine = Engine(
        partial(load_model, tiny_checkpoint, None, CPU, torch.float32),
        EngineConfig(max_batch_size=4, max_seq_length=96, warmup_prompt_tokens=16),
    )
    engine.start()
    assert engine.wait_ready(60), engine.load_error

    async def run() -> list[list[int]]:
        outs: list[list[int]] = [[] for _ in prompts]

        async def consume(i: int) -> None:
            seq = engine.submit(GenerationRequest(prompts[i], n, temperature=0.0, ignore_eos=True))
            async for chunk in seq.tokens():
                outs[i].extend(chunk)
                if i + 1 < len(prompts) and len(outs[i]) == 3 * (i + 1) and not started[i + 1].is_set():
                    started[i + 1].set()  # the next request arrives while this one is generating

        started = [asyncio.Event() for _ in prompts]
        started[0].set()

        async def staggered(i: int) -> None:
            await started[i].wait()
            await consume(i)

        await asyncio.gather(*(staggered(i) for i in range(len(prompts))))
        return outs

    try:
        outs = asyncio.run(run())
        assert engine.steps < sum(len(o) for o in outs)  # requests shared decode steps
    finally:
        engine.stop()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == reference_greedy(tiny_checkpoint, prompt, n)


def test_lora_is_merged_into_the_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The served (merged, plain GPT) model computes what litgpt's unmerged LoRA model computes."""
    adapter = make_adapter(tiny_checkpoint, tmp_path / "twin")
    merged = load_model(tiny_checkpoint, adapter, CPU, torch.float32)
    config = Config.from_file(tiny_checkpoint / "model_config.yaml")
    reference = lora.GPT(lora.Config(**{**asdict(config), **LORA_HPARAMS}))
    state = torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True)
    reference.load_state_dict({**state, **torch.load(adapter, weights_only=True)})
    base = GPT(config)
    base.load_state_dict(state)
    x = torch.randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        want, got, plain = reference.eval()(x), merged(x), base.eval()(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-2)  # the adapter changes the model


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_dir", "does not exist"),
        ("no_weights", "lacks lit_model.pth"),
        ("no_adapter", "LoRA adapter"),
        ("no_hparams", "hyperparameters.yaml"),
        ("hparams_missing_key", "lacks lora_alpha"),
        ("full_weights_as_adapter", "is not a LoRA adapter"),
        ("wrong_rank", "does not fit the checkpoint"),
    ],
)
def test_load_errors_say_what_to_fix(
    tiny_checkpoint: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    adapter: Path | None = make_adapter(tiny_checkpoint, tmp_path / "out")
    assert adapter is not None
    if breakage == "no_dir":
        checkpoint = tmp_path / "missing"
    elif breakage == "no_weights":
        (checkpoint / "lit_model.pth").unlink()
    elif breakage == "no_adapter":
        adapter = tmp_path / "out" / "nope.pth"
    elif breakage == "no_hparams":
        (tmp_path / "out" / "hyperparameters.yaml").unlink()
    elif breakage == "hparams_missing_key":
        hparams = yaml.safe_load((tmp_path / "out" / "hyperparameters.yaml").read_text())
        del hparams["lora_alpha"]
        (tmp_path / "out" / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams))
    elif breakage == "full_weights_as_adapter":
        shutil.copy(checkpoint / "lit_model.pth", adapter)
    elif breakage == "wrong_rank":
        hparams = yaml.safe_load((tmp_path / "out" / "hyperparameters.yaml").read_text())
        (tmp_path / "out" / "hyperparameters.yaml").write_text(yaml.safe_dump({**hparams, "lora_r": 8}))
    with pytest.raises(ModelLoadError, match=message):
        load_model(checkpoint, adapter, CPU, torch.float32)
