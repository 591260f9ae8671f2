"""Hyperparameters of a fine-tuning run, and the CLI that is generated from them (common/cli.py).

Each dataclass field is one `--kebab-case` flag whose help is the field's docstring, so the defaults live
here and nowhere else. `FinetuneArgs.problems()` collects every bad value into one message.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from common.cli import Parser, dataclass_parser, is_bool_type, parse_dataclasses
from common.quantize import Quantize
from finetune.errors import UserError
from finetune.twin import LoraArgs, PromptFormatChoice

Strategy = Literal["auto", "ddp", "fsdp"]
Precision = Literal["bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true"]
Accelerator = Literal["auto", "cuda", "cpu"]
Optimizer = Literal["adamw", "adamw8bit", "adamw4bit"]
BasePrecision = Literal["same", "fp8"]


@dataclass
class TrainArgs:
    """Optimisation and batching."""

    epochs: int = 3
    """Passes over the training records (the run stops at --epochs or --max-steps, whichever is first)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (none: run all epochs)."""
    global_batch_size: int = 128
    """Sequences per optimizer step, over all devices (gradient accumulation fills it)."""
    micro_batch_tokens: int = 8192
    """Most padded tokens in one forward pass per device: the main memory knob."""
    micro_batch_size: int = 64
    """Most sequences in one forward pass per device."""
    pad_multiple: int = 8
    """Pad each micro-batch's length to a multiple of this (fewer distinct shapes)."""
    length_grouping: int = 4
    """Sort this many steps' worth of sequences by length before cutting them into steps: steps of
    similar lengths pad less (1: every step is a uniform random sample)."""
    max_seq_length: int | None = None
    """Longest sequence in tokens; longer records keep their last tokens (none: the model's block size)."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate, reached after warmup, then cosine decay to zero."""
    warmup_steps: int = 100
    """Linear warmup steps (capped at a tenth of the run)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    optimizer: Optimizer = "adamw"
    """adamw, or torchao's AdamW with 8-/4-bit block-quantized states (less memory for big adapters)."""
    seed: int = 1337
    """Seed of the data order, the LoRA initialisation and dropout."""
    packing: bool | None = None
    """Pack several records into each row (up to --micro-batch-tokens or the max sequence length), with
    attention kept within each record (FlashAttention varlen, or FlexAttention, on CUDA) and positions
    restarting per record: next to no padding; --micro-batch-size then counts rows. Default: on with a
    CUDA GPU (1.26x the unpacked batches on an H200 at Falcon-7B's shape) for a base it supports, bf16 or
    fp8, without FSDP; off on a CPU (dense masks there) and with --quantize (not measured there)."""
    compile: bool = False
    """torch.compile each transformer block (faster on GPUs after a warm-up)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: far less memory, ~30% slower."""


@dataclass
class EvalArgs:
    """Validation, logging and checkpoints."""

    eval_interval: int = 50
    """Validate every this many steps (also before the first step and at the end)."""
    eval_samples: int = 2
    """Sample replies to validation prompts written to the log at each validation."""
    sample_max_new_tokens: int = 48
    """Longest sample reply, in tokens."""
    log_interval: int = 1
    """Write a metrics.csv row every this many steps (each is one device-to-host sync)."""
    save_interval: int = 50
    """Save a resumable checkpoint every this many steps."""
    keep_checkpoints: int = 2
    """Newest resumable checkpoints kept in <out-dir>/checkpoints."""


@dataclass
class RunArgs:
    """Where things are and what runs them."""

    data: Path = Path("data/prepared")
    """prepare's output folder (train.jsonl, val.jsonl)."""
    checkpoint_dir: Path = Path("checkpoints/tiiuae/falcon-7b")
    """litgpt checkpoint of the base model (`make download`, or `python -m finetune.tiny`)."""
    out_dir: Path = Path("out/twin")
    """Where the adapter, hyperparameters, metrics, plot and checkpoints go."""
    resume: bool = False
    """Continue the run in --out-dir from its newest checkpoint."""
    devices: int = 1
    """Devices (GPUs, or CPU processes) to train on."""
    accelerator: Accelerator = "auto"
    """cuda, cpu, or auto (cuda when available)."""
    strategy: Strategy = "auto"
    """Multi-device strategy: ddp (replicated model) or fsdp (sharded); auto picks ddp."""
    precision: Precision = "bf16-true"
    """Numeric precision; on a CPU bf16/16 fall back to 32-true with a warning."""
    quantize: Quantize = "none"
    """QLoRA: the frozen base in 4-bit NF4 (nf4-dq: double-quantized scalers), LoRA in --precision; one
    device; Falcon-7B then trains on a 12-16 GB GPU (needs torchao)."""
    base_precision: BasePrecision = "same"
    """The frozen base's weights and matmuls: same (--precision), or fp8 (e4m3 weights with per-channel
    scales, activations and gradients scaled per row, scaled FP8 GEMMs; Hopper-class GPUs, one device).
    LoRA, optimizer and loss stay in --precision."""
    prompt_format: PromptFormatChoice = "auto"
    """How a conversation becomes a prompt: chat-template (the base's own chat template: instruct/chat
    bases), twin-v1 (the project's template: plain bases), or auto (chat-template when the base has one).
    Saved beside the adapter; serve renders with it."""
    memory_k: int = 0
    """Memory: show each prompt this many of the person's own past exchanges (train split, BM25-ranked,
    never the record's own) and save them beside the adapter as memory.jsonl for serve (0: off)."""


