"""Generation functions and model loading against litgpt itself: sampling, the slot KV cache with
continuous batching (identical tokens to litgpt's own `generate`), the LoRA merge, load errors."""

from __future__ import annotations

import asyncio
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
from litgpt.model import GPT
from serve_helpers import LORA_HPARAMS, make_adapter

from finetune.tiny import tiny_config
from serve.engine import Engine, EngineConfig, GenerationRequest
from serve.generate import ParallelBlock, argmax_rows, fuse_parallel_blocks, sample
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
