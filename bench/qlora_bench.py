"""QLoRA benchmark: NF4 base + LoRA vs bf16 LoRA, Falcon-7B's shape with random weights; NF4 serving.

    # GPU box (torch 2.11 + lightning there; carry the ignored .whl/ folder, install without deps):
    pip install --no-deps .whl/torchao-0.18.0-*.whl .whl/litgpt-0.5.13-*.whl \
        .whl/jsonargparse-4.41.0-*.whl .whl/docstring_parser-0.18.0-*.whl
    python bench/qlora_bench.py --out $OUT/qlora_bench.json                   # ~4 min on an H100
    python bench/qlora_bench.py --variants bf16+compile@8192,nf4-dq+compile@8192 --decode engine \
        --out $OUT/qlora_bench_compile.json        # what compiles: per-block torch.compile, serve engine
    # here, on a CPU, a tiny config:
    .venv/bin/python bench/qlora_bench.py --smoke

Training times the loop's own code — `finetune.model.train_step` through Lightning Fabric (bf16-true),
LoRA r=16, alpha=32, dropout 0.05 on q and v (the finetune defaults), optimizer steps of 128 sequences
planned by `finetune.data.BatchPlan` (length grouping, micro-batches under a padded-token budget) — on
synthetic sequences whose lengths spread like `bench/finetune_bench.py`'s chat records (log-normal,
median ~180 tokens, 60–600; replies median ~18). Each variant `MODE[+cd][+ckpt][+compile]@TOKENS`
reports non-pad tokens/s, padding and the peak GPU memory of its steps (after
`torch.cuda.reset_peak_memory_stats()`): MODE is bf16, nf4 or nf4-dq; `cd` = compiled NF4
dequantization (what `python -m finetune --quantize` uses on a GPU); `ckpt` = activation checkpointing;
`compile` = `torch.compile` per block (`--compile`); TOKENS = `--micro-batch-tokens`. `vs_bf16` divides
by the first bf16 variant. The NF4 model is built on the meta device and quantized layer by layer from
a lazily generated random "checkpoint" (`quantize_model(..., weights=...)`), so the bf16 base never sits
on the GPU whole; its build peak is reported too.

Serving: the NF4 base with the LoRA on top (not merged), a 512-token prompt, then batch-1 greedy
decoding: litgpt's KV-cache forward eager (`eager`) and with compiled dequantization (`cd`), and the
server's own engine (`engine`: `serve.engine`, decode step compiled with CUDA graphs on a GPU) as
`python -m serve --quantize` runs it; peak memory of each after `torch.cuda.reset_peak_memory_stats()`.
Prints one JSON object (and keeps --out up to date after every measurement).

`--serve-nf4` (no training) times the engine's batch-1 decoding on an NF4 base against the bf16 engine
at Falcon-7B's and Llama-3.1-8B's shapes (`--serve-models`): the bf16 row is the served plain GPT (fused
blocks, Triton GEMVs, CUDA graphs); the NF4 row the LoRA GPT over an NF4 base (r=16 on q and v, random,
unmerged), whose fused blocks run `serve.kernels_nf4`'s 4-bit GEMVs. Each row has its ceiling: the bytes
a step reads (every weight but the embedding; the NF4 codes, scales and LoRA as held) over the measured
copy bandwidth; `nf4_vs_bf16` is the goal's ratio (>= 1.5). `--smoke` runs it on a tiny config of each
family on the CPU; with TRITON_INTERPRET=1 (read when Triton loads) the kernels run there too, through
Triton's interpreter:

    python bench/qlora_bench.py --serve-nf4 --out $OUT/nf4_serve.json       # GPU, both shapes
    TRITON_INTERPRET=1 .venv/bin/python bench/qlora_bench.py --serve-nf4 --smoke   # here
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litgpt.lora import GPT, Block, Config, LoRALinear, mark_only_lora_as_trainable  # noqa: E402
from litgpt.model import RMSNorm  # noqa: E402

from common.nf4 import (  # noqa: E402
    NF4Linear,
    parameter_memory,
    quantize_model,
    strip_unused_lora,
    tensor_nbytes,
)
from common.quantize import check_quantize_support, parse_quantize_mode  # noqa: E402
from finetune.args import TrainArgs  # noqa: E402
from finetune.data import BatchPlan, Example, Step  # noqa: E402
from finetune.model import (  # noqa: E402
    CheckpointedBlock,
    attach_loss_positions,
    compile_blocks,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)

log = logging.getLogger("qlora_bench")
GIB = 2**30
DEFAULT_VARIANTS = "bf16@8192,nf4-dq@4096,nf4-dq+cd@4096,nf4-dq+cd@8192,nf4-dq+cd+ckpt@16384,nf4+cd@4096"
SMOKE_VARIANTS = "bf16@512,nf4-dq@512,nf4-dq+cd@512,nf4-dq+cd+ckpt@1024,nf4@512"


# ------------------------------------------------------------------------------------------------ model
def lora_config(name: str, smoke: bool) -> Config:
    """LoRA r=16, alpha=32, dropout 0.05 on query and value: the finetune stage's defaults."""
    lora = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_query=True, lora_value=True)
    if smoke:  # Falcon's code paths at toy size
        return Config.from_name(
            name, n_layer=2, n_embd=128, n_head=4, n_query_groups=1 if "falcon" in name else 2,
            intermediate_size=512, padded_vocab_size=512, vocab_size=512, block_size=640, **lora,
        )  # fmt: skip
    return Config.from_name(name, **lora)


