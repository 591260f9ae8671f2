"""Records → token sequences → micro-batches: masking, truncation, order and padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from litgpt.tokenizer import Tokenizer

from finetune.data import (
    IGNORE_INDEX,
    BatchPlan,
    collate,
    encode_records,
    load_records,
    load_splits,
    padding_fraction,
)
from finetune.errors import UserError
from prepare.prompt import render_record


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Tokenizer:
    return Tokenizer(tiny_checkpoint)


def plan_for(examples, **overrides) -> BatchPlan:
    settings = dict(
        examples=examples,
        global_batch_size=32,
        micro_batch_tokens=1024,
        micro_batch_size=64,
        pad_multiple=8,
        max_length=256,
        seed=7,
        length_grouping=1,
    )
    return BatchPlan(**(settings | overrides))


def test_prompt_tokens_carry_no_loss(chat_records, tokenizer: Tokenizer) -> None:
    records = chat_records["train"][:20]
    encoded = encode_records(records, tokenizer, max_seq_length=256)
    assert encoded.truncated == 0
    for record, ex in zip(records, encoded.examples, strict=True):
        prompt, response = render_record(record)
        assert ex.prompt_len == len(tokenizer.encode(prompt))
        labels = ex.labels
        assert (labels[: ex.prompt_len] == IGNORE_INDEX).all()
        trained = labels[ex.prompt_len :]
        assert (trained != IGNORE_INDEX).all()
        assert trained[-1].item() == tokenizer.eos_id  # EOS after the reply, with loss
        assert tokenizer.decode(trained[:-1]) == response
        assert tokenizer.decode(ex.input_ids[: ex.prompt_len]) == prompt


def test_collate_lists_exactly_the_reply_positions(chat_records, tokenizer: Tokenizer) -> None:
    encoded = encode_records(chat_records["train"][:40], tokenizer, max_seq_length=256)
    step = next(plan_for(encoded.examples).steps(0))
    mb = step.micro_batches[0]
    batch = collate(mb, encoded.examples, pad_id=tokenizer.eos_id)
    b, t = batch.input_ids.shape
    assert (b, t) == (len(mb.indices), mb.length)
    assert batch.positions.shape == batch.targets.shape == (mb.loss_tokens,)
    flat = batch.input_ids.reshape(-1)
    # position p predicts the token at p + 1: every target is the next token of its row
    assert torch.equal(flat[batch.positions + 1], batch.targets)
    rows, cols = batch.positions // t, batch.positions % t
    for row, i in enumerate(mb.indices):
        ex = encoded.examples[i]
        mine = cols[rows == row]
        # from the last prompt token (predicting the reply's first) to the token before EOS
        assert mine.tolist() == list(range(ex.prompt_len - 1, len(ex) - 1))
        assert torch.equal(batch.input_ids[row, : len(ex)], ex.input_ids)
        assert (batch.input_ids[row, len(ex) :] == tokenizer.eos_id).all()  # padding, never a target
    assert batch.targets[-1].item() == tokenizer.eos_id


def test_long_records_keep_their_end_and_are_counted(chat_records, tokenizer: Tokenizer) -> None:
    records = chat_records["train"][:10]
    full = encode_records(records, tokenizer, max_seq_length=256)
    limit = min(len(ex) for ex in full.examples) - 5
    cut = encode_records(records, tokenizer, max_seq_length=limit)
    assert cut.truncated == sum(len(ex) > limit for ex in full.examples) > 0
    for whole, short in zip(full.examples, cut.examples, strict=True):
        assert len(short) == min(len(whole), limit)
        assert torch.equal(short.input_ids, whole.input_ids[-len(short) :])  # the reply and EOS survive
        assert short.loss_tokens == whole.loss_tokens


def test_every_record_once_per_epoch_in_a_seeded_order(chat_records, tokenizer: Tokenizer) -> None:
    examples = encode_records(chat_records["train"], tokenizer, 256).examples
    plan = plan_for(examples, length_grouping=4)
    seen = [i for step in plan.steps(0) for mb in step.micro_batches for i in mb.indices]
    assert sorted(seen) == list(range(len(examples)))  # 480 = 15 full steps of 32
    assert plan.epoch_chunks(0) == plan_for(examples, length_grouping=4).epoch_chunks(0)
    assert plan.epoch_chunks(0) != plan.epoch_chunks(1)
    assert plan.epoch_chunks(0) != plan_for(examples, length_grouping=4, seed=8).epoch_chunks(0)
    for step in plan.steps(0):
        assert sum(len(mb.indices) for mb in step.micro_batches) == 32
        for mb in step.micro_batches:
            assert mb.padded_tokens <= 1024 or len(mb.indices) == 1
            assert mb.length >= max(len(examples[i]) for i in mb.indices)
            assert mb.length % 8 == 0


def test_bucketing_pads_less_than_random_batches(chat_records, tokenizer: Tokenizer) -> None:
    examples = encode_records(chat_records["train"], tokenizer, 256).examples
    bucketed = padding_fraction(plan_for(examples, length_grouping=4))
    # naive: each micro-batch of 8 in data order, padded to its longest member
    naive_padded = naive_real = 0
    for start in range(0, len(examples), 8):
        lengths = [len(ex) for ex in examples[start : start + 8]]
        naive_padded += max(lengths) * len(lengths)
        naive_real += sum(lengths)
    naive = 1 - naive_real / naive_padded
    assert bucketed < naive / 2


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_step_evenly(chat_records, tokenizer: Tokenizer, world_size: int) -> None:
    examples = encode_records(chat_records["train"][:100], tokenizer, 256).examples
    plans = [
        plan_for(examples, global_batch_size=30, world_size=world_size, rank=r) for r in range(world_size)
    ]
    per_rank = [list(p.steps(0)) for p in plans]
    assert len({len(steps) for steps in per_rank}) == 1
    for steps in zip(*per_rank, strict=True):
        counts = {len(s.micro_batches) for s in steps}
        assert len(counts) == 1  # same number of forward passes on every rank
        indices = [i for s in steps for mb in s.micro_batches for i in mb.indices]
        assert len(indices) == len(set(indices))
        assert len({sum(len(mb.indices) for mb in s.micro_batches) for s in steps}) == 1
        assert steps[0].global_loss_tokens == sum(examples[i].loss_tokens for i in indices)


def test_bad_records_name_file_and_line(tmp_path: Path) -> None:
    good = {"instruction": "hi", "context": "", "response": "hey", "dialog_id": 1, "partner": "A"}
    good["date"] = "2024-05-01T09:31:00+00:00"
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"instruction": "hi", "context": ""}) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl:2: missing field 'response'"):
        load_records(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=r"train\.jsonl:2: not valid JSON"):
        load_records(path)
    path.write_text(json.dumps(good | {"dialog_id": "x"}) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl:1: field 'dialog_id' must be an integer"):
        load_records(path)


def test_missing_or_empty_data_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="make prepare"):
        load_splits(tmp_path / "nowhere")
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "val.jsonl").write_text("")
    with pytest.raises(UserError, match=r"train\.jsonl holds no records: run `make prepare`"):
        load_splits(tmp_path)


def test_packing_minimises_padding_within_the_budget(chat_records, tokenizer: Tokenizer) -> None:
    from finetune.data import MICRO_BATCH_OVERHEAD, pack_micro_batches

    examples = encode_records(chat_records["train"][:64], tokenizer, 256).examples
    order = sorted(range(64), key=lambda i: -len(examples[i]))
    batches = pack_micro_batches(order, examples, 2048, max_size=64, pad_multiple=8, max_length=256)
    assert [i for mb in batches for i in mb.indices] == order  # contiguous runs of the sorted order
    assert all(mb.padded_tokens <= 2048 and len(mb.indices) >= 2 for mb in batches)
    cost = sum(mb.padded_tokens + MICRO_BATCH_OVERHEAD for mb in batches)
    # at least as good as filling each micro-batch greedily up to the budget
    rounded = [-(-len(examples[i]) // 8) * 8 for i in order]
    greedy, start = 0, 0
    while start < len(order):
        size = max(k for k in range(1, len(order) - start + 1) if k * rounded[start] <= 2048)
        greedy += size * rounded[start] + MICRO_BATCH_OVERHEAD
        start += size
    assert cost <= greedy
    assert cost < sum(r + MICRO_BATCH_OVERHEAD for r in rounded)  # and than one sequence at a time
    assert len(pack_micro_batches(order[:1], examples, 2048, 64, 8, 256)) == 1
