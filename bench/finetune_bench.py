"""Fine-tuning throughput of our loop at Falcon-7B's and Llama-3.1-8B's shapes, with Hugging Face
transformers + PEFT in the same run and plain `litgpt finetune_lora` (`--anchor`) as anchors.

    python bench/finetune_bench.py --model falcon-7b,llama-3.1-8b --out $OUT/finetune_bench.json
                                                      # GPU: both shapes' key rows, within 10 minutes
    python bench/finetune_bench.py --configs all      # GPU: every row at Falcon-7B's shape
    python bench/finetune_bench.py --anchor           # GPU: litgpt 0.5.13 `finetune_lora`, its defaults
    python bench/finetune_bench.py --smoke --model falcon-7b,llama-3.1-8b   # CPU: tiny models
    python bench/finetune_bench.py --quality 40 --out $OUT/quality.json   # GPU: bf16 vs packed vs fp8 loss

Weights are random (bf16; fp32 on a CPU): speed does not depend on their values. `--smoke` builds a
2-layer, 128-wide model of each family: Falcon's (parallel residual, shared LayerNorm, multi-query
attention, GELU MLP) and Llama's (sequential residual, RMSNorm, grouped-query attention, SwiGLU MLP).
The data are synthetic chat records whose token lengths spread like real chats (log-normal, ~60–600
tokens, median ~180), rendered with our prompt and tokenized by a byte-level BPE trained on them; every
row, the Hugging Face ones and the litgpt anchor included, trains on the very same records.

Rows (`--configs`, comma-separated, in priority order; ours run first, then Hugging Face's):
- ours-* and naive-*: `finetune.model.train_step` (the training loop's own code) on litgpt's LoRA GPT
  through Fabric. `naive` = micro-batches of 8 sequences in data order, each padded to its longest;
  `ours` = the loop's batching (length-grouped steps cut into micro-batches under a token budget);
  `packed` = `--packing` (several records per row, FlexAttention's per-record causal mask on CUDA);
  `compile` = `--compile`; `ac` = `--activation-checkpointing`; 2k/3k/16k = `--micro-batch-tokens`;
  `fp8` = `--base-precision fp8` (the frozen base in FP8 through scaled FP8 GEMMs; Hopper-class GPUs
  only, skipped with the reason elsewhere).
- hf-*: transformers + PEFT as a user of Trainer gets it (bench/hf_anchor.py): length-grouped batches,
  `torch.compile` of the whole model (or `regional`), `gc` = gradient checkpointing.
Each row runs warm-up steps (compiling where asked), then `--steps` timed optimizer steps of
`--global-batch` sequences between two `torch.cuda.synchronize()`; peak memory is reset per row.

Per row: non-pad tokens/s; MFU and model TFLOP/s by bench/train_flops.py's count of the matmuls the
step needs (per-layer shapes; frozen weights forward + input-gradient; LoRA with weight-gradients;
attention on the real lengths; the LM head on reply tokens only, as our loop runs it; no embedding)
over the device's dense bf16 peak, picked by its name and stated in the JSON with the measured matmul
rate; executed TFLOP/s (padding, the head where it runs, recomputation) beside them; peak memory.

`--quality STEPS` (the guard for packing and FP8): the bf16 padded row, the packed row and the FP8 row
each train `STEPS` optimizer steps from the same seeded weights on the same records (`--records` less
a held-out eighth) at `--quality-lr`, then each is validated on the held-out records in padded
micro-batches; the JSON gives each row's validation loss and its relative difference to the bf16 row
(the bar: within 1%). Weights are random, so this guards the numerics, not a real model's quality.

`--time-budget` (seconds for the whole run): a row starts only if its estimate, plus those of the
higher-priority rows still to come (at this shape and the next), fits what is left; the others are
listed as skipped. With `--out` the JSON is rewritten after every row, so a run cut short still leaves
its numbers.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import io
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from litgpt.lora import GPT, Block, Config, LoRALinear, mark_only_lora_as_trainable
from litgpt.prompts import Alpaca
from litgpt.tokenizer import Tokenizer
from torch._dynamo.utils import counters

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # the repo's packages, and this folder's helpers

import hf_anchor as hf  # noqa: E402
import train_flops as flops  # noqa: E402

from finetune import packing  # noqa: E402
from finetune.data import (  # noqa: E402
    BatchPlan,
    Example,
    MicroBatch,
    Step,
    collate,
    encode_records,
    make_micro_batch,
    render_texts,
)
from finetune.fp8 import fp8_unavailable, quantize_base_fp8  # noqa: E402
from finetune.model import (  # noqa: E402
    CheckpointedBlock,
    attach_loss_positions,
    batch_loss,
    compile_blocks,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)
from finetune.packing import enable_packing  # noqa: E402
from finetune.tiny import EOS_TOKEN, train_tokenizer  # noqa: E402
from prepare.records import Record  # noqa: E402

MODELS = {"falcon-7b": "falcon-7b", "llama-3.1-8b": "Llama-3.1-8B"}
"""--model names → litgpt `Config.from_name` names."""
SMOKE_SHAPES: dict[str, dict[str, int]] = {
    "falcon-7b": dict(n_layer=2, n_embd=128, n_head=4, head_size=32, n_query_groups=1, intermediate_size=512),
    "llama-3.1-8b": dict(
        n_layer=2, n_embd=128, n_head=4, head_size=32, n_query_groups=2, intermediate_size=352
    ),
}
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.05
WORDS = 1000
PER_MODEL_BUDGET_S = 255.0
"""Default --time-budget per model on a GPU: two shapes, with the imports before the clock starts and a
last row running over, fit one 10-minute call."""
BUILD_ESTIMATE_S = {"ours": 15.0, "hf": 20.0}
"""GPU seconds to build a 7–8B model with random weights (charged to the first row that needs it)."""
MAX_24GB = 24e9
"""What the allocator reserved must fit: a 24 GB card has ~23.6 GB usable at most."""


@dataclass(frozen=True)
class BenchConfig:
    name: str
    batching: str
    """"ours": length-grouped steps cut into micro-batches under a token budget; "naive": fixed-size
    micro-batches in data order, each padded to its longest sequence (what a plain loop does); "packed":
    `--packing`, several records per row."""
    micro_batch_tokens: int = 8192
    micro_batch_size: int = 64
    compile: bool = False
    activation_checkpointing: bool = False
    base_precision: str = "bf16"
    """"bf16", or "fp8" (`finetune.fp8`: the frozen base's matmuls in scaled FP8)."""
    step_s: float = 2.0
    """Guessed GPU seconds per optimizer step of 128 chat sequences at a 7–8B shape (time budget)."""
    compile_s: float = 0.0
    """Guessed GPU seconds to compile (the warm-up's extra time)."""
    packed_attention: str = "flex"
    """Packed rows on CUDA: "flex" (FlexAttention) or "varlen" (`finetune.packing.PACKED_ATTENTION`)."""
    note: str = ""


CONFIGS = [  # in run order: what needs a new compile (checkpointed blocks) comes late
    BenchConfig(
        "naive-eager", "naive", micro_batch_size=8, step_s=3.5, note="plain loop: 8 sequences, padded"
    ),
    BenchConfig("ours-eager", "ours", step_s=2.1),
    BenchConfig("ours-compile", "ours", compile=True, step_s=1.5, compile_s=45),
    BenchConfig("ours-compile-16k", "ours", micro_batch_tokens=16384, compile=True, step_s=1.4, compile_s=45),
    BenchConfig("ours-compile-3k", "ours", micro_batch_tokens=3072, compile=True, step_s=1.9, compile_s=45),
    BenchConfig(
        "ours-compile-2k",
        "ours",
        micro_batch_tokens=2048,
        compile=True,
        step_s=1.9,
        compile_s=45,
        note="<= 24 GB setting",
    ),
    BenchConfig("naive-compile", "naive", micro_batch_size=8, compile=True, step_s=3.0, compile_s=45),
    BenchConfig(
        "ours-compile-ac", "ours", compile=True, activation_checkpointing=True, step_s=2.0, compile_s=60
    ),
    BenchConfig(
        "ours-compile-ac-16k",
        "ours",
        micro_batch_tokens=16384,
        compile=True,
        activation_checkpointing=True,
        step_s=1.9,
        compile_s=60,
    ),  # fmt: skip
    BenchConfig("ours-eager-ac", "ours", activation_checkpointing=True, step_s=2.2, note="<= 24 GB setting"),
    BenchConfig("packed-eager", "packed", step_s=2.0, note="--packing"),
    BenchConfig("packed-compile", "packed", compile=True, step_s=1.4, compile_s=60, note="--packing"),
    BenchConfig(
        "packed-compile-ac-3k",
        "packed",
        micro_batch_tokens=3072,
        compile=True,
        activation_checkpointing=True,
        step_s=1.9,
        compile_s=60,
        note="<= 24 GB setting, packed",
    ),
    BenchConfig(
        "fp8-compile",
        "ours",
        compile=True,
        base_precision="fp8",
        step_s=1.2,
        compile_s=60,
        note="--base-precision fp8 --compile",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile",
        "packed",
        compile=True,
        base_precision="fp8",
        step_s=1.1,
        compile_s=60,
        note="--base-precision fp8 --packing --compile",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile-16k",
        "packed",
        micro_batch_tokens=16384,
        compile=True,
        base_precision="fp8",
        step_s=1.1,
        compile_s=60,
        note="fp8, packed, 16k-token micro-batches",
    ),  # fmt: skip
    BenchConfig(
        "packed-compile-varlen",
        "packed",
        compile=True,
        step_s=1.3,
        compile_s=60,
        packed_attention="varlen",
        note="bf16, packed, FlashAttention varlen instead of FlexAttention",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile-varlen",
        "packed",
        compile=True,
        base_precision="fp8",
        step_s=1.0,
        compile_s=60,
        packed_attention="varlen",
        note="fp8, packed, FlashAttention varlen",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile-16k-varlen",
        "packed",
        micro_batch_tokens=16384,
        compile=True,
        base_precision="fp8",
        step_s=1.0,
        compile_s=60,
        packed_attention="varlen",
        note="fp8, packed, 16k-token micro-batches, FlashAttention varlen",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile-4k",
        "packed",
        micro_batch_tokens=4096,
        compile=True,
        base_precision="fp8",
        step_s=1.2,
        compile_s=60,
        note="<= 24 GB setting: fp8, packed, 4k-token micro-batches",
    ),  # fmt: skip
    BenchConfig(
        "fp8-packed-compile-ac",
        "packed",
        compile=True,
        activation_checkpointing=True,
        base_precision="fp8",
        step_s=1.5,
        compile_s=60,
        note="<= 24 GB setting: fp8, packed, activation checkpointing",
    ),  # fmt: skip
]
KEY_ROWS = [
    "ours-compile",
    "hf-compile",
    "ours-eager-ac",
    "hf-eager-gc",
    "ours-compile-2k",
    "hf-regional-gc",
    "hf-compile-gc",
]
"""The default rows, in priority order: our default setting and the anchor's (both compiled), then the
<= 24 GB settings, cheapest first, so each side has one at each shape within the default budget; the
compiled <= 24 GB ones (ours' best so far, and Hugging Face's) run when the time allows."""
SMOKE_ROWS = ["ours-eager", "hf-eager", "ours-eager-ac", "hf-eager-gc", "naive-eager", "packed-eager"]
SMOKE_ROWS += ["fp8-compile"]  # skipped on a CPU, with the reason
ALL_ROWS = [c.name for c in CONFIGS] + [r.name for r in hf.HF_ROWS]
Row = BenchConfig | hf.HFRow


# ------------------------------------------------------------------------------------------------ data
def synthetic_records(n: int, seed: int) -> list[Record]:
    """Chat records in prepare's format with a skewed length spread (in words ≈ BPE tokens)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(WORDS)]

    def words(k: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(max(1, k)))

    records = []
    for i in range(n):
        total = min(600, max(60, int(rng.lognormvariate(math.log(180), 0.6))))
        reply = min(120, max(2, int(rng.lognormvariate(math.log(18), 0.7))))
        message = rng.randint(3, 15)
        context_words = max(0, total - 60 - reply - message)
        turns, lines = context_words // 12, []
        for t in range(turns):
            lines.append(f"{'Me' if t % 2 else 'Alex'}: {words(context_words // max(turns, 1) - 2)}")
        records.append(
            Record(
                instruction=words(message),
                context="\n".join(lines),
                response=words(reply),
                dialog_id=i % 50,
                date="2024-01-01T00:00:00+00:00",
                partner="Alex",
            )
        )
    return records


def tokenizer_texts(records: list[Record]) -> list[str]:
    """Texts to train the BPE on: both prompt templates (ours and litgpt's alpaca) are common words to
    it, as English is to Falcon's tokenizer, so neither side pays for a template it does not know."""
    alpaca = Alpaca()
    sample = records[:2000]
    texts = render_texts(sample)
    texts += [alpaca.apply(r.instruction, input=r.context) + r.response for r in sample]
    return texts


def write_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> Tokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(texts, vocab_size).save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer(folder)


@dataclass
class Data:
    records: list[Record]
    tokenizer: Tokenizer
    examples: list[Example]
    truncated: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.eos_id or 0

    def summary(self) -> dict[str, Any]:
        lengths = sorted(len(e) for e in self.examples)
        return {
            "records": len(self.examples),
            "truncated": self.truncated,
            "length_tokens": {
                "mean": round(sum(lengths) / len(lengths), 1),
                "p10": lengths[len(lengths) // 10],
                "p50": lengths[len(lengths) // 2],
                "p90": lengths[len(lengths) * 9 // 10],
                "max": lengths[-1],
            },
            "reply_token_fraction": round(sum(e.loss_tokens for e in self.examples) / sum(lengths), 3),
        }


def make_data(args: argparse.Namespace, tokenizer_dir: Path | None = None) -> Data:
    """The synthetic records, a BPE trained on them (its files kept in `tokenizer_dir` if given), encoded."""
    records = synthetic_records(args.records, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(tokenizer_dir or Path(tmp), tokenizer_texts(records), 16384)
    encoded = encode_records(records, tokenizer, args.max_seq_length)
    return Data(records, tokenizer, encoded.examples, encoded.truncated)


def naive_steps(examples: list[Example], global_batch: int, micro_batch_size: int, steps: int) -> list[Step]:
    """Steps of `global_batch` sequences in shuffled order, micro-batches of `micro_batch_size`."""
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    out = []
    for s in range(steps):
        chunk = order[s * global_batch : (s + 1) * global_batch]
        mbs: list[MicroBatch] = []
        for k in range(0, len(chunk), micro_batch_size):
            idx = chunk[k : k + micro_batch_size]
            mbs.append(make_micro_batch(idx, -(-max(len(examples[i]) for i in idx) // 8) * 8, examples))
        out.append(
            Step(
                micro_batches=mbs,
                global_loss_tokens=sum(mb.loss_tokens for mb in mbs),
                global_tokens=sum(mb.tokens for mb in mbs),
                global_padded_tokens=sum(mb.padded_tokens for mb in mbs),
            )
        )
    return out


def planned_steps(examples: list[Example], cfg: BenchConfig, args: argparse.Namespace, n: int) -> list[Step]:
    if cfg.batching == "naive":
        return naive_steps(examples, args.global_batch, cfg.micro_batch_size, n)
    plan = BatchPlan(
        examples=examples,
        global_batch_size=args.global_batch,
        micro_batch_tokens=cfg.micro_batch_tokens,
        micro_batch_size=cfg.micro_batch_size,
        pad_multiple=8,
        max_length=args.max_seq_length,
        seed=0,
        length_grouping=4,
        packing=cfg.batching == "packed",
    )
    steps: list[Step] = []
    epoch = 0
    while len(steps) < n:
        steps += list(plan.steps(epoch))
        epoch += 1
    return steps[:n]


# ----------------------------------------------------------------------------------------------- model
def model_config(model: str, args: argparse.Namespace, vocab_size: int, lora_r: int = LORA_R) -> Config:
    """litgpt's config of `model` (a tiny one of its family with --smoke), LoRA on --lora-targets."""
    targets = set(args.lora_targets)
    lora_kwargs = dict(
        lora_r=lora_r,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        lora_query="q" in targets,
        lora_key="k" in targets,
        lora_value="v" in targets,
        lora_projection="proj" in targets,
        lora_mlp="mlp" in targets,
        lora_head="head" in targets,
    )
    if not args.smoke:
        return Config.from_name(MODELS[model], **lora_kwargs)
    config = Config.from_name(
        MODELS[model],
        block_size=1024,
        vocab_size=vocab_size,
        padded_vocab_size=-(-vocab_size // 64) * 64,
        **SMOKE_SHAPES[model],
        **lora_kwargs,
    )
    config.name = f"tiny-{model}-bench"
    return config


@torch.no_grad()
def randomize(model: torch.nn.Module) -> None:
    """Random weights (an empty-initialised model holds garbage); LoRA A random, B small."""
    for name, p in model.named_parameters():
        if "norm" in name or "ln_f" in name:
            p.fill_(1.0) if name.endswith("weight") else p.zero_()
        else:
            p.normal_(0.0, 0.02)
    for m in model.modules():
        if isinstance(m, LoRALinear) and hasattr(m, "lora_B"):
            m.lora_B.normal_(0.0, 1e-3)


def use_packed_attention(cfg: BenchConfig) -> None:
    """The row's attention for packed rows (process-wide, as `finetune.packing` reads it); a varlen row
    where this torch has no variable-length attention is refused."""
    if cfg.packed_attention == "varlen" and packing.VARLEN_ATTENTION is None:
        raise RuntimeError(f"{cfg.name}: torch {torch.__version__} has no torch.nn.attention.varlen")
    packing.PACKED_ATTENTION = cfg.packed_attention


def set_lora_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout of `model` (litgpt's LoRA dropouts: its only ones) at probability `p`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def set_speed_options(model: GPT, compile: bool, checkpointing: bool) -> None:
    for block in model.transformer.h:
        block.__class__ = CheckpointedBlock if checkpointing else Block
        block._compiled_call_impl = None
        block.__dict__.pop("compile_backend", None)  # CheckpointedBlock's compile-inside flag
    if compile:
        compile_blocks(model)


def adapter_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" in k}, buffer)
    return buffer.tell()


def release_memory() -> None:
    """Drop compiled graphs and cached blocks, so the next model or row starts from a clean device."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Ours:
    """Our loop's model, wrapped by Fabric, with its optimizer and loss-position hook."""

    fabric: L.Fabric
    model: GPT
    fabric_model: Any
    head: Any
    optimizer: Any
    base_precision: str = "bf16"


def build_ours(
    fabric: L.Fabric, config: Config, args: argparse.Namespace, base_precision: str = "bf16"
) -> Ours:
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    randomize(model)
    model.max_seq_length = args.max_seq_length
    model.reset_parameters()  # the rope cache, now on the device
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model)
    enable_packing(model)  # packed batches take the packed path; padded ones run litgpt's forward as is
    if base_precision == "fp8":
        quantize_base_fp8(model)
    head = attach_loss_positions(model)
    fabric_model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(make_optimizer(fabric_model, 1e-4, 0.01, fabric.device))
    return Ours(fabric, model, fabric_model, head, optimizer, base_precision)


# ------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Timing:
    warmup_s: float
    timed_s: float
    loss: torch.Tensor
    """The last timed step's loss sum (on the device)."""
    graphs_compiled: int
    """Graphs torch.compile compiled during the timed steps: 0 unless a step met a new shape."""
    allocated_at_start: int
    """Bytes allocated when the row started (the model's weights; more would be a leak)."""


def time_steps(run: Callable[[Any], torch.Tensor], steps: Sequence[Any], warmup: int, cuda: bool) -> Timing:
    """Warm-up steps, then the timed ones between two synchronizations: the same method for every row."""
    release_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    for step in steps[:warmup]:
        run(step)
    if cuda:
        torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in steps[warmup:]:
        loss = run(step)
    if cuda:
        torch.cuda.synchronize()
    graphs = counters["stats"]["unique_graphs"] - graphs
    return Timing(t_warm, time.perf_counter() - t0, loss, graphs, allocated)


@dataclass
class Env:
    """What every row of the run shares."""

    args: argparse.Namespace
    data: Data
    device: torch.device
    peak: dict[str, Any]
    t_start: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def row_metrics(
    env: Env, timing: Timing, indices: Sequence[Sequence[int]], padded: int, executed: float,
    last_loss_tokens: int, shape: flops.Shape, steps: int,
) -> dict[str, Any]:  # fmt: skip
    """Throughput, FLOP rates and memory of the timed steps; `indices`: each timed micro-batch's."""
    examples = env.data.examples
    lengths = [len(examples[i]) for mb in indices for i in mb]
    loss_tokens = sum(examples[i].loss_tokens for mb in indices for i in mb)
    nonpad = sum(lengths)
    model = flops.model_flops(shape, lengths, loss_tokens)
    spec = env.peak.get("spec_dense_bf16_tflops")
    measured = env.peak.get("measured_matmul_bf16_tflops_this_run") or env.peak.get(
        "measured_matmul_bf16_tflops"
    )
    dt = timing.timed_s
    achieved = model / dt / 1e12
    return {
        "nonpad_tokens_per_s": round(nonpad / dt, 1),
        "tokens_per_s": round(padded / dt, 1),
        "padding_fraction": round(1 - nonpad / padded, 4),
        "mfu": round(achieved / spec, 4) if spec else None,
        "mfu_of_measured_peak": round(achieved / measured, 4) if measured else None,
        "model_tflops": float(f"{achieved:.4g}"),
        "executed_tflops": float(f"{executed / dt / 1e12:.4g}"),
        "model_gflop_per_nonpad_token": round(model / nonpad / 1e9, 3),
        "step_s": round(dt / steps, 3),
        "warmup_s": round(timing.warmup_s, 1),
        "graphs_compiled_in_timed_steps": timing.graphs_compiled,
        "timed_steps": steps,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if env.cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if env.cuda else None,
        "allocated_at_start_gib": round(timing.allocated_at_start / 2**30, 2) if env.cuda else None,
        "last_step_loss": round(timing.loss.item() / max(last_loss_tokens, 1), 4),
    }


def run_ours(env: Env, ours: Ours, cfg: BenchConfig, shape: flops.Shape) -> dict[str, Any]:
    args, examples = env.args, env.data.examples
    use_packed_attention(cfg)
    set_speed_options(ours.model, cfg.compile, cfg.activation_checkpointing)
    warmup = args.warmup + (args.compile_warmup if cfg.compile else 0)
    steps = planned_steps(examples, cfg, args, warmup + args.steps)

    def run(step: Step) -> torch.Tensor:
        return train_step(
            ours.fabric, ours.fabric_model, ours.optimizer, ours.head, step, examples, env.data.pad_id, 1.0
        )

    timing = time_steps(run, steps, warmup, env.cuda)
    timed = steps[warmup:]
    mbs = [mb for s in timed for mb in s.micro_batches]
    executed = flops.executed_flops(  # packed rows: attention counted dense over each row (an upper bound)
        shape,
        ((mb.n_rows, mb.length) for mb in mbs),
        head_tokens=sum(mb.loss_tokens for mb in mbs),
        recompute=cfg.activation_checkpointing,
    )
    padded = sum(s.global_padded_tokens for s in timed)
    indices = [mb.indices for mb in mbs]
    last_loss_tokens = timed[-1].global_loss_tokens
    metrics = row_metrics(env, timing, indices, padded, executed, last_loss_tokens, shape, len(timed))
    if args.profile:  # one more step under torch.profiler: where the time of a step goes, by kernel
        from decode_profile import kernel_breakdown

        metrics["profile"] = kernel_breakdown(lambda: run(steps[-1]), env.device, n=1)
    return {
        "config": cfg.name,
        "family": "ours",
        "batching": cfg.batching,
        "micro_batch_tokens": cfg.micro_batch_tokens if cfg.batching != "naive" else None,
        "micro_batch_size": cfg.micro_batch_size,
        "compile": cfg.compile,
        "activation_checkpointing": cfg.activation_checkpointing,
        "base_precision": cfg.base_precision,
        "micro_batches_per_step": round(len(mbs) / len(timed), 1),
        **metrics,
        "note": cfg.note,
    }


def run_hf(
    env: Env, model: Any, row: hf.HFRow, config: Config, shape: flops.Shape, hf_shape: flops.Shape
) -> dict[str, Any]:
    args, examples = env.args, env.data.examples
    micro_batch_size = hf.micro_batch_size(row, config)
    hf.set_gradient_checkpointing(model, row.gradient_checkpointing)
    runner = hf.compiled(model, row.compile)
    optimizer = hf.make_optimizer(model, env.device)
    warmup = args.warmup + (args.compile_warmup if row.compile else 0)
    lengths = [len(e) for e in examples]
    steps = hf.length_grouped_steps(lengths, micro_batch_size, args.global_batch, warmup, args.steps, seed=0)

    def run(micro_batches: list[list[int]]) -> torch.Tensor:
        return hf.train_step(
            runner,
            optimizer,
            micro_batches,
            examples,
            env.data.pad_id,
            env.device,
            mark_dynamic=bool(row.compile),
        )

    timing = time_steps(run, steps, warmup, env.cuda)
    mbs = [mb for s in steps[warmup:] for mb in s]
    padded_shapes = [(len(mb), -(-max(lengths[i] for i in mb) // 8) * 8) for mb in mbs]
    padded = sum(b * t for b, t in padded_shapes)
    executed = flops.executed_flops(
        hf_shape,
        padded_shapes,
        head_tokens=padded,  # transformers computes the logits of every position
        recompute=row.gradient_checkpointing,
        embedding_grad=hf.embedding_carries_gradient(model),
    )
    last_loss_tokens = sum(examples[i].loss_tokens for mb in steps[-1] for i in mb)
    metrics = row_metrics(env, timing, mbs, padded, executed, last_loss_tokens, shape, args.steps)
    return {
        "config": row.name,
        "family": "hf",
        "batching": "length-grouped (Trainer group_by_length)",
        "micro_batch_size": micro_batch_size,
        "gradient_accumulation": args.global_batch // micro_batch_size,
        "compile": row.compile or False,
        "gradient_checkpointing": row.gradient_checkpointing,
        "micro_batches_per_step": round(len(mbs) / args.steps, 1),
        **metrics,
        "note": row.note,
    }


# ------------------------------------------------------------------------------------------ flop check
def counted_matmul_flops(run: Callable[[], None], ops: tuple[str, ...]) -> int:
    """Matmul FLOPs that torch's FlopCounterMode sees while `run` runs (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) in ops)


def flop_check(
    env: Env, ours: Ours | None, hf_model: Any, shape: flops.Shape, hf_shape: flops.Shape
) -> dict[str, Any]:
    """train_flops' count against torch's FlopCounterMode on one sequence (no padding, eager), matmuls
    only: on a CPU, SDPA's fused kernel is not counted (and Hugging Face Falcon's attention shows up as
    bmm, so only mm/addmm are compared there)."""
    examples = env.data.examples
    ex = examples[0]
    n, out = len(ex), {}
    if ours is not None:
        batch = collate(make_micro_batch([0], n, examples), examples, env.data.pad_id).to(env.device)
        for checkpointing in (False, True):
            set_speed_options(ours.model, False, checkpointing)

            def run() -> None:
                batch_loss(ours.fabric_model, ours.head, batch).backward()

            counted = counted_matmul_flops(run, ("aten.mm", "aten.bmm", "aten.addmm"))
            ours.optimizer.zero_grad(set_to_none=True)
            expected = flops.step_flops(shape, n, 0, ex.loss_tokens, recompute=checkpointing)["total"]
            out["ours-ac" if checkpointing else "ours"] = round(counted / expected, 6)
    if hf_model is not None:
        inputs = {k: v.to(env.device) for k, v in hf.collate([0], examples, env.data.pad_id, 1).items()}
        for checkpointing in (False, True):
            hf.set_gradient_checkpointing(hf_model, checkpointing)

            def run() -> None:
                hf_model(**inputs).loss.backward()

            counted = counted_matmul_flops(run, ("aten.mm", "aten.addmm"))
            hf_model.zero_grad(set_to_none=True)
            grad = hf.embedding_carries_gradient(hf_model)
            expected = flops.step_flops(hf_shape, n, 0, n, checkpointing, grad)["total"]
            out["hf-gc" if checkpointing else "hf"] = round(counted / expected, 6)
    what = " ".join((flop_check.__doc__ or "").split())
    return {"counted_over_computed": out, "sequence_tokens": n, "what": what}


# ------------------------------------------------------------------------------------------ the run
def family_of(row: Row) -> str:
    return "hf" if isinstance(row, hf.HFRow) else "ours"


def row_kind(row: Row) -> tuple[str, str, bool]:
    if isinstance(row, hf.HFRow):
        return ("hf", row.compile, row.gradient_checkpointing)
    return ("ours", "compile" if row.compile else "", row.activation_checkpointing)


RECOMPILE_SHARE = 0.3
"""What compiling a row costs when a row of the same kind compiled at this shape already (caches)."""


class Planner:
    """Which rows fit the time budget of the whole run. The run is a list of (model, row) in run order
    (model by model); a row starts only if its cost, plus the costs of every later row of higher
    priority (at this shape or the next ones), fits before the deadline, so a lower-priority row never
    takes the time of a higher-priority one, at this shape or the next.

    A row's cost = its steps × its guessed step time + its guessed compile time (less when a row of the
    same kind compiled at this shape already) + building the model if not built yet. Every finished row
    corrects the guesses of the rows after it: step and compile times are scaled by the median ratio of
    measured to guessed so far in this run."""

    def __init__(self, args: argparse.Namespace, runs: list[tuple[str, Row]], deadline: float) -> None:
        self.args, self.runs, self.deadline = args, runs, deadline
        self.priority = {name: k for k, name in enumerate(args.configs)}
        self.step_ratios: list[float] = []
        self.compile_ratios: list[float] = []
        self.built: set[tuple[str, str]] = set()  # (model, family)
        self.compiled: set[tuple[str, tuple[str, str, bool]]] = set()  # (model, row kind)

    def steps(self, row: Row) -> int:
        return self.args.warmup + self.args.steps + (self.args.compile_warmup if row.compile else 0)

    def cost(self, model: str, row: Row) -> float:
        step = row.step_s * statistics.median(self.step_ratios or [1.0])
        compile_s = row.compile_s * statistics.median(self.compile_ratios or [1.0])
        if (model, row_kind(row)) in self.compiled:
            compile_s *= RECOMPILE_SHARE
        return self.steps(row) * step + compile_s

    def fits(self, k: int) -> tuple[bool, str]:
        """Whether run `k` (an index into `runs`) may start now, and if not, why."""
        left = self.deadline - time.perf_counter()
        if self.args.smoke:  # no guesses for a CPU: only the deadline itself
            return left > 0, f"time budget used ({left:.0f} s left)"
        row = self.runs[k][1]
        ahead = [(m, r) for m, r in self.runs[k + 1 :] if self.priority[r.name] < self.priority[row.name]]
        runs = [self.runs[k], *ahead]
        builds = {(m, family_of(r)) for m, r in runs} - self.built
        need = sum(self.cost(m, r) for m, r in runs) + sum(BUILD_ESTIMATE_S[f] for _, f in builds)
        if need <= left:
            return True, ""
        why = f"time budget: this row and the higher-priority ones after it need ~{need:.0f} s"
        return False, f"{why}, {left:.0f} s left"

    def done(self, k: int, result: dict[str, Any]) -> None:
        model, row = self.runs[k]
        self.built.add((model, family_of(row)))
        if "step_s" not in result:
            return
        self.step_ratios.append(result["step_s"] / row.step_s)
        if row.compile and (model, row_kind(row)) not in self.compiled:
            warmup_steps = self.args.warmup + self.args.compile_warmup
            compile_s = max(result["warmup_s"] - warmup_steps * result["step_s"], 0.0)
            self.compile_ratios.append(compile_s / row.compile_s)
        if row.compile:
            self.compiled.add((model, row_kind(row)))


def planned_runs(args: argparse.Namespace) -> list[tuple[str, Row]]:
    """(model, row) in run order: model by model; ours first (new compiles late), then Hugging Face's."""
    every: list[Row] = [*CONFIGS, *hf.HF_ROWS]
    return [(model, row) for model in args.model for row in every if row.name in args.configs]


SHAPE_FIELDS = (
    "n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "padded_vocab_size",
    "mlp_class_name", "norm_class_name", "parallel_residual",
)  # fmt: skip


@dataclass
class OnDevice:
    """One shape's models, built when a row first needs them; at most one on the device at a time."""

    env: Env
    config: Config
    shapes: tuple[flops.Shape, flops.Shape]
    """(ours, Hugging Face's) matmul shapes: they differ in how the q/k/v LoRA is laid out."""
    result: dict[str, Any]
    """The model's JSON entry: what building finds out goes there."""
    ours: Ours | None = None
    hf_model: Any = None

    def our_model(self, base_precision: str = "bf16") -> Ours:
        if self.ours is not None and self.ours.base_precision != base_precision:
            self.ours = None  # the base is converted in place: build it again
            release_memory()
        if self.ours is None:
            env = self.env
            fabric = L.Fabric(
                accelerator=env.device.type, devices=1, precision="32-true" if env.args.smoke else "bf16-true"
            )
            self.ours = build_ours(fabric, self.config, env.args, base_precision)
            trainable = [p for p in self.ours.model.parameters() if p.requires_grad]
            self.result["trainable_params"] = sum(p.numel() for p in trainable)
            self.result["adapter_mib"] = round(adapter_bytes(self.ours.model) / 2**20, 2)
            if env.args.smoke:
                self.result["flop_check"] = flop_check(env, self.ours, None, *self.shapes)
        return self.ours

    def hf(self) -> Any:
        if self.ours is not None:  # one model on the device at a time
            self.ours = None
            release_memory()
        if self.hf_model is None:
            env, args = self.env, self.env.args
            dtype = torch.float32 if args.smoke else torch.bfloat16
            self.hf_model = hf.build_model(
                self.config, args.lora_targets, LORA_R, LORA_ALPHA, LORA_DROPOUT, env.device, dtype
            )
            trainable = [p for p in self.hf_model.parameters() if p.requires_grad]
            self.result["hf_trainable_params"] = sum(p.numel() for p in trainable)
            self.result["hf_lora_modules"] = sorted(self.hf_model.peft_config["default"].target_modules)
            if args.smoke:
                check = flop_check(env, None, self.hf_model, *self.shapes)
                self.result.setdefault("flop_check", check)["counted_over_computed"].update(
                    check["counted_over_computed"]
                )
        return self.hf_model

    def run(self, row: Row) -> dict[str, Any]:
        if isinstance(row, BenchConfig):
            if row.base_precision == "fp8" and (why := fp8_unavailable(self.env.device)):
                return {"config": row.name, "skipped": why}
            return run_ours(self.env, self.our_model(row.base_precision), row, self.shapes[0])
        return run_hf(self.env, self.hf(), row, self.config, *self.shapes)

    def after_error(self) -> None:
        if self.ours is not None:
            self.ours.optimizer.zero_grad(set_to_none=True)
        if self.hf_model is not None:
            self.hf_model.zero_grad(set_to_none=True)

    def release(self) -> None:
        self.ours = self.hf_model = None
        release_memory()


def bench_model(
    env: Env, key: str, planner: Planner, summary: dict[str, Any], write: Callable[[], None]
) -> None:
    """Every wanted row at one model's shape, appended to `summary["models"]` as they finish."""
    args, data = env.args, env.data
    config = model_config(key, args, data.tokenizer.vocab_size if args.smoke else 0)
    shape = flops.model_shape(config, args.lora_targets, LORA_R, "litgpt")
    hf_shape = flops.model_shape(config, args.lora_targets, LORA_R, hf.LORA_LAYOUT[hf.family(config)])
    lengths = [len(e) for e in data.examples]
    per_token = flops.model_flops(shape, lengths, sum(e.loss_tokens for e in data.examples)) / sum(lengths)
    result: dict[str, Any] = {
        "model": key,
        "config": config.name,
        "shape": {k: getattr(config, k) for k in SHAPE_FIELDS},
        "lora": {
            "targets": ",".join(args.lora_targets),
            "r": LORA_R,
            "alpha": LORA_ALPHA,
            "dropout": LORA_DROPOUT,
        },
        "model_gflop_per_nonpad_token": round(per_token / 1e9, 3),
        "results": [],
    }
    summary["models"].append(result)
    models = OnDevice(env, config, (shape, hf_shape), result)
    for k, (model, row) in enumerate(planner.runs):
        if model != key:
            continue
        ok, why = planner.fits(k)
        if not ok:
            out: dict[str, Any] = {"config": row.name, "skipped": why}
        else:
            t_row = time.perf_counter()
            try:
                out = models.run(row)
            except torch.cuda.OutOfMemoryError:
                out = {"config": row.name, "error": "CUDA out of memory"}
            except Exception as e:  # keep the other rows' numbers
                out = {"config": row.name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            if "error" in out:
                models.after_error()
            planner.done(k, out)
            out["row_s"] = round(time.perf_counter() - t_row, 1)
            out["elapsed_s"] = round(time.perf_counter() - env.t_start, 1)
        result["results"].append(out)
        result.update(best_rows(result["results"]))
        print(json.dumps({"model": key, **out}), flush=True)
        write()
    models.release()


def best_rows(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest row of each family, overall and within 24 GB reserved, and ours over Hugging Face's."""
    out: dict[str, Any] = {}
    for fam in ("ours", "hf"):
        done = [r for r in results if r.get("family") == fam and "nonpad_tokens_per_s" in r]
        small = [
            r
            for r in done
            if r["peak_reserved_gib"] is not None and r["peak_reserved_gib"] * 2**30 <= MAX_24GB
        ]
        for label, rows in (("best", done), ("best_within_24gb", small)):
            if rows:
                r = max(rows, key=lambda r: r["nonpad_tokens_per_s"])
                out[f"{fam}_{label}"] = {
                    k: r[k]
                    for k in ("config", "nonpad_tokens_per_s", "mfu", "peak_memory_gib", "peak_reserved_gib")
                }
    for label in ("best", "best_within_24gb"):
        ours, theirs = out.get(f"ours_{label}"), out.get(f"hf_{label}")
        if ours and theirs:
            out[f"speedup_over_hf_{label}"] = round(
                ours["nonpad_tokens_per_s"] / theirs["nonpad_tokens_per_s"], 2
            )
    return out


def measure_matmul_tflops() -> float:
    """bf16 8192³ products on random data (KINDS.md's method): the device's reachable matmul rate."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return round(10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12, 1)


def bench(args: argparse.Namespace, t_start: float) -> dict[str, Any]:
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU check")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = flops.device_peak(name)
    if device.type == "cuda":
        peak["measured_matmul_bf16_tflops_this_run"] = measure_matmul_tflops()
    data = make_data(args)
    env = Env(args, data, device, peak, t_start)
    summary: dict[str, Any] = {
        "bench": "finetune",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": name,
        "peak": peak,
        "versions": versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "global_batch": args.global_batch,
        "data": data.summary(),
        "models": [],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}), flush=True)

    def write() -> None:
        summary["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if args.out:  # after every row: a run cut short still leaves its numbers
            write_json(args.out, summary)

    planner = Planner(args, planned_runs(args), deadline=t_start + args.time_budget)
    for key in args.model:
        bench_model(env, key, planner, summary, write)
    write()
    return summary


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("torch", "lightning", "litgpt", "transformers", "peft", "accelerate"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------- anchor
REPORT_RE = re.compile(r"Tok/sec\s*:\s*([\d.]+)")
TIME_RE = re.compile(r"Training Time\s*:\s*([\d.]+)")
MEMORY_RE = re.compile(r"Memory Used\s*:\s*([\d.]+)")
TOKENS_RE = re.compile(r"Total Tokens \(w/ Padding\)\s*:\s*(\d+)")
ANCHOR_LORA_R, ANCHOR_LORA_TARGETS = 8, ("q", "v")
"""litgpt finetune_lora's defaults (lora_r 8 on query and value)."""


def write_anchor_checkpoint(folder: Path, config: Config, device: str) -> None:
    """Random weights and config into a litgpt checkpoint folder (base model, no LoRA) that already
    holds the tokenizer: as if downloaded."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device).to(dtype)
    randomize(model)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(asdict(config)))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / "lit_model.pth")
    del model
    release_memory()


def anchor(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """Time `litgpt finetune_lora` with its defaults on the same records (JSON data, alpaca prompt)."""
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="anchor-", dir=args.work_dir))
    try:
        folder = work / "checkpoint"
        folder.mkdir()
        prepared = make_data(args, tokenizer_dir=folder)
        records = prepared.records
        vocab = prepared.tokenizer.vocab_size if args.smoke else 0  # a tiny model's vocabulary is the BPE's
        config = model_config(key, argparse.Namespace(**{**vars(args), "lora_targets": ()}), vocab, lora_r=0)
        checkpoint = folder.rename(work / config.name)
        write_anchor_checkpoint(checkpoint, config, "cpu" if args.smoke else "cuda")
        data = work / "data"
        data.mkdir()
        rows = [{"instruction": r.instruction, "input": r.context, "output": r.response} for r in records]
        (data / "train.json").write_text(json.dumps(rows[64:]))
        (data / "val.json").write_text(json.dumps(rows[:64]))
        t_written = time.perf_counter() - t_start
        command = [
            sys.executable, "-m", "litgpt", "finetune_lora", str(checkpoint),
            "--data", "JSON", "--data.json_path", str(data),
            "--train.max_steps", str(args.anchor_steps), "--out_dir", str(work / "out"),
        ]  # fmt: skip
        if args.anchor_precision:
            command += ["--precision", args.anchor_precision]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work
        )
        assert proc.stdout is not None
        lines: list[str] = []
        t_launch = time.perf_counter()
        for line in proc.stdout:
            lines.append(line)
            if MEMORY_RE.search(line) or (args.smoke and REPORT_RE.search("".join(lines[-3:]))):
                break  # the report is out; what follows (final validation, merging 14 GB) is not timed
        proc.kill()
        proc.wait()
        text = "".join(lines)
        tok_s, train_s = REPORT_RE.search(text), TIME_RE.search(text)
        if not tok_s or not train_s:
            raise SystemExit("litgpt printed no performance report; its output ends with:\n" + text[-3000:])
        tokens = TOKENS_RE.search(text)
        memory = MEMORY_RE.search(text)
        # MFU: litgpt's rate times the model FLOPs per token of these records (its alpaca rendering is
        # close to ours in length), LoRA as litgpt's defaults put it
        shape = flops.model_shape(config, ANCHOR_LORA_TARGETS, ANCHOR_LORA_R, "litgpt")
        cuda = torch.cuda.is_available() and not args.smoke
        peak = flops.device_peak(torch.cuda.get_device_name() if cuda else "cpu")
        spec = peak["spec_dense_bf16_tflops"]
        lengths = [len(e) for e in prepared.examples]
        per_token = flops.model_flops(shape, lengths, sum(e.loss_tokens for e in prepared.examples)) / sum(
            lengths
        )
        return {
            "anchor": "litgpt finetune_lora (defaults)",
            "model": key,
            "config": config.name,
            "litgpt": importlib.metadata.version("litgpt"),
            "device": peak["device"],
            "peak": peak,
            "command": " ".join(command[1:]),
            "steps": args.anchor_steps,
            "nonpad_tokens_per_s": float(tok_s.group(1)),  # micro-batch 1: no padding at all
            "training_s": float(train_s.group(1)),
            "tokens": int(tokens.group(1)) if tokens else None,
            "peak_memory_gb": float(memory.group(1)) if memory else None,
            "model_gflop_per_token": round(per_token / 1e9, 3),
            "mfu": round(float(tok_s.group(1)) * per_token / (spec * 1e12), 4) if spec and cuda else None,
            "checkpoint_write_s": round(t_written, 1),
            "litgpt_wall_s": round(time.perf_counter() - t_launch, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------- quality
QUALITY_ROWS = ("ours-compile", "packed-compile", "fp8-compile")
SMOKE_QUALITY_ROWS = ("ours-eager", "packed-eager", "fp8-compile")
QUALITY_BAR = 0.01
"""Most relative difference of a row's validation loss from the bf16 padded row's (issue 18, item 6)."""


@torch.no_grad()
def held_out_loss(ours: Ours, examples: list[Example], pad_id: int, args: argparse.Namespace) -> float:
    """Mean loss per reply token over `examples`, in padded micro-batches, compiled blocks run eagerly."""
    ours.fabric_model.eval()
    plan = BatchPlan(examples, len(examples), 8192, 64, 8, args.max_seq_length, seed=0)
    total = count = 0.0
    with torch.compiler.set_stance("force_eager"):
        for mb in plan.make_step(range(len(examples))).micro_batches:
            batch = collate(mb, examples, pad_id).to(ours.fabric.device)
            total += batch_loss(ours.fabric_model, ours.head, batch).item() * mb.loss_tokens
            count += mb.loss_tokens
    ours.fabric_model.train()
    return total / count


def seeded_row_model(
    args: argparse.Namespace,
    device: torch.device,
    config: Config,
    cfg: BenchConfig,
    lora_dropout: float | None,
) -> Ours:
    """One row's model for `--quality` and `--grad-check`: the same random base and LoRA initialisation
    (seed 0) for every row, the row's precision, packed attention and speed options; `lora_dropout` None
    keeps the bench's."""
    release_memory()
    torch.manual_seed(0)
    precision = "32-true" if args.smoke else "bf16-true"
    fabric = L.Fabric(accelerator=device.type, devices=1, precision=precision)  # type: ignore[arg-type]
    ours = build_ours(fabric, config, args, cfg.base_precision)
    if lora_dropout is not None:
        set_lora_dropout(ours.model, lora_dropout)
    use_packed_attention(cfg)
    set_speed_options(ours.model, cfg.compile, cfg.activation_checkpointing)
    return ours


def quality_run(
    args: argparse.Namespace, device: torch.device, config: Config, cfg: BenchConfig, data: Data,
    train: list[Example], val: list[Example], repeat: int,
) -> tuple[float, float, float]:  # fmt: skip
    """(held-out loss before, after, training seconds) of `args.quality` steps of one row: the same
    random base and LoRA initialisation for every row and repeat; repeats differ by the training RNG."""
    ours = seeded_row_model(args, device, config, cfg, args.quality_dropout)
    for group in ours.optimizer.param_groups:
        group["lr"] = args.quality_lr
    before = held_out_loss(ours, val, data.pad_id, args)
    torch.manual_seed(1000 + repeat)  # LoRA dropout's masks
    t0 = time.perf_counter()
    for step in planned_steps(train, cfg, args, args.quality):
        train_step(ours.fabric, ours.fabric_model, ours.optimizer, ours.head, step, train, data.pad_id, 1.0)
    seconds = time.perf_counter() - t0
    return before, held_out_loss(ours, val, data.pad_id, args), seconds


def quality(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.smoke else "cuda")
    data = make_data(args)
    n_val = max(len(data.examples) // 8, 1)
    train, val = data.examples[:-n_val], data.examples[-n_val:]
    rows = {c.name: c for c in CONFIGS}
    out: dict[str, Any] = {"bench": "finetune-quality", "steps": args.quality, "lr": args.quality_lr}
    out["lora_dropout"] = LORA_DROPOUT if args.quality_dropout is None else args.quality_dropout
    out |= {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "models": []}
    for key in args.model:
        config = model_config(key, args, data.tokenizer.vocab_size if args.smoke else 0)
        results: list[dict[str, Any]] = []
        for name in args.quality_rows:
            cfg = rows[name]
            if cfg.base_precision == "fp8" and (why := fp8_unavailable(device)):
                results.append({"config": name, "skipped": why})
                continue
            repeats = range(args.quality_repeats)
            runs = [quality_run(args, device, config, cfg, data, train, val, r) for r in repeats]
            losses = [after for _, after, _ in runs]
            results.append({
                "config": name, "val_loss_before": round(runs[0][0], 5),
                "val_loss": round(statistics.fmean(losses), 5), "val_losses": [round(v, 5) for v in losses],
                "spread": round(max(losses) - min(losses), 5), "train_s": round(sum(t for *_, t in runs), 1),
                "note": cfg.note,
            })  # fmt: skip
            print(json.dumps({"model": key, **results[-1]}), flush=True)
            if args.out:  # a run cut short keeps its rows
                write_json(args.out, out | {"models": [*out["models"], {"model": key, "results": results}]})
        base = next((r for r in results if r["config"] == results[0]["config"] and "val_loss" in r), None)
        for r in results:
            if base is not None and "val_loss" in r:
                r["rel_diff_to_bf16"] = round(r["val_loss"] / base["val_loss"] - 1, 5)
                r["within_1pct"] = abs(r["rel_diff_to_bf16"]) <= QUALITY_BAR
                # random weights barely move the loss: how the drop itself compares is the sharper test
                drop, base_drop = (
                    r["val_loss_before"] - r["val_loss"],
                    base["val_loss_before"] - base["val_loss"],
                )
                r["drop_ratio_to_bf16"] = round(drop / base_drop, 4) if base_drop else None
                if args.quality_repeats > 1:  # runs of one row differ only by their training RNG (dropout)
                    noise = max(r["spread"], base["spread"])
                    r["diff_beyond_spread"] = abs(r["val_loss"] - base["val_loss"]) > noise
        out["models"].append({"model": key, "config": config.name, "results": results})
        if args.out:
            write_json(args.out, out)
    return out


# ------------------------------------------------------------------------------------------ grad check
def step_gradient(args: argparse.Namespace, device: torch.device, config: Config, cfg: BenchConfig,
                  data: Data, train: list[Example]) -> tuple[float, torch.Tensor]:  # fmt: skip
    """(mean loss per reply token, the LoRA gradient flattened in fp32) of the first planned step of one
    row, from the same random base and LoRA init as every row, with LoRA dropout off: what the row's
    forward and backward compute for the same records, before any optimizer step."""
    ours = seeded_row_model(args, device, config, cfg, lora_dropout=0.0)
    fabric = ours.fabric
    step = planned_steps(train, cfg, args, 1)[0]
    loss_sum = torch.zeros((), device=device)
    for mb in step.micro_batches:
        batch = collate(mb, train, data.pad_id).to(device)
        loss = batch_loss(ours.fabric_model, ours.head, batch)
        fabric.backward(loss * (mb.loss_tokens / step.global_loss_tokens))
        loss_sum += loss.detach().float() * mb.loss_tokens
    grads = [p.grad.detach().float().flatten() for p in ours.model.parameters() if p.grad is not None]
    grad = torch.cat(grads).cpu()
    del ours
    return loss_sum.item() / step.global_loss_tokens, grad


def grad_check(args: argparse.Namespace) -> dict[str, Any]:
    """`--grad-check`: each row's loss and LoRA gradient on the same first step, against the first row's
    (the reference): relative loss difference, gradient cosine and norm ratio, the largest element
    difference relative to the reference's largest element. Padded, packed and FP8 rows computing the
    same step should differ by rounding only; a path that computes something else stands out here."""
    device = torch.device("cpu" if args.smoke else "cuda")
    data = make_data(args)
    n_val = max(len(data.examples) // 8, 1)
    train = data.examples[:-n_val]
    rows = {c.name: c for c in CONFIGS}
    out: dict[str, Any] = {"bench": "finetune-grad-check", "models": []}
    out["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    for key in args.model:
        config = model_config(key, args, data.tokenizer.vocab_size if args.smoke else 0)
        results: list[dict[str, Any]] = []
        ref: tuple[float, torch.Tensor] | None = None
        for name in args.quality_rows:
            cfg = rows[name]
            if cfg.base_precision == "fp8" and (why := fp8_unavailable(device)):
                results.append({"config": name, "skipped": why})
                continue
            loss, grad = step_gradient(args, device, config, cfg, data, train)
            row: dict[str, Any] = {"config": name, "loss": round(loss, 6), "grad_norm": float(grad.norm())}
            if ref is None:
                ref = (loss, grad)
            else:
                ref_loss, ref_grad = ref
                row["loss_rel_diff"] = round(loss / ref_loss - 1, 6)
                row["grad_cosine"] = round(float(F.cosine_similarity(grad, ref_grad, dim=0)), 6)
                row["grad_norm_ratio"] = round(float(grad.norm() / ref_grad.norm()), 6)
                row["grad_max_diff_rel"] = round(
                    float((grad - ref_grad).abs().max() / ref_grad.abs().max()), 6
                )
            results.append(row)
            print(json.dumps({"model": key, **row}), flush=True)
        out["models"].append({"model": key, "config": config.name, "results": results})
        if args.out:
            write_json(args.out, out)
    return out


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU, a tiny model of each family, few steps")
    p.add_argument(
        "--model", default="falcon-7b", help=f"comma list of {', '.join(MODELS)} (default falcon-7b)"
    )
    p.add_argument("--anchor", action="store_true", help="time plain `litgpt finetune_lora` instead")
    p.add_argument(
        "--quality", type=int, default=0, help="STEPS: the bf16/packed/fp8 validation-loss guard instead"
    )
    p.add_argument("--quality-lr", type=float, default=2e-3, help="--quality's learning rate")
    p.add_argument(
        "--quality-dropout", type=float, default=None,
        help=f"--quality: LoRA dropout while training (default {LORA_DROPOUT}; 0: each row's run is "
        "deterministic up to rounding, so the rows' losses differ by their numerics alone)",
    )  # fmt: skip
    p.add_argument(
        "--grad-check", action="store_true",
        help="each --configs row's loss and LoRA gradient on the same first step, against the first row",
    )  # fmt: skip
    p.add_argument(
        "--quality-repeats", type=int, default=1,
        help="--quality: runs of each row differing only by the training RNG (tells noise from bias)",
    )  # fmt: skip
    p.add_argument(
        "--configs",
        default="",
        help="comma list of rows in priority order, or 'all'; rows: "
        + ", ".join(ALL_ROWS)
        + f"\n(default: {','.join(KEY_ROWS)}; with --smoke: {','.join(SMOKE_ROWS)})",
    )
    p.add_argument("--lora-targets", default="q,v", help="comma list of q,k,v,proj,mlp,head (default: q,v)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed optimizer steps per row (default 4; smoke 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per row")
    p.add_argument("--compile-warmup", type=int, default=1, help="extra untimed steps when compiling")
    p.add_argument(
        "--global-batch", type=int, default=None, help="sequences per step (default 128; smoke 16)"
    )
    p.add_argument("--records", type=int, default=None, help="synthetic records (default 4096; smoke 256)")
    p.add_argument("--max-seq-length", type=int, default=1024, help="longer records are truncated")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole run, all models"
        f" (default {PER_MODEL_BUDGET_S:.0f} per model; smoke 900 per model)",
    )
    p.add_argument(
        "--anchor-steps", type=int, default=None, help="litgpt optimizer steps (default 30; smoke 2)"
    )
    p.add_argument("--anchor-precision", default="", help="override litgpt's default precision (bf16-mixed)")
    p.add_argument("--work-dir", default=None, help="where the anchor's checkpoint goes (default: TMPDIR)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every row)")
    p.add_argument(
        "--profile", action="store_true", help="rows of ours: one more step under torch.profiler, by kernel"
    )
    args = p.parse_args(argv)
    problems = []
    args.model = [m.strip().lower() for m in args.model.split(",") if m.strip()]
    problems += [f"unknown --model {m!r} (use {', '.join(MODELS)})" for m in args.model if m not in MODELS]
    args.lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    problems += [f"unknown LoRA target {t!r} (use {','.join(flops.LORA_TARGETS)})" for t in args.lora_targets
                 if t not in flops.LORA_TARGETS]  # fmt: skip
    args.quality_rows = [c.strip() for c in args.configs.split(",") if c.strip()] or list(
        SMOKE_QUALITY_ROWS if args.smoke else QUALITY_ROWS
    )  # --quality: these rows (of ours), the first the reference
    if args.configs == "all":
        args.configs = list(ALL_ROWS)
    else:
        args.configs = [c.strip() for c in args.configs.split(",") if c.strip()] or (
            SMOKE_ROWS if args.smoke else KEY_ROWS
        )
    problems += [f"unknown row {c!r} (see --help)" for c in args.configs if c not in ALL_ROWS]
    smoke = args.smoke
    args.steps = args.steps or (1 if smoke else 4)
    args.global_batch = args.global_batch or (16 if smoke else 128)
    args.records = args.records or (256 if smoke else 4096)
    args.anchor_steps = args.anchor_steps or (2 if smoke else 30)
    args.time_budget = args.time_budget or (900.0 if smoke else PER_MODEL_BUDGET_S) * len(args.model)
    sizes = {r.micro_batch_size or 0 for r in hf.HF_ROWS if r.name in args.configs} - {0}
    sizes |= set(hf.GC_MICRO_BATCH.values())
    if any(args.global_batch % size for size in sizes):
        problems.append(
            f"--global-batch must be a multiple of the Hugging Face micro-batches {sorted(sizes)}"
        )
    if problems:
        p.error("; ".join(problems))
    if smoke and args.anchor and not args.anchor_precision:
        args.anchor_precision = "32-true"  # bf16 autocast on a CPU is far too slow for a smoke test
    return args


def print_table(summary: dict[str, Any]) -> None:
    """The rows as a short table, last in the output (a GPU call returns the output's tail)."""
    print(f"\n{summary.get('device')}  peak {summary.get('peak')}")
    cols = f"{'tok/s':>9} {'MFU':>6} {'TFLOP/s':>8} {'exec':>6} {'GiB':>6} {'resv':>6}"
    print(f"{'model':<13} {'row':<20} {cols}  note")
    for m in summary.get("models", []):
        for r in m["results"]:
            if "nonpad_tokens_per_s" in r:
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
                gib = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
                resv = f"{r['peak_reserved_gib']:.1f}" if r["peak_reserved_gib"] is not None else "-"
                print(
                    f"{m['model']:<13} {r['config']:<20} {r['nonpad_tokens_per_s']:>9,.0f} {mfu:>6}"
                    f" {r['model_tflops']:>8.3g} {r['executed_tflops']:>6.3g} {gib:>6} {resv:>6}  {r['note']}"
                )
            else:
                print(f"{m['model']:<13} {r['config']:<20} {r.get('skipped') or r.get('error')}")
        speedups = {k: v for k, v in m.items() if k.startswith("speedup")}
        if speedups:
            print(f"{m['model']:<13} {speedups}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # a reader (or a kill) never sees half a file


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    # less fragmentation with ragged micro-batches (read at the first CUDA allocation)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.smoke:
        torch.set_num_threads(1)  # a smoke run shares a small CPU; one thread is the robust choice
    if args.anchor:
        summary: dict[str, Any] = {"anchors": []}
        for key in args.model:
            summary["anchors"].append(anchor(args, key))
            if args.out:
                write_json(args.out, summary)
        print(json.dumps(summary, indent=2))
        return 0
    if args.grad_check:
        print(json.dumps(grad_check(args), indent=2))
        return 0
    if args.quality:
        result = quality(args)
        print(json.dumps(result, indent=2))
        return 0 if all(r.get("within_1pct", True) for m in result["models"] for r in m["results"]) else 1
    summary = bench(args, t_start)
    if not args.out:
        print(json.dumps(summary, indent=2))
    print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