GROUPS: tuple[type, ...] = (RunArgs, TrainArgs, LoraArgs, EvalArgs)


@dataclass
class FinetuneArgs:
    """Every setting of a run, grouped; flattened into the CLI and into hyperparameters.yaml."""

    run: RunArgs = field(default_factory=RunArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def __post_init__(self) -> None:
        self.check()

    def problems(self) -> list[str]:
        t, e, lo, r = self.train, self.eval, self.lora, self.run
        out = []
        positive = {
            "--epochs": t.epochs,
            "--global-batch-size": t.global_batch_size,
            "--micro-batch-tokens": t.micro_batch_tokens,
            "--micro-batch-size": t.micro_batch_size,
            "--pad-multiple": t.pad_multiple,
            "--length-grouping": t.length_grouping,
            "--eval-interval": e.eval_interval,
            "--log-interval": e.log_interval,
            "--save-interval": e.save_interval,
            "--keep-checkpoints": e.keep_checkpoints,
            "--devices": r.devices,
            "--lora-r": lo.lora_r,
            "--lora-alpha": lo.lora_alpha,
        }
        out += [f"{flag} must be at least 1 (got {value})" for flag, value in positive.items() if value < 1]
        if t.max_steps is not None and t.max_steps < 1:
            out.append(f"--max-steps must be at least 1 (got {t.max_steps})")
        if t.max_seq_length is not None and t.max_seq_length < 8:
            out.append(f"--max-seq-length must be at least 8 (got {t.max_seq_length})")
        if t.learning_rate <= 0:
            out.append(f"--learning-rate must be positive (got {t.learning_rate})")
        for flag, value in {"--warmup-steps": t.warmup_steps, "--eval-samples": e.eval_samples}.items():
            if value < 0:
                out.append(f"{flag} must not be negative (got {value})")
        if r.memory_k < 0:
            out.append(f"--memory-k must be 0 (off) or more (got {r.memory_k})")
        if t.weight_decay < 0 or t.grad_clip < 0:
            out.append("--weight-decay and --grad-clip must not be negative")
        if not 0 <= lo.lora_dropout < 1:
            out.append(f"--lora-dropout must be in [0, 1) (got {lo.lora_dropout})")
        if r.devices >= 1 and t.global_batch_size % r.devices:
            out.append(
                f"--global-batch-size ({t.global_batch_size}) must be a multiple of --devices ({r.devices})"
            )
        if not any(getattr(lo, f.name) for f in fields(lo) if f.type in ("bool", bool)):
            out.append("no LoRA target: enable at least one of --lora-query/key/value/projection/mlp/head")
        if r.quantize != "none" and r.devices > 1:
            out.append(
                f"--quantize {r.quantize} trains on one device: drop --devices {r.devices} or --quantize"
            )
        if r.base_precision == "fp8" and r.quantize != "none":
            out.append(f"--base-precision fp8 and --quantize {r.quantize} both set the base: choose one")
        if r.base_precision == "fp8" and r.devices > 1:
            out.append(f"--base-precision fp8 trains on one device: drop --devices {r.devices}")
        if t.compile and r.strategy == "fsdp":
            out.append("--compile is not supported with --strategy fsdp: use --strategy ddp")
        return out

    def check(self) -> None:
        if problems := self.problems():
            raise UserError("; ".join(problems))

    def flat(self) -> dict[str, Any]:
        """All fields at one level (paths as strings): the body of hyperparameters.yaml."""
        flat: dict[str, Any] = {}
        for group in (self.run, self.train, self.lora, self.eval):
            for key, value in asdict(group).items():
                flat[key] = str(value) if isinstance(value, Path) else value
        return flat


# ------------------------------------------------------------------------------------------------- CLI
PROG = "python -m finetune"
DESCRIPTION = "LoRA-fine-tune a litgpt checkpoint (Falcon-7B by default) on prepare's records."


def build_parser() -> Parser:
    """The flags of `python -m finetune`: one per field of `GROUPS`, its docstring the help."""
    return dataclass_parser(GROUPS, prog=PROG, description=DESCRIPTION)


def parse_args(argv: Sequence[str] | None = None) -> FinetuneArgs:
    """FinetuneArgs from command-line flags (a bad flag exits 2 with one line; bad values: `UserError`)."""
    run, train, lora, eval_ = parse_dataclasses(GROUPS, argv, prog=PROG, description=DESCRIPTION)
    return FinetuneArgs(run=run, train=train, lora=lora, eval=eval_)


def to_argv(args: FinetuneArgs) -> list[str]:
    """The command-line flags that `parse_args` turns back into `args` (to launch a run in a subprocess)."""
    argv: list[str] = []
    for group in (args.run, args.train, args.lora, args.eval):
        hints = typing.get_type_hints(type(group))
        for f in fields(group):
            value = getattr(group, f.name)
            flag = "--" + f.name.replace("_", "-")
            if value is None and is_bool_type(hints[f.name]):
                continue  # a switch left to decide (its default)
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, "none" if value is None else str(value)]
    return argv
