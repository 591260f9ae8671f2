"""The speed pieces change nothing numerically: loss-position head, checkpointing, compile."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
from litgpt.tokenizer import Tokenizer
from litgpt.utils import chunked_cross_entropy

from finetune.data import IGNORE_INDEX, BatchPlan, collate, encode_records
from finetune.model import (
    CheckpointedBlock,
    attach_loss_positions,
    batch_loss,
    compile_blocks,
    enable_activation_checkpointing,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)

LORA = dict(lora_r=8, lora_alpha=16, lora_dropout=0.1, lora_query=True, lora_value=True, lora_mlp=True)


@pytest.fixture(scope="module")
def step_and_examples(tiny_checkpoint: Path, chat_records):
    examples = encode_records(chat_records["train"][:24], Tokenizer(tiny_checkpoint), 256).examples
    plan = BatchPlan(examples, 24, 1024, 64, 8, 256, seed=0)
    step = next(plan.steps(0))
    assert len(step.micro_batches) > 1
    return step, examples


def fresh_model(checkpoint: Path, **overrides: float) -> GPT:
    torch.manual_seed(0)
    model = GPT(Config.from_file(checkpoint / "model_config.yaml", **(LORA | overrides)))
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True), strict=False)
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model)
    with torch.no_grad():  # a non-zero B, so that every LoRA tensor gets a gradient
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)
    return model


def lora_grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_head_on_loss_positions_equals_full_masked_loss(tiny_checkpoint: Path, step_and_examples) -> None:
    step, examples = step_and_examples
    model = fresh_model(tiny_checkpoint).eval()
    head = attach_loss_positions(model)
    mb = step.micro_batches[0]
    batch = collate(mb, examples, pad_id=0)
    with torch.no_grad():
        ours = batch_loss(model, head, batch)
        full = model(batch.input_ids)  # (B, T, vocab): the hook is off outside batch_loss
        labels = torch.full(batch.input_ids.shape, IGNORE_INDEX).reshape(-1)
        labels[batch.positions] = batch.targets
        reference = chunked_cross_entropy(full, labels.reshape(batch.input_ids.shape), chunk_size=0)
    assert full.shape[:2] == batch.input_ids.shape
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def run_one_step(model: GPT, step_and_examples) -> tuple[float, dict[str, torch.Tensor]]:
    step, examples = step_and_examples
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    head = attach_loss_positions(model)
    fabric_model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(make_optimizer(fabric_model, 0.0, 0.0, fabric.device))
    grads: dict[str, torch.Tensor] = {}

    def keep_grads(k: int) -> None:
        if k == len(step.micro_batches) - 1:
            grads.update(lora_grads(model))

    torch.manual_seed(123)  # the dropout masks
    loss_sum = train_step(fabric, fabric_model, optimizer, head, step, examples, 0, 0.0, keep_grads)
    return loss_sum.item() / step.global_loss_tokens, grads


def test_activation_checkpointing_keeps_loss_and_gradients(tiny_checkpoint: Path, step_and_examples) -> None:
    loss, grads = run_one_step(fresh_model(tiny_checkpoint), step_and_examples)
    model = fresh_model(tiny_checkpoint)
    enable_activation_checkpointing(model)
    assert all(type(b) is CheckpointedBlock for b in model.transformer.h)
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in fresh_model(tiny_checkpoint).named_parameters()]  # adapter keys kept
    loss_ac, grads_ac = run_one_step(model, step_and_examples)
    assert loss_ac == pytest.approx(loss, rel=1e-6)
    assert grads_ac.keys() == grads.keys() and len(grads) == 3 * 2 * 2  # qkv, fc, proj x A, B x 2 layers
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ac[name], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_blocks(tiny_checkpoint: Path, step_and_examples) -> None:
    # no dropout: compiled code draws its masks from another generator
    loss, grads = run_one_step(fresh_model(tiny_checkpoint, lora_dropout=0.0), step_and_examples)
    model = fresh_model(tiny_checkpoint, lora_dropout=0.0)
    enable_activation_checkpointing(model)
    compile_blocks(model)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    loss_c, grads_c = run_one_step(model, step_and_examples)
    step, _ = step_and_examples
    shapes = {(len(mb.indices), mb.length) for mb in step.micro_batches}
    assert len(shapes) >= 2 and min(b for b, _ in shapes) >= 2
    # one dynamic-shape graph for every block and micro-batch shape (two: the first block's input
    # needs no grad), and no graph break inside the checkpointed block
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 2
    assert loss_c == pytest.approx(loss, rel=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-5)