class RandomWeights(Mapping[str, torch.Tensor]):
    """A lazy "checkpoint": each base Linear weight made on the device when asked for."""

    def __init__(self, shapes: dict[str, torch.Size], device: torch.device, dtype: torch.dtype) -> None:
        self.shapes, self.device, self.dtype = shapes, device, dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.randn(self.shapes[key], device=self.device, dtype=self.dtype) * 0.02

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def init_rest(model: GPT, device: torch.device) -> None:
    """Materialize what is still on the meta device (all of it for bf16) with a GPT-like random init."""
    model.to_empty(device=device)  # NF4 weights already live on `device` and stay as they are
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):  # Llama's (to_empty left it uninitialized: NaN logits)
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02)
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
            if isinstance(module, LoRALinear) and module.r > 0:
                module.reset_parameters()  # A kaiming-uniform, B zero
                module.lora_B.normal_(0.0, 1e-3)  # as if trained a little (a zero B is a special case)
    model.cos, model.sin = model.rope_cache(device=device)


@dataclass
class Built:
    model: GPT
    fabric_model: Any
    head: Any
    optimizer: Any
    info: dict[str, Any]


def build(fabric: L.Fabric, config: Config, mode: str, dtype: torch.dtype) -> Built:
    """The model set up as the training loop sets it up; for NF4 quantized layer by layer on the device."""
    device = fabric.device
    cleanup(device)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so that `to_empty` makes bf16 tensors, never an fp32 7B
    try:
        with torch.device("meta"):
            model = GPT(config)
    finally:
        torch.set_default_dtype(default_dtype)
    started = time.perf_counter()
    if mode != "bf16":
        shapes = {f"{n}.weight": m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        quantize_model(model, mode, device=device, dtype=dtype, weights=RandomWeights(shapes, device, dtype))
    init_rest(model, device)
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model)
    head = attach_loss_positions(model)
    fabric_model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(make_optimizer(fabric_model, 1e-4, 0.01, device))
    sync(device)
    memory = parameter_memory(model)
    info = {
        "build_s": round(time.perf_counter() - started, 1),
        "build_peak_gib": peak_gib(device),
        "weights_gib": round(memory.total_bytes / GIB, 3),
        "bits_per_nf4_param": round(memory.bits_per_quantized_param, 3) if memory.quantized_params else None,
        "trainable_params": memory.trainable_params,
    }
    return Built(model, fabric_model, head, optimizer, info)


def set_variant(model: GPT, compiled_dequant: bool, checkpointing: bool, compiled_blocks: bool) -> None:
    """Switch compiled NF4 dequantization, activation checkpointing (the loop's `CheckpointedBlock`) and
    per-block `torch.compile` (the loop's `compile_blocks`) on or off in place."""
    for module in model.modules():
        if isinstance(module, NF4Linear):
            module.compile_dequant = compiled_dequant
    for block in model.transformer.h:
        block.__class__ = CheckpointedBlock if checkpointing else Block
        block._compiled_call_impl = None
    if compiled_blocks:
        compile_blocks(model)


