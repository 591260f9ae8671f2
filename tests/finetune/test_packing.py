"""--packing: several records per row, each attending only to itself: the unpacked loss and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
from litgpt.tokenizer import Tokenizer

from finetune.data import (
    BatchPlan,
    Example,
    collate,
    encode_records,
    make_micro_batch,
    make_packed_micro_batch,
    padding_fraction,
)
from finetune.metrics import read_rows
from finetune.model import attach_loss_positions, batch_loss, prepare_lora_layers
from finetune.packing import (
    PackedAttention,
    PackedGPT,
    dense_document_mask,
    document_block_mask,
    enable_packing,
    pack_rows,
    packing_problem,
    record_boundaries,
)
from finetune.train import setup


@pytest.fixture(scope="module")
def examples(chat_records, tiny_checkpoint: Path) -> list[Example]:
    return encode_records(chat_records["train"][:96], Tokenizer(tiny_checkpoint), 256).examples


def tiny_lora_model(checkpoint: Path) -> PackedGPT:
    """The tiny base with LoRA everywhere and random (non-zero) B matrices, so every LoRA tensor gets a
    gradient; no dropout."""
    config = Config.from_file(
        checkpoint / "model_config.yaml", lora_r=4, lora_alpha=8, lora_dropout=0.0,
        lora_query=True, lora_value=True, lora_projection=True, lora_mlp=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(config)
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True), strict=False)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.05)
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model)
    enable_packing(model)
    return model  # type: ignore[return-value]


def loss_and_grads(model: GPT, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    head = attach_loss_positions(model)
    loss = batch_loss(model, head, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def test_rows_hold_whole_records_within_capacity() -> None:
    items = [(i, n) for i, n in enumerate([90, 10, 70, 40, 30, 60, 100, 5])]
    rows = pack_rows(items, 100)
    assert sorted(i for row in rows for i in row) == list(range(8))
    fills = [sum(dict(items)[i] for i in row) for row in rows]
    assert all(f <= 100 for f in fills) and fills == sorted(fills, reverse=True)
    assert len(rows) == 5  # 405 tokens: ceil(405 / 100) rows, which first-fit decreasing reaches here


def test_packed_plan_covers_every_record_with_little_padding(examples: list[Example]) -> None:
    settings = dict(
        examples=examples, global_batch_size=32, micro_batch_tokens=512, micro_batch_size=64,
        pad_multiple=8, max_length=256, seed=7, length_grouping=1,
    )  # fmt: skip
    packed, padded = BatchPlan(**settings, packing=True), BatchPlan(**settings)
    seen = [i for step in packed.steps(0) for mb in step.micro_batches for i in mb.indices]
    assert sorted(seen) == list(range(len(examples)))
    for step in packed.steps(0):
        for mb in step.micro_batches:
            assert mb.rows and mb.padded_tokens <= 512 and mb.length <= 256
            assert all(sum(len(examples[i]) for i in row) <= mb.length for row in mb.rows)
    assert padding_fraction(packed) < padding_fraction(padded)
    # ranks: the same number of forward passes, the same loss-token total as unpacked
    for world in (2, 3):
        plans = [BatchPlan(**settings | dict(global_batch_size=30), packing=True, world_size=world, rank=r)
                 for r in range(world)]  # fmt: skip
        for steps in zip(*(p.steps(0) for p in plans), strict=True):
            assert len({len(s.micro_batches) for s in steps}) == 1


def test_collate_packed_restarts_positions_and_keeps_targets_in_each_record(examples: list[Example]) -> None:
    rows = [(0, 1, 2), (3, 4)]
    length = max(sum(len(examples[i]) for i in row) for row in rows) + 5
    batch = collate(make_packed_micro_batch(rows, length, examples), examples, pad_id=0)
    assert batch.token_pos is not None and batch.doc_ids is not None
    flat = batch.input_ids.reshape(-1)
    assert torch.equal(flat[batch.positions + 1], batch.targets)
    assert batch.targets.numel() == sum(examples[i].loss_tokens for row in rows for i in row)
    for r, row in enumerate(rows):
        start = 0
        for doc, i in enumerate(row):
            n = len(examples[i])
            assert batch.token_pos[r, start : start + n].tolist() == list(range(n))
            assert (batch.doc_ids[r, start : start + n] == doc).all()
            # no target predicts the next record's first token from this record's last
            assert row[-1] == i or r * length + start + n - 1 not in batch.positions.tolist()
            start += n
        assert (batch.doc_ids[r, start:] == len(row)).all()  # padding: a record of its own


def test_packed_loss_and_gradients_equal_unpacked(examples: list[Example], tiny_checkpoint: Path) -> None:
    model = tiny_lora_model(tiny_checkpoint)
    chosen = [5, 17, 2, 40, 33, 8, 21]  # different lengths, several per row
    rows = pack_rows([(i, len(examples[i])) for i in chosen], 256)
    assert max(map(len, rows)) >= 2
    unpacked_len = max(len(examples[i]) for i in chosen)
    packed_len = max(sum(len(examples[i]) for i in row) for row in rows)
    unpacked = collate(make_micro_batch(chosen, unpacked_len, examples), examples, pad_id=0)
    packed = collate(make_packed_micro_batch(rows, packed_len, examples), examples, pad_id=0)
    loss_a, grads_a = loss_and_grads(model, unpacked)
    loss_b, grads_b = loss_and_grads(model, packed)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert set(grads_a) == set(grads_b) and len(grads_a) == 2 * 4 * 2  # A and B of 4 layers, 2 blocks
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
def test_no_cross_talk_between_records_of_a_row(examples: list[Example], tiny_checkpoint: Path) -> None:
    model = tiny_lora_model(tiny_checkpoint).eval()
    rows = [(3, 9)]
    length = len(examples[3]) + len(examples[9])
    batch = collate(make_packed_micro_batch(rows, length, examples), examples, pad_id=0)
    n_a = len(examples[3])

    def logits(ids: torch.Tensor) -> torch.Tensor:
        mask = dense_document_mask(batch.doc_ids)
        return model(ids, token_pos=batch.token_pos, attn_mask=mask)  # (1, T, vocab)

    before = logits(batch.input_ids)
    changed = batch.input_ids.clone()
    changed[0, :n_a] = torch.randint(0, 500, (n_a,))
    after = logits(changed)
    assert not torch.allclose(after[0, :n_a], before[0, :n_a])  # record A's own logits did change
    torch.testing.assert_close(after[0, n_a:], before[0, n_a:], rtol=0, atol=1e-6)  # record B's did not
    # and B in a row of its own, starting at position 0, gives the very same logits
    alone = model(examples[9].input_ids[None])
    torch.testing.assert_close(before[0, n_a:], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@torch.no_grad()
def test_flex_attention_block_mask_matches_the_dense_mask(
    examples: list[Example], tiny_checkpoint: Path
) -> None:
    # FlexAttention has no backward on CPUs; its forward (the reference implementation) runs here
    model = tiny_lora_model(tiny_checkpoint).eval()
    rows = [(1, 2, 3), (4, 5)]
    length = 256
    batch = collate(make_packed_micro_batch(rows, length, examples), examples, pad_id=0)
    dense = model(batch.input_ids, token_pos=batch.token_pos, attn_mask=dense_document_mask(batch.doc_ids))
    block = model(batch.input_ids, token_pos=batch.token_pos, attn_mask=document_block_mask(batch.doc_ids))
    torch.testing.assert_close(block, dense, rtol=1e-4, atol=1e-4)


def test_record_boundaries_start_a_record_at_every_id_change_and_row() -> None:
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    # the second row's first record has the id the first row ended on: the row still starts a record
    doc_ids[1, 0] = 2
    assert record_boundaries(doc_ids).tolist() == [0, 3, 5, 6, 7, 12, 18]
    assert record_boundaries(doc_ids).dtype == torch.int32


def reference_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float
) -> torch.Tensor:
    """FlashAttention's variable-length contract on (tokens, heads, size) tensors, by SDPA per record."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    assert max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) <= max_len
    for a, b in zip(bounds, bounds[1:], strict=False):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))  # (heads, n, size)
        y = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        out[a:b] = y.transpose(0, 1)
    return out


