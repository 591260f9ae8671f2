"""The training script: `setup()` builds Fabric and launches `main()`; `fit()` is the explicit loop.

Model, config, tokenizer, LoRA layers and chunked cross-entropy are litgpt's, imported. The loop adds
what chat data needs to be fast: length-bucketed micro-batches under a token budget (little padding),
loss normalised by the step's reply tokens (so a step's gradient does not depend on how it is split),
no host sync between log intervals, and an exactly resumable position (data order from the seed,
dropout reseeded from (seed, step, rank), optimizer and scheduler restored).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from litgpt.generate.base import generate
from litgpt.lora import GPT, Block, Config, mark_only_lora_as_trainable
from litgpt.tokenizer import Tokenizer
from litgpt.utils import num_parameters
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.files import make_private_dir
from finetune.args import FinetuneArgs
from finetune.data import BatchPlan, Encoded, collate, encode_records, load_splits, padding_fraction
from finetune.errors import UserError
from finetune.metrics import MetricsFile, Row, format_duration, peak_memory_gib, plot_losses
from finetune.model import (
    LossPositions,
    attach_loss_positions,
    batch_loss,
    compile_blocks,
    enable_activation_checkpointing,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)
from finetune.quantize import (
    QuantizationUnavailableError,
    check_qlora_options,
    load_quantized_model,
    precision_dtype,
)
from finetune.state import (
    Position,
    list_checkpoints,
    load_checkpoint,
    save_adapter,
    save_checkpoint,
    save_hyperparameters,
)
from prepare.prompt import render_record

log = logging.getLogger("finetune")

METRICS_FILE = "metrics.csv"
PLOT_FILE = "loss.png"
CHECKPOINT_FILES = ("lit_model.pth", "model_config.yaml", "tokenizer_config.json")


@dataclass(frozen=True, slots=True)
class Summary:
    """What the run produced (returned on rank 0)."""

    adapter: Path
    steps: int
    epochs: float
    first_val_loss: float
    final_val_loss: float
    nonpad_tokens_per_s: float
    padding_fraction: float
    truncated: int
    seconds: float

    def line(self) -> str:
        return (
            f"adapter: {self.adapter} | val loss {self.first_val_loss:.3f} -> {self.final_val_loss:.3f} | "
            f"{self.steps} steps ({self.epochs:.2f} epochs) in {format_duration(self.seconds)} | "
            f"{self.nonpad_tokens_per_s:,.0f} non-pad tokens/s | padding {self.padding_fraction:.1%}"
        )


# ------------------------------------------------------------------------------------------ set-up
def check_checkpoint_dir(path: Path) -> None:
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        missing.append("tokenizer.json")
    if missing:
        what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise UserError(
            f"no base model checkpoint at {path} ({what}): run `make download` for Falcon-7B, or "
            "`python -m finetune.tiny` for a tiny CPU model and pass --checkpoint-dir checkpoints/tiny-falcon"
        )


def resolve_device(args: FinetuneArgs) -> tuple[str, str]:
    """(accelerator, precision): a CPU runs 32-true, since bf16/16 there is slow or unsupported."""
    accelerator = args.run.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator cuda, but no CUDA GPU is visible: use --accelerator cpu")
    precision = args.run.precision
    if accelerator == "cpu" and precision != "32-true":
        log.warning("precision %s is slow or unsupported on a CPU: falling back to 32-true", precision)
        precision = "32-true"
    return accelerator, precision


def make_strategy(args: FinetuneArgs) -> Any:
    if args.run.devices == 1:
        return "auto"
    if args.run.strategy == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        return FSDPStrategy(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if args.train.activation_checkpointing else None,
            state_dict_type="full",
            limit_all_gathers=True,
            cpu_offload=False,
        )
    return "ddp"


def setup(args: FinetuneArgs) -> Summary | None:
    """Check the inputs, build Fabric and run `main` on every device; rank 0 gets the summary."""
    args.check()
    check_checkpoint_dir(args.run.checkpoint_dir)
    load_splits(args.run.data)  # fail fast, before processes are launched
    accelerator, precision = resolve_device(args)
    try:
        check_qlora_options(args.run.quantize, args.train.optimizer, accelerator, args.run.devices)
    except QuantizationUnavailableError as e:
        raise UserError(str(e)) from None
    try:
        fabric = L.Fabric(
            accelerator=accelerator,
            devices=args.run.devices,
            strategy=make_strategy(args),
            precision=precision,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, MisconfigurationException) as e:  # e.g. more devices than present
        raise UserError(f"cannot train on {args.run.devices} {accelerator} device(s): {e}") from None
    return fabric.launch(main, args, precision)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- model
def build_model(
    fabric: L.Fabric, args: FinetuneArgs, max_seq_length: int, precision: str = "32-true"
) -> tuple[GPT, LossPositions]:
    """litgpt's LoRA GPT (base weights are loaded after set-up, or here in NF4); only LoRA tensors train."""
    config = Config.from_file(args.run.checkpoint_dir / "model_config.yaml", **vars(args.lora))
    fsdp = args.run.strategy == "fsdp" and fabric.world_size > 1
    if args.run.quantize != "none":  # QLoRA: the base reaches the device one NF4 layer at a time
        model = load_quantized_model(
            config, args.run.checkpoint_dir / "lit_model.pth", args.run.quantize, fabric.device,
            precision_dtype(precision),
        )  # fmt: skip
    else:
        with fabric.init_module(empty_init=fsdp):
            model = GPT(config)
    model.max_seq_length = max_seq_length
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model, build_buffers=not fsdp)
    head = attach_loss_positions(model)
    if args.train.activation_checkpointing and not fsdp:  # FSDP wraps blocks itself (make_strategy)
        enable_activation_checkpointing(model)
    if args.train.compile:
        compile_blocks(model)
    return model, head