# ------------------------------------------------------------------------------------------------- data
def chat_examples(n: int, vocab_size: int, seed: int, max_length: int) -> list[Example]:
    """Token sequences with the length spread of bench/finetune_bench.py's synthetic chat records."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = min(600, max(60, int(rng.lognormvariate(math.log(180), 0.6))), max_length)
        reply = min(120, max(2, int(rng.lognormvariate(math.log(18), 0.7)))) + 1  # + EOS
        ids = torch.randint(1, vocab_size, (length,), generator=generator)
        examples.append(Example(ids, prompt_len=max(1, length - reply)))
    return examples


def planned_steps(
    examples: list[Example], tokens: int, count: int, max_length: int, batch: int
) -> list[Step]:
    """`count` optimizer steps planned as `python -m finetune` plans them, micro-batches of `tokens`."""
    defaults = TrainArgs()
    plan = BatchPlan(
        examples,
        global_batch_size=batch,
        micro_batch_tokens=tokens,
        micro_batch_size=defaults.micro_batch_size,
        pad_multiple=defaults.pad_multiple,
        max_length=max_length,
        seed=0,
        length_grouping=defaults.length_grouping,
    )
    steps: list[Step] = []
    epoch = 0
    while len(steps) < count:
        steps += list(plan.steps(epoch))
        epoch += 1
    return steps[:count]


# -------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def train_variant(
    fabric: L.Fabric, built: Built, steps: list[Step], examples: list[Example], warmup: int
) -> dict:
    """Optimizer steps through the loop's `train_step`; throughput over the steps after `warmup`."""
    built.model.train()
    cleanup(fabric.device)
    real = padded = 0
    started = time.perf_counter()
    for i, step in enumerate(steps):
        if i == warmup:
            sync(fabric.device)
            started = time.perf_counter()
            real = padded = 0
        loss = train_step(fabric, built.fabric_model, built.optimizer, built.head, step, examples, 0, 1.0)
        real += sum(mb.tokens for mb in step.micro_batches)
        padded += sum(mb.padded_tokens for mb in step.micro_batches)
    sync(fabric.device)
    elapsed = time.perf_counter() - started
    micro_batches = sum(len(s.micro_batches) for s in steps[warmup:])
    return {
        "non_pad_tokens_per_s": round(real / elapsed),
        "padding": round(1 - real / padded, 4),
        "timed_steps": len(steps) - warmup,
        "mean_padded_tokens_per_micro_batch": round(padded / micro_batches),
        "train_peak_gib": peak_gib(fabric.device),
        "last_step_loss_sum": round(float(loss), 2),
    }


def engine_decode(model: GPT, prompt_len: int, new_tokens: int, device: torch.device) -> dict:
    """Batch-1 greedy decoding through the server's own engine (`serve.engine`: slot KV cache, decode
    step compiled with CUDA graphs on a GPU) around the NF4 model, as `python -m serve --quantize` runs it."""
    import asyncio

    from serve.engine import Engine, EngineConfig, GenerationRequest

    model.eval().requires_grad_(False)
    cleanup(device)
    config = EngineConfig(
        max_batch_size=1, max_seq_length=prompt_len + new_tokens + 8, warmup_prompt_tokens=prompt_len
    )
    engine = Engine(lambda: model, config)
    started = time.perf_counter()
    engine.start()
    try:
        if not engine.wait_ready(timeout=420):
            return {"error": f"engine not ready: {engine.load_error}"}
        startup_s = time.perf_counter() - started
        stats = engine.stats()
        prompt = torch.randint(1, model.config.vocab_size, (prompt_len,)).tolist()

        async def stream() -> list[tuple[float, int]]:
            seq = engine.submit(GenerationRequest(prompt, new_tokens, temperature=0.0, ignore_eos=True))
            chunks: list[tuple[float, int]] = []  # (arrival time, tokens in the chunk)
            async for chunk in seq.tokens():
                chunks.append((time.perf_counter(), len(chunk)))
            return chunks

        chunks = asyncio.run(stream())
    finally:
        engine.stop()
    # decode rate after the first chunk (which carries the prefill's token)
    decoded = sum(n for _, n in chunks[1:])
    span = chunks[-1][0] - chunks[0][0]
    return {
        "tokens_per_s": round(decoded / span, 1) if span > 0 else None,
        "chunks": len(chunks),
        "peak_gib": peak_gib(device),
        "prompt_tokens": prompt_len,
        "compiled": engine.compiled,
        "compile_error": engine.compile_error,
        "fused_blocks": stats["fused_blocks"],
        "triton_kernels": stats["triton_kernels"],
        "startup_to_ready_s": round(startup_s, 1),
    }


