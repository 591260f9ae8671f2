"""The training script: `setup()` builds Fabric and launches `main()`; `fit()` is the explicit loop.

Model, config, tokenizer, LoRA layers and chunked cross-entropy are litgpt's, imported. The loop adds
what chat data needs to be fast: length-bucketed micro-batches under a token budget (little padding),
loss normalised by the step's reply tokens (so a step's gradient does not depend on how it is split),
no host sync between log intervals, and an exactly resumable position (data order from the seed,
dropout reseeded from (seed, step, rank), optimizer and scheduler restored). Options: `--packing`
(several records per row, attention kept within each: `finetune.packing`) and `--base-precision fp8`
(the frozen base's GEMMs in scaled FP8 on Hopper-class GPUs: `finetune.fp8`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
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
from litgpt.lora import GPT, Block, Config, mark_only_lora_as_trainable
from litgpt.tokenizer import Tokenizer
from litgpt.utils import num_parameters
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.device import DeviceUnavailableError, resolve_device, resolve_dtype
from common.nf4 import load_quantized_model
from common.quantize import QuantizationUnavailableError, check_quantize_support
from finetune import twin
from finetune.args import FinetuneArgs
from finetune.data import (
    BatchPlan,
    Encoded,
    Step,
    collate,
    encode_records,
    load_splits,
    padding_fraction,
    render_records,
)
from finetune.errors import UserError, check_out_dir, make_out_dir
from finetune.evaluate import sample_reply
from finetune.fp8 import fp8_unavailable, quantize_base_fp8
from finetune.metrics import MetricsFile, Row, format_duration, peak_memory_gib, plot_losses
from finetune.model import (
    LossPositions,
    attach_loss_positions,
    batch_loss,
    check_optimizer,
    compile_blocks,
    enable_activation_checkpointing,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)
from finetune.packing import enable_packing, packing_problem
from finetune.state import (
    Position,
    list_checkpoints,
    load_checkpoint,
    save_adapter,
    save_checkpoint,
    save_hyperparameters,
)
from finetune.twin import (
    ADAPTER_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    WEIGHTS_FILE,
    adapter_spec,
    check_checkpoint_dir,
    choose_prompter,
    encode_prompt,
    load_base_config,
    load_tokenizer,
    save_adapter_spec_files,
)
from prepare.memory import MEMORY_FILE, Exchange, Memory, record_memories
from prepare.prompt import Prompter
from prepare.records import Record

log = logging.getLogger("finetune")

PLOT_FILE = "loss.png"


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
def resolve_accelerator(args: FinetuneArgs) -> tuple[str, str]:
    """(accelerator, precision): a CPU runs 32-true, since bf16/16 there is slow or unsupported."""
    try:
        accelerator = resolve_device(args.run.accelerator, "--accelerator").type
    except DeviceUnavailableError as e:
        raise UserError(str(e)) from None
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
    base_config = load_base_config(args.run.checkpoint_dir)  # a supported family
    twin.load_base_weights(args.run.checkpoint_dir, base_config)  # readable, and fits the config (mmap)
    load_tokenizer(args.run.checkpoint_dir)
    check_out_dir(args.run.out_dir, "--out-dir")
    if args.train.packing and (problem := packing_problem(base_config)):
        raise UserError(problem)
    # fail fast, before processes are launched: the data, and a record in the chosen prompt format
    train_records, _ = load_splits(args.run.data)
    render_records(train_records[:1], choose_prompter(args.run.checkpoint_dir, args.run.prompt_format))
    accelerator, precision = resolve_accelerator(args)
    if args.train.packing is None:  # the faster batching where it was measured: one way of training on GPUs
        args.train.packing = (
            accelerator == "cuda"
            and args.run.quantize == "none"
            and args.run.strategy != "fsdp"
            and packing_problem(base_config) is None
        )
    if accelerator == "cpu" and args.run.devices > (cores := os.cpu_count() or 1):
        raise UserError(
            f"--devices {args.run.devices} on the CPU starts one process per device, but this machine has "
            f"{cores} CPU cores: use --devices {cores} or fewer"
        )
    if args.run.base_precision == "fp8" and (why := fp8_unavailable(accelerator)):
        raise UserError(why)
    try:
        if args.run.quantize != "none":
            check_quantize_support(args.run.quantize, accelerator, devices=args.run.devices)
        check_optimizer(args.train.optimizer)
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
    config = Config.from_file(args.run.checkpoint_dir / MODEL_CONFIG_FILE, **vars(args.lora))
    fsdp = args.run.strategy == "fsdp" and fabric.world_size > 1
    if args.run.quantize != "none":  # QLoRA: the base reaches the device one NF4 layer at a time
        model = load_quantized_model(
            config, args.run.checkpoint_dir / WEIGHTS_FILE, args.run.quantize, fabric.device,
            resolve_dtype(precision),
        )  # fmt: skip
    else:
        with fabric.init_module(empty_init=fsdp):
            model = GPT(config)
        if args.run.base_precision == "fp8":  # the base checkpoint is quantized as it loads
            quantize_base_fp8(model)
    model.max_seq_length = max_seq_length
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model, build_buffers=not fsdp)
    if args.train.packing:
        enable_packing(model)
    head = attach_loss_positions(model)
    if args.train.activation_checkpointing and not fsdp:  # FSDP wraps blocks itself (make_strategy)
        enable_activation_checkpointing(model)
    if args.train.compile:
        compile_blocks(model)
    return model, head


def load_base_weights(fabric: L.Fabric, model: torch.nn.Module, checkpoint_dir: Path) -> None:
    fabric.load_raw(checkpoint_dir / WEIGHTS_FILE, model, strict=False)


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
    finished = out_dir / ADAPTER_FILE
    if (existing or finished.is_file()) and not args.run.resume:
        held = f"newest checkpoint {existing[-1].name}" if existing else f"a trained {ADAPTER_FILE}"
        raise UserError(
            f"{out_dir} already holds a run ({held}): pass --resume to continue it, or choose another "
            "--out-dir (a new run there would overwrite it)"
        )
    if fabric.is_global_zero:
        make_out_dir(out_dir, "--out-dir")

    tokenizer = load_tokenizer(args.run.checkpoint_dir)
    base_config = load_base_config(args.run.checkpoint_dir)
    block_size = base_config.block_size
    max_seq_length = min(args.train.max_seq_length or block_size, block_size)
    train_records, val_records = load_splits(args.run.data)
    prompter = choose_prompter(args.run.checkpoint_dir, args.run.prompt_format)
    log.info("prompt format: %s (--prompt-format %s)", prompter.format, args.run.prompt_format)
    memory, train_memories, val_memories = recall(args, train_records, val_records)
    train = encode_records(train_records, tokenizer, max_seq_length, prompter, train_memories)
    val = encode_records(val_records, tokenizer, max_seq_length, prompter, val_memories)
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
        packing=bool(args.train.packing),
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

    spec = adapter_spec(args.lora, base_config, prompter, args.run.memory_k)  # the spec: finetune.twin
    hparams = args.flat() | spec.hparams()
    hparams |= {
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
        save_adapter_spec_files(out_dir, spec)
        save_hyperparameters(out_dir, hparams)
        if memory is not None:
            memory.save(out_dir / MEMORY_FILE)

    run = Run(
        fabric=fabric,
        args=args,
        model=fabric_model,
        head=head,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        val=val,
        val_step=validation_step(plan, val, args),
        val_records=val_records,
        val_memories=val_memories,
        tokenizer=tokenizer,
        prompter=prompter,
        metrics=MetricsFile(out_dir / METRICS_FILE, position.step if position.step else None),
        resume_key=resume_key,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            first_val, final_val, nonpad_rate = fit(run, position)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"CUDA out of memory: lower --micro-batch-tokens (now {args.train.micro_batch_tokens}) or "
            f"--micro-batch-size (now {args.train.micro_batch_size}), or add --activation-checkpointing"
        ) from None

    adapter = save_adapter(fabric, fabric_model, out_dir)
    if not fabric.is_global_zero:
        return None
    save_adapter_spec_files(out_dir, spec)
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


def recall(
    args: FinetuneArgs, train: list[Record], val: list[Record]
) -> tuple[Memory | None, list[list[Exchange]] | None, list[list[Exchange]] | None]:
    """With --memory-k: the memory of the train split and the exchanges each train and val record's
    prompt shows (the train split's best, never the record's own); (None, None, None) without."""
    k = args.run.memory_k
    if k <= 0:
        return None, None, None
    t0 = time.perf_counter()
    memory = Memory.from_records(train)
    train_memories, val_memories = record_memories(memory, train, k), record_memories(memory, val, k)
    shown = sum(map(len, train_memories)) / max(len(train_memories), 1)
    log.info(
        "memory: %d past exchanges of the train split, %.1f of up to %d shown per train prompt (%.1f s)",
        len(memory), shown, k, time.perf_counter() - t0,
    )  # fmt: skip
    return memory, train_memories, val_memories


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


@dataclass
class Run:
    """What the loop works on, built once by `main`: `fit` and `validate` take it as their one argument."""

    fabric: L.Fabric
    args: FinetuneArgs
    model: Any
    """The Fabric-wrapped LoRA GPT."""
    head: LossPositions
    optimizer: Any
    scheduler: Any
    plan: BatchPlan
    """The training steps of every epoch, for this rank."""
    val: Encoded
    val_step: Step
    """Every validation example once, in this rank's micro-batches (`validation_step`)."""
    val_records: list[Record]
    """The validation records whose first few get a sampled reply at each validation."""
    val_memories: list[list[Exchange]] | None
    """The exchanges each validation record's prompt shows (--memory-k; None: memory off)."""
    tokenizer: Tokenizer
    prompter: Prompter
    """The run's prompt format (validation samples are rendered and end as the server's replies)."""
    metrics: MetricsFile
    resume_key: dict[str, Any]
    total_steps: int
    steps_per_epoch: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.eos_id or 0