def load_base_weights(fabric: L.Fabric, model: torch.nn.Module, checkpoint_dir: Path) -> None:
    fabric.load_raw(checkpoint_dir / "lit_model.pth", model, strict=False)


# --------------------------------------------------------------------------------------------- main
def encode_fingerprint(encoded: Encoded) -> str:
    digest = hashlib.sha256()
    for ex in encoded.examples:
        digest.update(ex.input_ids.numpy().tobytes())
        digest.update(ex.prompt_len.to_bytes(4, "little"))
    return digest.hexdigest()[:16]


def main(fabric: L.Fabric, args: FinetuneArgs, precision: str) -> Summary | None:
    t_start = time.perf_counter()
    if not fabric.is_global_zero:
        log.setLevel(logging.WARNING)
    out_dir = args.run.out_dir
    existing = list_checkpoints(out_dir)
    if existing and not args.run.resume:
        raise UserError(
            f"{out_dir} already holds a run (newest checkpoint {existing[-1].name}): "
            "pass --resume to continue it, or choose another --out-dir"
        )
    if fabric.is_global_zero:
        make_private_dir(out_dir)

    tokenizer = Tokenizer(args.run.checkpoint_dir)
    block_size = Config.from_file(args.run.checkpoint_dir / "model_config.yaml").block_size
    max_seq_length = min(args.train.max_seq_length or block_size, block_size)
    train_records, val_records = load_splits(args.run.data)
    train = encode_records(train_records, tokenizer, max_seq_length)
    val = encode_records(val_records, tokenizer, max_seq_length)
    if train.truncated or val.truncated:
        log.warning(
            "%d train and %d val records are longer than %d tokens: truncated to their last %d tokens "
            "(raise --max-seq-length up to the model's block size %d to keep them whole)",
            train.truncated, val.truncated, max_seq_length, max_seq_length, block_size,
        )  # fmt: skip

    plan = BatchPlan(
        examples=train.examples,
        global_batch_size=min(
            args.train.global_batch_size, len(train.examples) // fabric.world_size * fabric.world_size
        ),
        micro_batch_tokens=args.train.micro_batch_tokens,
        micro_batch_size=args.train.micro_batch_size,
        pad_multiple=args.train.pad_multiple,
        max_length=max_seq_length,
        seed=args.train.seed,
        length_grouping=args.train.length_grouping,
        world_size=fabric.world_size,
        rank=fabric.global_rank,
    )
    if plan.global_batch_size < 1:
        raise UserError(
            f"only {len(train.examples)} train records for {fabric.world_size} devices: {RUN_MORE}"
        )
    steps_per_epoch = plan.steps_per_epoch()
    total_steps = steps_per_epoch * args.train.epochs
    if args.train.max_steps is not None:
        total_steps = min(total_steps, args.train.max_steps)
    pad_fraction = padding_fraction(plan)

    hparams = args.flat() | {
        "precision": precision,
        "max_seq_length": max_seq_length,
        "global_batch_size": plan.global_batch_size,
        "total_steps": total_steps,
        "train_records": len(train.examples),
        "val_records": len(val.examples),
        "train_fingerprint": encode_fingerprint(train),
    }

    fabric.seed_everything(args.train.seed, verbose=False)
    model, head = build_model(fabric, args, max_seq_length, precision)
    log.info(
        "model %s: %s trainable LoRA parameters, %s frozen; %d train / %d val records; %d steps of %d "
        "sequences (%d per epoch); padding %.1f%%",
        model.config.name, f"{num_parameters(model, requires_grad=True):,}",
        f"{num_parameters(model, requires_grad=False):,}", len(train.examples), len(val.examples),
        total_steps, plan.global_batch_size, steps_per_epoch, 100 * pad_fraction,
    )  # fmt: skip
    fabric_model = fabric.setup_module(model)
    if args.run.quantize == "none":  # a quantized model was built from the checkpoint
        load_base_weights(fabric, fabric_model, args.run.checkpoint_dir)

    adamw = make_optimizer(
        fabric_model, args.train.learning_rate, args.train.weight_decay, fabric.device, args.train.optimizer
    )
    optimizer: Any = fabric.setup_optimizers(adamw)
    warmup = min(args.train.warmup_steps, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup, total_steps)
    )

    position = Position()
    resume_key = {k: hparams.get(k) for k in hparams}
    if args.run.resume and existing:
        position = load_checkpoint(fabric, existing[-1], fabric_model, optimizer, scheduler, resume_key)
        log.info("resumed from %s (step %d of %d)", existing[-1], position.step, total_steps)
    elif args.run.resume:
        log.warning("--resume: no checkpoint in %s yet, starting from step 0", out_dir / "checkpoints")
    if fabric.is_global_zero:  # only now: a refused resume leaves the out-dir as it was
        save_hyperparameters(out_dir, hparams)

    metrics = MetricsFile(out_dir / METRICS_FILE, position.step if position.step else None)
    loop = Loop(
        fabric, args, fabric_model, head, optimizer, scheduler, plan, val, tokenizer, metrics, resume_key
    )
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            first_val, final_val, nonpad_rate = loop.fit(position, total_steps, steps_per_epoch, val_records)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"CUDA out of memory: lower --micro-batch-tokens (now {args.train.micro_batch_tokens}) or "
            f"--micro-batch-size (now {args.train.micro_batch_size}), or add --activation-checkpointing"
        ) from None

    adapter = save_adapter(fabric, fabric_model, out_dir)
    if not fabric.is_global_zero:
        return None
    save_hyperparameters(out_dir, hparams)
    plot_losses(out_dir / METRICS_FILE, out_dir / PLOT_FILE, f"LoRA on {model.config.name}")
    return Summary(
        adapter=adapter,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        first_val_loss=first_val,
        final_val_loss=final_val,
        nonpad_tokens_per_s=nonpad_rate,
        padding_fraction=pad_fraction,
        truncated=train.truncated + val.truncated,
        seconds=time.perf_counter() - t_start,
    )