def decode_variant(model: GPT, prompt_len: int, new_tokens: int, device: torch.device, how: str) -> dict:
    """Batch-1 greedy decoding with litgpt's KV cache after a `prompt_len` prefill; `how`: eager, cd
    (compiled dequantization), compiled (the whole step, CUDA graphs)."""
    model.eval()
    # a whole-step compile fuses the dequantization itself; `cd` compiles only the dequantization
    set_variant(model, compiled_dequant=how == "cd", checkpointing=False, compiled_blocks=False)
    cleanup(device)
    max_seq = prompt_len + new_tokens
    model.max_seq_length = max_seq
    dtype = model.transformer.wte.weight.dtype
    model.set_kv_cache(batch_size=1, max_seq_length=max_seq, device=device, dtype=dtype)
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda idx, pos: model(idx, pos)  # noqa: E731
    if how == "compiled":
        step = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
    prompt = torch.randint(1, model.config.vocab_size, (1, prompt_len), device=device)
    warm = min(8, new_tokens // 4)
    with torch.inference_mode():
        logits = model(prompt, torch.arange(prompt_len, device=device))  # (1, T, vocab) prefill
        token = logits[:, -1:].argmax(-1)  # (1, 1)
        started = time.perf_counter()
        for i in range(new_tokens - 1):
            if i == warm:
                sync(device)
                started = time.perf_counter()
            if how == "compiled":
                torch.compiler.cudagraph_mark_step_begin()
            logits = step(token, torch.tensor([prompt_len + i], device=device))  # (1, 1, vocab)
            token = logits[:, -1:].argmax(-1).clone()
        sync(device)
        elapsed = time.perf_counter() - started
    model.clear_kv_cache()
    return {
        "tokens_per_s": round((new_tokens - 1 - warm) / elapsed, 1),
        "peak_gib": peak_gib(device),
        "prompt_tokens": prompt_len,
    }


# ----------------------------------------------------------------------------------- NF4 serving rows
SERVE_MODELS = "falcon-7b,Llama-3.1-8B"


def copy_bandwidth(device: torch.device) -> float:
    """Bytes a second of a large device-to-device copy, read + written (the roofline of a decode step)."""
    n = 2**31 if device.type == "cuda" else 2**26
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    started = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(device)
    return 2 * n * 10 / (time.perf_counter() - started)


def step_bytes(model: nn.Module) -> int:
    """Bytes a batch-1 decode step reads: every parameter and weight buffer but the embedding table (one
    row of it is read) and the KV cache and RoPE/mask buffers; NF4 weights as held."""
    skip = ("transformer.wte.", "kv_cache.", "mask_cache")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return sum(
        tensor_nbytes(t)
        for name, t in tensors
        if not any(s in name for s in skip) and name not in ("cos", "sin")
    )


def check_step(model: GPT, prompt: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """The served model (fused, after the engine ran) on `prompt`: 7 tokens prefilled, the 8th a batch-1
    decode step (its kernels, eager) — its logits against litgpt's forward over the 8 (`reference`)."""
    from serve.generate import decode_logits, prefill, uses_kernels

    ones = torch.ones(1, device=prompt.device)
    with torch.inference_mode():
        prefill(model, prompt[:7], 0, ones, ones)
        position = torch.full((1, 1), 7, dtype=torch.int64, device=prompt.device)
        got = decode_logits(model, prompt[7:].view(1, 1), position)[0]
    return {
        "kernels": uses_kernels(model),
        "logits_max_abs_diff": round((got - reference).abs().max().item(), 6),
        "logits_max_abs": round(reference.abs().max().item(), 3),
        "same_argmax": bool(got.argmax() == reference.argmax()),
    }


def plain_config(config: Config) -> Any:
    """The same model without LoRA: litgpt's plain Config (what the bf16 server runs, adapter merged)."""
    from dataclasses import asdict

    from litgpt.config import Config as PlainConfig

    fields = {k: v for k, v in asdict(config).items() if not k.startswith("lora_")}
    return PlainConfig(**fields)


def serve_nf4_rows(args: argparse.Namespace, fabric: L.Fabric, dtype: torch.dtype, result: dict) -> None:
    """For each of --serve-models: the bf16 engine and the NF4 engine, batch 1, with their ceilings."""
    from serve import kernels, kernels_nf4
    from serve.model import random_model

    device = fabric.device
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        kernels.cpu_interpreter = True  # --smoke: the kernels on CPU tensors, through the interpreter
        kernels.TILE, kernels_nf4.TILE = (64, 512, 4), (64, 256, 4)  # few programs: the interpreter is slow
    bandwidth = copy_bandwidth(device)
    result["copy_bandwidth_gb_per_s"] = round(bandwidth / 1e9, 1)
    rows: dict[str, Any] = result.setdefault("serve_nf4", {})
    for name in args.serve_models.split(","):
        config = lora_config(name, args.smoke)
        row: dict[str, Any] = {}
        rows[config.name] = row
        for mode in ("bf16", args.serve_nf4_mode):
            cleanup(device)
            try:
                if mode == "bf16":
                    model = random_model(plain_config(config), device, dtype)
                else:
                    model = build(fabric, config, mode, dtype).model
                    set_variant(model, compiled_dequant=False, checkpointing=False, compiled_blocks=False)
                    strip_unused_lora(model)
                prompt = torch.randint(1, config.vocab_size, (8,), device=device)
                with torch.inference_mode():  # litgpt's own forward, before the engine fuses the model
                    reference = model.eval()(prompt[None])[0, -1, : config.vocab_size].float()
                measured = engine_decode(model, args.prompt_tokens, args.new_tokens, device)
                measured["check"] = check_step(model, prompt, reference)
                nbytes = step_bytes(model)  # after the engine fused it: what its steps read
                measured["step_weight_gb"] = round(nbytes / 1e9, 3)
                measured["ceiling_tokens_per_s"] = round(bandwidth / nbytes, 1)
                if measured.get("tokens_per_s"):
                    measured["pct_of_ceiling"] = round(100 * measured["tokens_per_s"] * nbytes / bandwidth, 1)
            except Exception as e:  # record the failing row and go on
                measured = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            model = None
            row[mode] = measured
            report(args, result, {f"serve {config.name} {mode}": measured})
        nf4, bf16 = row.get(args.serve_nf4_mode, {}), row.get("bf16", {})
        if nf4.get("tokens_per_s") and bf16.get("tokens_per_s"):
            row["nf4_vs_bf16"] = round(nf4["tokens_per_s"] / bf16["tokens_per_s"], 3)
            report(args, result, {f"serve {config.name} nf4_vs_bf16": row["nf4_vs_bf16"]})


# ------------------------------------------------------------------------------------------------- main
@dataclass(frozen=True)
class Variant:
    mode: str
    compiled_dequant: bool
    checkpointing: bool
    compiled_blocks: bool
    tokens: int

    @property
    def name(self) -> str:
        flags = (
            "+cd" * self.compiled_dequant + "+ckpt" * self.checkpointing + "+compile" * self.compiled_blocks
        )
        return f"{self.mode}{flags}@{self.tokens}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        spec, _, tokens = text.partition("@")
        mode, *flags = spec.split("+")
        if mode != "bf16":
            parse_quantize_mode(mode)
        if set(flags) - {"cd", "ckpt", "compile"} or not tokens.isdigit():
            raise ValueError(f"variant {text!r}: use MODE[+cd][+ckpt][+compile]@TOKENS, e.g. nf4-dq+cd@4096")
        if mode == "bf16" and "cd" in flags:
            raise ValueError(f"variant {text!r}: bf16 has nothing to dequantize")
        return cls(mode, "cd" in flags, "ckpt" in flags, "compile" in flags, int(tokens))


def report(args: argparse.Namespace, result: dict, row: dict) -> None:
    """One JSON line to stderr per measurement, and everything so far to --out (a run cut short by a
    time limit keeps what it measured)."""
    print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def run(args: argparse.Namespace) -> dict:
    accelerator = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    precision = "bf16-true" if accelerator == "cuda" else "32-true"  # as the loop on a CPU
    dtype = torch.bfloat16 if accelerator == "cuda" else torch.float32
    fabric = L.Fabric(accelerator=accelerator, devices=1, precision=precision)  # type: ignore[arg-type]
    device = fabric.device
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    for mode in {v.mode for v in variants} | ({args.serve_mode} - {"none"}):
        if mode != "bf16":
            check_quantize_support(mode, device)
    config = lora_config(args.model, args.smoke)
    max_length = min(config.block_size, 640)
    examples = chat_examples(4096, config.vocab_size, seed=0, max_length=max_length)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torchao": _version("torchao"),
        "litgpt": _version("litgpt"),
        "model": config.name + (" (smoke: 2 layers, width 128)" if args.smoke else ""),
        "lora": "r=16 alpha=32 dropout=0.05 on q,v",
        "precision": precision,
        "global_batch": args.global_batch,
        "command": " ".join(["python", *sys.argv]),
        "train": {},
        "serve": {},
    }
    if args.serve_nf4:  # the serving rows only, no training
        check_quantize_support(args.serve_nf4_mode, device)
        result["model"] = args.serve_models + (" (smoke: 2 layers, width 128)" if args.smoke else "")
        serve_nf4_rows(args, fabric, dtype, result)
        return result
    by_mode: dict[str, list[Variant]] = {}
    for v in variants:
        by_mode.setdefault(v.mode, []).append(v)
    serve_model: GPT | None = None
    for mode, mode_variants in by_mode.items():
        built = build(fabric, config, mode, dtype)
        result["train"][f"{mode} model"] = built.info
        report(args, result, {f"{mode} model": built.info})
        for v in mode_variants:
            set_variant(built.model, v.compiled_dequant, v.checkpointing, v.compiled_blocks)
            warmup = args.warmup + (2 if v.compiled_blocks else 0)
            steps = planned_steps(examples, v.tokens, warmup + args.steps, max_length, args.global_batch)
            try:
                row = train_variant(fabric, built, steps, examples, warmup)
            except torch.OutOfMemoryError as e:
                row = {"error": f"CUDA out of memory: {str(e).splitlines()[0]}"}
            result["train"][v.name] = row
            report(args, result, {v.name: row})
        if mode == args.serve_mode:
            serve_model = built.model  # reused below rather than quantized again
        del built
        cleanup(device)
    if args.serve_mode != "none":
        if serve_model is None:
            built = build(fabric, config, args.serve_mode, dtype)
            result["serve"][f"{args.serve_mode} model"] = built.info
            serve_model = built.model
            del built
        for how in args.decode.split(","):
            try:
                if how == "engine":
                    set_variant(serve_model, False, checkpointing=False, compiled_blocks=False)
                    strip_unused_lora(serve_model)
                    row = engine_decode(serve_model, args.prompt_tokens, args.new_tokens, device)
                else:
                    row = decode_variant(serve_model, args.prompt_tokens, args.new_tokens, device, how)
            except Exception as e:  # a bench records a failing path and goes on to the next
                row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            result["serve"][how] = row
            report(args, result, {f"decode {how}": row})
    bf16 = [
        k for k in result["train"] if k.startswith("bf16") and "@" in k and "error" not in result["train"][k]
    ]
    if bf16:
        reference = result["train"][bf16[0]]["non_pad_tokens_per_s"]
        for name, row in result["train"].items():
            if "@" in name and "non_pad_tokens_per_s" in row:
                row["vs_bf16"] = round(row["non_pad_tokens_per_s"] / reference, 3)
    return result


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny config on the CPU (checks the script runs)"
    )
    parser.add_argument("--model", default="falcon-7b", help="litgpt config name (random weights)")
    parser.add_argument("--variants", default=None, help=f"comma-separated; default {DEFAULT_VARIANTS}")
    parser.add_argument("--global-batch", type=int, default=TrainArgs().global_batch_size)
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per variant")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant")
    parser.add_argument(
        "--serve-mode", default="nf4-dq", help="base for the decode test: nf4, nf4-dq or none"
    )
    parser.add_argument(
        "--decode",
        default="eager,cd",
        help="decode variants, in order: eager, cd (compiled dequantization), compiled (the whole step, "
        "CUDA graphs), engine (serve's engine, last: it rewires the model)",
    )
    parser.add_argument(
        "--serve-nf4",
        action="store_true",
        help="only the serving rows: the engine's batch-1 decoding, NF4 base vs bf16, with their ceilings",
    )
    parser.add_argument("--serve-models", default=SERVE_MODELS, help="litgpt config names for --serve-nf4")
    parser.add_argument("--serve-nf4-mode", default="nf4-dq", help="the NF4 mode of --serve-nf4: nf4, nf4-dq")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.variants is None:
        args.variants = SMOKE_VARIANTS if args.smoke else DEFAULT_VARIANTS
    if args.smoke:
        args.global_batch, args.steps = min(args.global_batch, 16), min(args.steps, 2)
        args.prompt_tokens, args.new_tokens = min(args.prompt_tokens, 64), min(args.new_tokens, 24)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