def validation_step(plan: BatchPlan, val: Encoded, args: FinetuneArgs) -> Step:
    """Every validation example once, sorted by length into micro-batches (ranks hold equal counts; a
    remainder < world_size is left out so that all ranks run the same number of forward passes)."""
    val_plan = BatchPlan(
        examples=val.examples,
        global_batch_size=len(val.examples),
        micro_batch_tokens=args.train.micro_batch_tokens,
        micro_batch_size=args.train.micro_batch_size,
        pad_multiple=args.train.pad_multiple,
        max_length=plan.max_length,
        seed=0,
        world_size=plan.world_size,
        rank=plan.rank,
    )  # unpacked even with --packing: the same loss, and no FlexAttention outside the compiled training
    all_val = list(range(len(val.examples)))
    return val_plan.make_step(all_val[: len(all_val) - len(all_val) % plan.world_size])


def fit(run: Run, position: Position) -> tuple[float, float, float]:
    """Train from `position` (advanced in place) to the last step; (first val loss, final val loss,
    non-pad tokens per second)."""
    fabric, args, ev = run.fabric, run.args, run.args.eval
    total_steps, steps_per_epoch = run.total_steps, run.steps_per_epoch
    first_val = final_val = float("nan")
    if position.step == 0:
        first_val = final_val = validate_and_log(run, 0, 0.0)

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
    run.model.train()
    while position.step < total_steps:
        for step in islice(run.plan.steps(position.epoch), position.step_in_epoch, None):
            seed_step(run, position.step)
            lr = run.optimizer.param_groups[0]["lr"]
            loss_sum += train_step(
                fabric,
                run.model,
                run.optimizer,
                run.head,
                step,
                run.plan.examples,
                run.pad_id,
                args.train.grad_clip,
            )
            run.scheduler.step()
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
                train_loss = mean_train_loss(run, loss_sum, loss_tokens)
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
                    run.metrics.write(row)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{nonpad / dt:,.0f}")
                loss_sum.zero_()
                loss_tokens = window_tokens = window_nonpad = 0
                t_window = time.perf_counter()

            if position.step % ev.eval_interval == 0 or done:
                final_val = validate_and_log(run, position.step, epoch)
            if position.step % ev.save_interval == 0 and not done:
                save_checkpoint(
                    fabric,
                    args.run.out_dir,
                    run.model,
                    run.optimizer,
                    run.scheduler,
                    position,
                    run.resume_key,
                    ev.keep_checkpoints,
                )
            if position.step % ev.eval_interval == 0 or position.step % ev.save_interval == 0:
                t_window = time.perf_counter()  # validation and saving are not training time
            if done:
                break
    bar.close()
    if math.isnan(first_val):  # resumed: the first validation is in the killed run's metrics
        first_val = first_val_from_metrics(run)
    return first_val, final_val, total_nonpad / total_time if total_time else 0.0