RUN_MORE = "add more chats and run `make prepare` again"


def lr_factor(warmup: int, total: int, step: int) -> float:
    """Linear warmup to the peak, then cosine decay towards zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# --------------------------------------------------------------------------------------------- loop
@contextmanager
def eager() -> Iterator[None]:
    """Run compiled blocks eagerly (validation and sampling must not trigger recompiles)."""
    with torch.compiler.set_stance("force_eager"):
        yield


class Loop:
    """fit / validate / sample over one set-up model; state lives in `fit`'s locals and the objects."""

    def __init__(
        self,
        fabric: L.Fabric,
        args: FinetuneArgs,
        model: Any,
        head: LossPositions,
        optimizer: Any,
        scheduler: Any,
        plan: BatchPlan,
        val: Encoded,
        tokenizer: Tokenizer,
        metrics: MetricsFile,
        resume_key: dict[str, Any],
    ) -> None:
        self.fabric, self.args, self.model, self.head = fabric, args, model, head
        self.optimizer, self.scheduler, self.plan = optimizer, scheduler, plan
        self.val, self.tokenizer, self.metrics, self.resume_key = val, tokenizer, metrics, resume_key
        self.pad_id = tokenizer.eos_id or 0
        val_plan = BatchPlan(
            examples=val.examples,
            global_batch_size=len(val.examples),
            micro_batch_tokens=args.train.micro_batch_tokens,
            micro_batch_size=args.train.micro_batch_size,
            pad_multiple=args.train.pad_multiple,
            max_length=plan.max_length,
            seed=0,
            world_size=fabric.world_size,
            rank=fabric.global_rank,
        )
        # sorted by length, every val record once (ranks hold equal counts; a remainder < world_size is
        # left out so that all ranks run the same number of forward passes)
        all_val = list(range(len(val.examples)))
        self.val_step = val_plan.make_step(all_val[: len(all_val) - len(all_val) % fabric.world_size])

    def fit(
        self, position: Position, total_steps: int, steps_per_epoch: int, val_records: list[dict[str, Any]]
    ) -> tuple[float, float, float]:
        fabric, args = self.fabric, self.args
        ev = args.eval
        first_val = final_val = float("nan")
        if position.step == 0:
            first_val = final_val = self.validate_and_log(0, 0.0, val_records)

        bar = tqdm(
            total=total_steps,
            initial=position.step,
            disable=not fabric.is_global_zero,
            unit="step",
            dynamic_ncols=True,
            desc="fine-tuning",
        )
        loss_sum = torch.zeros((), device=fabric.device)
        loss_tokens = 0
        window_tokens = window_nonpad = 0
        total_nonpad, total_time = 0, 0.0
        t_window = time.perf_counter()
        self.model.train()
        while position.step < total_steps:
            for step in islice(self.plan.steps(position.epoch), position.step_in_epoch, None):
                self.seed_step(position.step)
                lr = self.optimizer.param_groups[0]["lr"]
                loss_sum += train_step(
                    fabric,
                    self.model,
                    self.optimizer,
                    self.head,
                    step,
                    self.plan.examples,
                    self.pad_id,
                    args.train.grad_clip,
                )
                self.scheduler.step()
                loss_tokens += sum(mb.loss_tokens for mb in step.micro_batches)
                window_tokens += step.global_padded_tokens
                window_nonpad += step.global_tokens
                position.step += 1
                position.step_in_epoch += 1
                if position.step_in_epoch == steps_per_epoch:
                    position.epoch, position.step_in_epoch = position.epoch + 1, 0
                bar.update(1)
                done = position.step >= total_steps
                epoch = position.step / steps_per_epoch

                if position.step % ev.log_interval == 0 or done:
                    train_loss = self.mean_train_loss(loss_sum, loss_tokens)
                    tokens, nonpad = window_tokens, window_nonpad
                    dt = time.perf_counter() - t_window
                    total_nonpad, total_time = total_nonpad + nonpad, total_time + dt
                    row = Row(
                        step=position.step,
                        epoch=epoch,
                        train_loss=train_loss,
                        lr=lr,
                        tokens_per_s=tokens / dt,
                        nonpad_tokens_per_s=nonpad / dt,
                        peak_memory_gib=peak_memory_gib(fabric.device),
                    )
                    if fabric.is_global_zero:
                        self.metrics.write(row)
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{nonpad / dt:,.0f}")
                    loss_sum.zero_()
                    loss_tokens = window_tokens = window_nonpad = 0
                    t_window = time.perf_counter()

                if position.step % ev.eval_interval == 0 or done:
                    final_val = self.validate_and_log(position.step, epoch, val_records)
                if position.step % ev.save_interval == 0 and not done:
                    save_checkpoint(
                        fabric,
                        args.run.out_dir,
                        self.model,
                        self.optimizer,
                        self.scheduler,
                        position,
                        self.resume_key,
                        ev.keep_checkpoints,
                    )
                if position.step % ev.eval_interval == 0 or position.step % ev.save_interval == 0:
                    t_window = time.perf_counter()  # validation and saving are not training time
                if done:
                    break
        bar.close()
        if math.isnan(first_val):  # resumed: the first validation is in the killed run's metrics
            first_val = self.first_val_from_metrics()
        return first_val, final_val, total_nonpad / total_time if total_time else 0.0

    def seed_step(self, step: int) -> None:
        """Dropout masks depend only on (seed, step, rank): a resumed run draws the same ones."""
        torch.manual_seed(hash((self.args.train.seed, step, self.fabric.global_rank)) & 0x7FFF_FFFF)

    def mean_train_loss(self, loss_sum: torch.Tensor, loss_tokens: int) -> float:
        """Mean loss per reply token since the last log, over all ranks: the one sync of a log row."""
        stats: Any = torch.stack([loss_sum, torch.tensor(float(loss_tokens), device=loss_sum.device)])
        if self.fabric.world_size > 1:
            stats = self.fabric.all_reduce(stats, reduce_op="sum")
        loss, count = stats.tolist()
        return loss / max(count, 1.0)

    def first_val_from_metrics(self) -> float:
        from finetune.metrics import read_rows

        if not self.fabric.is_global_zero:
            return float("nan")
        vals = [r["val_loss"] for r in read_rows(self.metrics.path) if r["val_loss"] is not None]
        return float(vals[0]) if vals else float("nan")

    @torch.no_grad()
    def validate(self) -> float:
        """Mean cross-entropy per reply token over the whole validation set (all ranks)."""
        self.model.eval()
        total: Any = torch.zeros(2, device=self.fabric.device)
        with eager():
            for mb in self.val_step.micro_batches:
                batch = collate(mb, self.val.examples, self.pad_id).to(self.fabric.device)
                total[0] += batch_loss(self.model, self.head, batch) * mb.loss_tokens
                total[1] += mb.loss_tokens
        if self.fabric.world_size > 1:
            total = self.fabric.all_reduce(total, reduce_op="sum")
        self.model.train()
        loss_sum, count = total.tolist()
        return loss_sum / max(count, 1.0)

    def validate_and_log(self, step: int, epoch: float, val_records: list[dict[str, Any]]) -> float:
        val_loss = self.validate()
        if self.fabric.is_global_zero:
            self.metrics.write(Row(step=step, epoch=epoch, val_loss=val_loss))
            log.info("step %d: val loss %.4f", step, val_loss)
            plot_losses(self.metrics.path, self.args.run.out_dir / PLOT_FILE)
        self.sample_replies(val_records)
        return val_loss

    @torch.no_grad()
    def sample_replies(self, val_records: list[dict[str, Any]]) -> None:
        """Log the model's replies to the first few validation prompts (every rank runs the same work)."""
        n = self.args.eval.eval_samples
        if n == 0 or (self.args.run.strategy == "fsdp" and self.fabric.world_size > 1):
            return
        model, tokenizer = self.model, self.tokenizer
        model.eval()
        with eager():
            for record in val_records[:n]:
                prompt, truth = render_record(record)
                ids = tokenizer.encode(prompt, device=self.fabric.device)
                max_returned = len(ids) + self.args.eval.sample_max_new_tokens
                if max_returned > model.max_seq_length:
                    continue
                dtype = next(model.parameters()).dtype  # the cache in the model's precision
                model.set_kv_cache(
                    batch_size=1, max_seq_length=max_returned, device=self.fabric.device, dtype=dtype
                )
                torch.manual_seed(self.args.train.seed)
                out = generate(
                    model, ids, max_returned, temperature=0.7, top_k=50, eos_id=tokenizer.eos_id,
                    include_prompt=False,
                )  # fmt: skip
                model.clear_kv_cache()
                reply = tokenizer.decode(out[out != tokenizer.eos_id]).strip()
                if self.fabric.is_global_zero:
                    log.info("sample | %s\n  twin: %s\n  real: %s", record["instruction"][:200], reply, truth)
        model.train()


def tiny_run_args(checkpoint_dir: Path, data: Path, out_dir: Path, **overrides: Any) -> FinetuneArgs:
    """Settings for a seconds-long CPU run on the tiny checkpoint (tests and demos)."""
    args = FinetuneArgs()
    args.run.checkpoint_dir, args.run.data, args.run.out_dir = checkpoint_dir, data, out_dir
    args.run.accelerator, args.run.precision = "cpu", "32-true"
    args.train.epochs = 1
    args.train.global_batch_size = 32
    args.train.learning_rate = 1e-2
    args.train.warmup_steps = 2
    args.eval.eval_interval = 5
    args.eval.save_interval = 5
    args.eval.eval_samples = 1
    args.eval.sample_max_new_tokens = 16
    for key, value in overrides.items():
        group = next(g for g in (args.run, args.train, args.lora, args.eval) if hasattr(g, key))
        setattr(group, key, value)
    args.check()
    return args
