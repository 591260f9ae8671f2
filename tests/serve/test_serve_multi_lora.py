"""Several twins on one base (`serve.multi_lora`): each batch row decodes with its own twin's adapter,
unmerged, and gets what that twin's merged model gives alone — in prefill chunks and decode steps that
mix twins, at batch 1 and in batches, for the Falcon kind and the Llama kind of block, with torch ops and
with the Triton kernels (the batch-1 GEMVs doing the LoRA expand) through Triton's CPU interpreter; banks
only for the LoRA layers the twins adapt, and a twin that adapts more refused."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from litgpt import lora
from litgpt.model import GPT
from model_families import random_family_model

from finetune.twin import Adapter, AdapterSpec, LoraArgs, TwinError
from serve import kernels
from serve.engine_config import EngineConfig
from serve.generate import ParallelBlock, SequentialBlock, decode_logits
from serve.model import merge_lora
from serve.multi_lora import adapter_layers, adapter_updates
from serve.prefill import ChunkRow
from serve.runner import Runner

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [40, 41, 42, 43], [200, 2, 9]]


def random_adapter(model: GPT, seed: int, rank: int = 4, **targets: bool) -> Adapter:
    """An adapter of `model`'s base with random, clearly non-zero LoRA tensors on `targets` (q, v and
    the MLP unless told otherwise)."""
    flags = {"lora_query": True, "lora_value": True, "lora_mlp": True, "lora_projection": True} | targets
    args = LoraArgs(lora_r=rank, lora_alpha=2 * rank, lora_dropout=0.0, **flags)
    torch.manual_seed(seed)
    config = lora.Config(**asdict(model.config), **asdict(args))
    tensors = {
        k: torch.randn_like(v) * 0.3
        for k, v in lora.GPT(config).state_dict().items()
        if lora.lora_filter(k, v)
    }
    spec = AdapterSpec(lora=args, base_name=model.config.name, base_family=None)
    return Adapter(Path(f"adapter-{seed}"), spec, tensors)


def merged(model: GPT, adapter: Adapter | None) -> GPT:
    """`model` with `adapter` merged into its weights, as a one-twin server runs it."""
    out = copy.deepcopy(model)
    if adapter is not None:
        # clones: merging adds into the weights it is given
        base = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("cos", "sin"))}
        out.load_state_dict(merge_lora(model.config, base, adapter, torch.device("cpu"), torch.float32))
    return out


def greedy(runner: Runner, rows: list[tuple[int, list[int], int]], steps: int) -> dict[int, list[int]]:
    """Prefill `rows` (slot, prompt, twin) in one chunk, then `steps` decode steps of them all."""
    for slot, _, twin in rows:
        runner.reserve(slot, 0.0, 1.0, twin)
    firsts = runner.prefill_chunk([ChunkRow(slot, 0, prompt, last=True) for slot, prompt, _ in rows])
    out = {slot: [token] for (slot, _, _), token in zip(rows, firsts, strict=True)}
    b = max(slot for slot, _, _ in rows) + 1
    for _ in range(steps):
        tokens = runner.launch(b).tokens()
        for slot in out:
            out[slot].append(tokens[slot])
    return out


@pytest.mark.parametrize("kernels_on", [False, True], ids=["torch", "triton-interpreter"])
@pytest.mark.parametrize("family", ["falcon", "llama-3.1"])
@torch.no_grad()
def test_each_row_decodes_with_its_own_twin(
    family: str, kernels_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rows of one batch — twin 1, twin 2, the base — give the greedy tokens of each one's merged
    model decoding alone (torch ops); so do twin 2 alone at batch 1 and in another slot. With the kernels
    on: the gathered shrink/expand kernels in batches, the batch-1 GEMVs adding the LoRA term."""
    base = random_family_model(family)
    adapters = [random_adapter(base, seed=1), random_adapter(base, seed=2, rank=3, lora_mlp=False)]
    steps = 2 if kernels_on else 4  # the interpreter runs every kernel of a step in Python
    alone = {}
    for slot, (prompt, adapter) in enumerate(zip(PROMPTS, [*adapters, None], strict=True)):
        single = Runner(
            merged(base, adapter), EngineConfig(max_batch_size=1, max_seq_length=64, compile=False)
        )
        alone[slot] = greedy(single, [(0, prompt, 0)], steps)[0]
    assert len({tuple(tokens) for tokens in alone.values()}) == 3, "the twins must differ for this to test"

    if kernels_on:
        assert os.environ.get("TRITON_INTERPRET") == "1", (
            "tests/conftest.py sets it before triton is imported"
        )
        pytest.importorskip("triton")
        monkeypatch.setattr(kernels, "cpu_interpreter", True)
    config = EngineConfig(max_batch_size=4, max_seq_length=64, compile=False, twin_slots=3, max_lora_rank=4)
    runner = Runner(copy.deepcopy(base), config)
    assert runner.twins is not None
    for twin, adapter in enumerate(adapters, start=1):
        runner.write_twin(twin, adapter_updates(base.config, adapter))
    mixed = greedy(runner, [(0, PROMPTS[0], 1), (1, PROMPTS[1], 2), (2, PROMPTS[2], 0)], steps)
    assert mixed == alone
    # twin 2 alone at batch 1 (the one-token path: with the kernels, the GEMVs' LoRA term) and in slot 3
    assert greedy(runner, [(0, PROMPTS[1], 2)], steps)[0] == alone[1]
    if not kernels_on:
        assert greedy(runner, [(3, PROMPTS[1], 2)], steps)[3] == alone[1]