def seed_step(run: Run, step: int) -> None:
    """Dropout masks depend only on (seed, step, rank): a resumed run draws the same ones."""
    torch.manual_seed(hash((run.args.train.seed, step, run.fabric.global_rank)) & 0x7FFF_FFFF)


def mean_train_loss(run: Run, loss_sum: torch.Tensor, loss_tokens: int) -> float:
    """Mean loss per reply token since the last log, over all ranks: the one sync of a log row."""
    stats: Any = torch.stack([loss_sum, torch.tensor(float(loss_tokens), device=loss_sum.device)])
    if run.fabric.world_size > 1:
        stats = run.fabric.all_reduce(stats, reduce_op="sum")
    loss, count = stats.tolist()
    return loss / max(count, 1.0)


def first_val_from_metrics(run: Run) -> float:
    from finetune.metrics import read_rows

    if not run.fabric.is_global_zero:
        return float("nan")
    vals = [r["val_loss"] for r in read_rows(run.metrics.path) if r["val_loss"] is not None]
    return float(vals[0]) if vals else float("nan")


@torch.no_grad()
def validate(run: Run) -> float:
    """Mean cross-entropy per reply token over the whole validation set (all ranks)."""
    run.model.eval()
    total: Any = torch.zeros(2, device=run.fabric.device)
    with eager():
        for mb in run.val_step.micro_batches:
            batch = collate(mb, run.val.examples, run.pad_id).to(run.fabric.device)
            total[0] += batch_loss(run.model, run.head, batch) * mb.loss_tokens
            total[1] += mb.loss_tokens
    if run.fabric.world_size > 1:
        total = run.fabric.all_reduce(total, reduce_op="sum")
    run.model.train()
    loss_sum, count = total.tolist()
    return loss_sum / max(count, 1.0)


