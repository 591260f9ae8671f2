"""litgpt's LoRA GPT set up for fast fine-tuning, and one optimizer step over a planned `Step`.

Shared by the training loop and `bench/finetune_bench.py`, so the benchmark times the loop's own code.

- The LM head only sees the positions that carry loss (a forward pre-hook on `lm_head` gathers them):
  the prompt — most of a chat example — never goes through the 65k-wide head and cross-entropy.
- The fused-QKV LoRA layers compute their B-projection with matmuls (see `LoRAQKVMatmul`).
- `--activation-checkpointing` swaps each block's class for a subclass whose forward is checkpointed,
  which keeps parameter names (the adapter's keys); `--compile` compiles each block with dynamic shapes
  (micro-batches are ragged), one graph shared by all blocks.
- Both together: the checkpoint stays *outside* the compiled region and the block's own forward is
  compiled inside it. Compiling through `torch.utils.checkpoint` hands AOTAutograd's partitioner the
  checkpoint's higher-order op, which crashed Inductor on torch 2.11 (`Node mm_12 was invalid, but is
  output`); here the partitioner only sees a plain block, and the checkpoint's saved-tensor hooks drop
  what the compiled forward saved and run it again in the backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast, get_args

import lightning as L
import torch
from litgpt.lora import GPT, Block, LoRAQKVLinear
from litgpt.utils import chunked_cross_entropy

from common.quantize import import_torchao
from finetune.args import Optimizer
from finetune.data import Batch, Example, Step, collate
from finetune.packing import document_mask

LOSS_CHUNK = 1024
"""Rows of logits per cross-entropy chunk (litgpt's chunked_cross_entropy)."""
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


class LoRAQKVMatmul(LoRAQKVLinear):
    """litgpt's fused-QKV LoRA layer with its kernel-size-1 `conv1d` done as matmuls: the same numbers,
    and, unlike the convolution, shape-polymorphic under `torch.compile` (no recompile per length)."""

    def conv1d(self, input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        parts = input.chunk(len(self.qkv_shapes), dim=1)  # N x (B, r, T)
        weights = weight.split(self.qkv_shapes)  # N x (C_part, r, 1)
        return torch.cat([w.squeeze(-1) @ p for p, w in zip(parts, weights, strict=True)], dim=1)  # (B, C, T)


def prepare_lora_layers(model: GPT, build_buffers: bool = True) -> None:
    """Swap in `LoRAQKVMatmul`, and build each layer's lazy `lora_ind` buffer now (not on a meta
    device): created inside a compiled or checkpointed forward, it would be a side effect there."""
    for module in model.modules():
        if type(module) is LoRAQKVLinear:
            module.__class__ = LoRAQKVMatmul
        if build_buffers and isinstance(module, LoRAQKVLinear) and module.r > 0 and any(module.enable_lora):
            _ = module.lora_ind


def block_forward(block: Block, *args: Any) -> torch.Tensor:
    """litgpt's block forward as a function of the block (what `--compile` compiles under checkpointing)."""
    return cast(torch.Tensor, Block.forward(block, *args))


@functools.cache
def compiled_block_forward(backend: str) -> Callable[..., torch.Tensor]:
    # one compiled function for every block: they differ only in their parameters, which are inputs
    return cast(Callable[..., torch.Tensor], torch.compile(block_forward, dynamic=True, backend=backend))


class CheckpointedBlock(Block):
    """A litgpt LoRA `Block` whose activations are recomputed in the backward pass."""

    compile_backend: str | None = None
    """Set by `compile_blocks`: run the compiled block forward inside the checkpoint."""

    def forward(self, *args: Any) -> torch.Tensor:
        inner = (
            block_forward if self.compile_backend is None else compiled_block_forward(self.compile_backend)
        )
        # non-reentrant: works with frozen inputs; dropout masks kept (RNG state restored to recompute)
        return cast(torch.Tensor, torch.utils.checkpoint.checkpoint(inner, self, *args, use_reentrant=False))


def enable_activation_checkpointing(model: GPT) -> None:
    for block in model.transformer.h:
        if type(block) is Block:
            block.__class__ = CheckpointedBlock


def compile_blocks(model: GPT, backend: str = "inductor") -> None:
    """torch.compile every block in place; identical blocks share one compiled graph. A checkpointed
    block compiles its forward inside the checkpoint (see the module docstring)."""
    for block in model.transformer.h:
        if isinstance(block, CheckpointedBlock):
            block.compile_backend = backend
        else:
            block.compile(dynamic=True, backend=backend)


class LossPositions:
    """Forward pre-hook on `lm_head`: (B, T, C) hidden states → (N, C) rows at the loss positions."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None

    def __call__(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        if self.positions is None:
            return None  # generation: every position
        (x,) = args
        return (x.reshape(-1, x.size(-1)).index_select(0, self.positions),)


def attach_loss_positions(model: GPT) -> LossPositions:
    hook = LossPositions()
    model.lm_head.register_forward_pre_hook(hook)
    return hook


def batch_loss(model: Any, head: LossPositions, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy per loss position of one (device) batch."""
    head.positions = batch.positions
    try:
        if batch.doc_ids is None:
            logits = model(batch.input_ids)  # (N, vocab): the hook kept the loss positions only
        else:  # packed rows (`finetune.packing`): positions restart and attention stays in each record
            mask = document_mask(batch.doc_ids)
            logits = model(batch.input_ids, token_pos=batch.token_pos, attn_mask=mask)
    finally:
        head.positions = None
    return chunked_cross_entropy(logits, batch.targets, chunk_size=LOSS_CHUNK)


def train_step(
    fabric: L.Fabric,
    model: Any,
    optimizer: Any,
    head: LossPositions,
    step: Step,
    examples: list[Example] | Any,
    pad_id: int,
    grad_clip: float,
    on_micro_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Forward/backward over this rank's micro-batches of `step`, then one optimizer step.

    The loss of a micro-batch is weighted by its share of the step's loss tokens (over all ranks, known
    on the host), so the gradient is the mean over the step's reply tokens however the step is split.
    Returns the (device) sum of per-token losses of this rank; nothing here waits for the GPU.
    """
    world = fabric.world_size
    loss_sum = torch.zeros((), device=fabric.device)
    for k, mb in enumerate(step.micro_batches):
        batch = collate(mb, examples, pad_id).to(fabric.device)
        with fabric.no_backward_sync(model, enabled=k < len(step.micro_batches) - 1):
            loss = batch_loss(model, head, batch)
            # DDP/FSDP average gradients over ranks: scale by world to get the mean over the step
            fabric.backward(loss * (mb.loss_tokens * world / step.global_loss_tokens))
        loss_sum += loss.detach() * mb.loss_tokens
        if on_micro_batch is not None:
            on_micro_batch(k)
    if grad_clip > 0:
        fabric.clip_gradients(model, optimizer, max_norm=grad_clip, error_if_nonfinite=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def check_optimizer(name: str) -> None:
    """Raise unless optimizer `name` can be made here (the low-bit ones need torchao)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    if name != "adamw":
        import_torchao("torchao.optim", f"--optimizer {name}", "use --optimizer adamw")


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    name: str = "adamw",
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) parameters of `model`: with full-precision states (`adamw`, the
    fused kernel on CUDA), or torchao's AdamW with 8-/4-bit block-quantized states.

    The low-bit states save memory in proportion to the trainable parameters only — for LoRA r=16 on
    q and v of Falcon-7B that is ~7M parameters (~40 MB of states) — so `adamw` is the default.
    """
    check_optimizer(name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(
            trainable, lr=lr, weight_decay=weight_decay, betas=betas, fused=device.type == "cuda"
        )
    optim = import_torchao("torchao.optim", f"--optimizer {name}", "use --optimizer adamw")
    cls = optim.AdamW8bit if name == "adamw8bit" else optim.AdamW4bit
    return cast(torch.optim.Optimizer, cls(trainable, lr=lr, weight_decay=weight_decay, betas=betas))