@torch.no_grad()
def test_the_variable_length_path_matches_the_dense_mask(
    examples: list[Example], tiny_checkpoint: Path
) -> None:
    """Packed rows as records' boundaries (the CUDA varlen kernel's input) give the dense mask's logits:
    the tokens flattened row after row, each record attended alone, the heads put back — with a CPU
    reference in the kernel's place (FlashAttention runs on CUDA only)."""
    model = tiny_lora_model(tiny_checkpoint).eval()
    for module in model.modules():
        if isinstance(module, PackedAttention):
            module.varlen = reference_varlen
    rows = [(1, 2, 3), (4, 5), (6,)]
    batch = collate(make_packed_micro_batch(rows, 256, examples), examples, pad_id=0)
    dense = model(batch.input_ids, token_pos=batch.token_pos, attn_mask=dense_document_mask(batch.doc_ids))
    varlen = model(batch.input_ids, token_pos=batch.token_pos, attn_mask=record_boundaries(batch.doc_ids))
    torch.testing.assert_close(varlen, dense, rtol=1e-4, atol=1e-4)


def test_packing_refuses_sliding_window_and_softcapping() -> None:
    assert packing_problem(Config.from_name("falcon-7b")) is None
    assert packing_problem(Config.from_name("Llama-3.1-8B")) is None
    problem = packing_problem(Config.from_name("gemma-2-2b"))
    assert problem is not None and "drop --packing" in problem


def test_packed_run_matches_the_padded_run(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, tiny_run_args
) -> None:
    """The quality guard on CPU: same data, same steps, no dropout: the same train and val losses."""
    settings = dict(max_steps=3, lora_dropout=0.0, eval_samples=0, eval_interval=3, save_interval=100)
    padded = setup(tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "padded", **settings))
    packed = setup(
        tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "packed", packing=True, **settings)
    )
    assert padded is not None and packed is not None
    assert packed.padding_fraction < padded.padding_fraction
    rows_a, rows_b = (
        read_rows(tmp_path / "padded" / "metrics.csv"),
        read_rows(tmp_path / "packed" / "metrics.csv"),
    )
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "val_loss"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    assert packed.final_val_loss == pytest.approx(padded.final_val_loss, rel=1e-4)