@torch.no_grad()
def test_logits_match_the_merged_model() -> None:
    """Beyond greedy tokens: a mixed decode step's logits per row equal each merged model's (fp32)."""
    base = random_family_model("falcon")
    adapter = random_adapter(base, seed=3)
    config = EngineConfig(max_batch_size=2, max_seq_length=32, compile=False, twin_slots=1, max_lora_rank=4)
    runner = Runner(copy.deepcopy(base), config)
    runner.write_twin(1, adapter_updates(base.config, adapter))
    reference = Runner(
        merged(base, adapter), EngineConfig(max_batch_size=2, max_seq_length=32, compile=False)
    )
    logits = []
    for r, twin in ((runner, 1), (reference, 0)):
        r.reserve(0, 0.0, 1.0, twin)
        r.prefill_chunk([ChunkRow(0, 0, PROMPTS[0], last=True)])
        logits.append(decode_logits(r.model, r.tokens[:1].view(1, 1), r.positions[:1].view(1, 1)))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)


def test_adapters_that_do_not_fit_are_refused() -> None:
    base = random_family_model("falcon")
    config = EngineConfig(max_batch_size=1, max_seq_length=32, compile=False, twin_slots=1, max_lora_rank=2)
    runner = Runner(copy.deepcopy(base), config)
    assert runner.twins is not None
    too_big = random_adapter(base, seed=1, rank=4)
    with pytest.raises(TwinError, match="TWIN_MAX_LORA_RANK=2"):
        runner.twins.check(adapter_updates(base.config, too_big), 4, "too-big", adapter_layers(too_big))
    other = random_family_model("llama-3.1")
    with pytest.raises(TwinError, match="does not fit"):
        adapter_updates(base.config, random_adapter(other, seed=1))
    with pytest.raises(TwinError, match="lora_head"):
        adapter_updates(base.config, random_adapter(base, seed=1, lora_head=True))


def test_unfused_blocks_are_refused() -> None:
    base = random_family_model("gemma-2")
    config = EngineConfig(max_batch_size=1, max_seq_length=32, compile=False, twin_slots=1)
    with pytest.raises(TwinError, match="TWIN_MAX_TWINS=0"):
        Runner(base, config)


@pytest.mark.parametrize(
    ("family", "layers"), [("falcon", ("query", "value")), ("llama-3.1", ("query", "value", "mlp"))]
)
@torch.no_grad()
def test_banks_hold_only_the_layers_twins_adapt(family: str, layers: tuple[str, ...]) -> None:
    """Targets no held LoRA layer adapts get no bank; a stacked target's bank stops after its last adapted
    rows; a twin of those layers decodes as its merged model; one that adapts more is refused, naming the
    setting, before anything is written."""
    base = random_family_model(family)
    config = EngineConfig(
        max_batch_size=2, max_seq_length=64, compile=False, twin_slots=2, max_lora_rank=4, lora_layers=layers
    )
    runner = Runner(copy.deepcopy(base), config)
    assert runner.twins is not None
    block = runner.model.transformer.h[0]
    if isinstance(
        block, ParallelBlock
    ):  # [qkv; fc] over its qkv rows, q and v: 2 rank-4 pairs; no [proj | mlp.proj]
        assert block.lora_w_out is None and block.lora_w_in is not None
        assert block.lora_w_in.covered == block.qkv_size < block.lora_w_in.out_features
        assert block.lora_w_in.rank == 8
    else:  # q and v in qkv, the MLP's [gate; up] and down; no proj
        assert isinstance(block, SequentialBlock)
        assert block.lora_proj is None
        assert block.lora_qkv is not None and block.lora_qkv.rank == 8
        assert block.lora_w_in is not None and block.lora_w_in.rank == 8  # gate and up: a pair each
        assert block.lora_w_down is not None and block.lora_w_down.rank == 4
    assert len(runner.twins.banks) == len(runner.model.transformer.h) * (1 if family == "falcon" else 3)

    targets = {f"lora_{name}": name in layers for name in ("query", "key", "value", "projection", "mlp")}
    fits = random_adapter(base, seed=5, rank=3, **targets)
    updates = adapter_updates(base.config, fits)
    runner.twins.check(updates, 3, "fits", adapter_layers(fits))
    runner.write_twin(1, updates)
    mixed = greedy(runner, [(0, PROMPTS[0], 1), (1, PROMPTS[1], 0)], 5)
    single = Runner(merged(base, fits), EngineConfig(max_batch_size=1, max_seq_length=64, compile=False))
    assert mixed[0] == greedy(single, [(0, PROMPTS[0], 0)], 5)[0]

    more = random_adapter(base, seed=6, lora_projection=True)  # q, v, the MLP and the projection
    missing = ", ".join(sorted({"projection", "mlp"} - set(layers)))
    with pytest.raises(TwinError, match=f"TWIN_LORA_LAYERS listing {missing}"):
        runner.twins.check(adapter_updates(base.config, more), 4, "more", adapter_layers(more))
    before = {key: bank.B[2].clone() for key, bank in runner.twins.banks.items()}
    with pytest.raises(TwinError, match="do not fit"):
        runner.write_twin(2, adapter_updates(base.config, more))
    assert all(torch.equal(bank.B[2], before[key]) for key, bank in runner.twins.banks.items())