def validate_and_log(run: Run, step: int, epoch: float) -> float:
    val_loss = validate(run)
    if run.fabric.is_global_zero:
        run.metrics.write(Row(step=step, epoch=epoch, val_loss=val_loss))
        log.info("step %d: val loss %.4f", step, val_loss)
        plot_losses(run.metrics.path, run.args.run.out_dir / PLOT_FILE)
    sample_replies(run)
    return val_loss


@torch.no_grad()
def sample_replies(run: Run) -> None:
    """Log the model's replies to the first few validation prompts (every rank runs the same work)."""
    args, fabric = run.args, run.fabric
    n = args.eval.eval_samples
    if n == 0 or (args.run.strategy == "fsdp" and fabric.world_size > 1):
        return
    model, tokenizer, prompter = run.model, run.tokenizer, run.prompter
    max_new = args.eval.sample_max_new_tokens
    model.eval()
    with eager():
        for i, record in enumerate(run.val_records[:n]):
            prompt, _ = prompter.render_record(record, run.val_memories[i] if run.val_memories else ())
            max_returned = len(encode_prompt(tokenizer, prompter, prompt)) + max_new
            if max_returned > model.max_seq_length:
                continue
            dtype = next(model.parameters()).dtype  # the cache in the model's precision
            model.set_kv_cache(batch_size=1, max_seq_length=max_returned, device=fabric.device, dtype=dtype)
            torch.manual_seed(args.train.seed)
            reply = sample_reply(model, tokenizer, prompter, prompt, max_new, temperature=0.7, top_k=50)
            model.clear_kv_cache()
            truth = record.response
            if fabric.is_global_zero:
                log.info("sample | %s\n  twin: %s\n  real: %s", record.instruction[:200], reply, truth)
    model.train()
