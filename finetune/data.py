"""Instruction records → token sequences → length-bucketed micro-batches.

The records are prepare's `train.jsonl` / `val.jsonl`; the training text of a record is the run's
`Prompter.render_record(record)` = (prompt, response), encoded separately by `finetune.twin`'s
`encode_prompt` (exactly as the server encodes a live prompt) and `encode_response` (twin-v1: the reply and
an EOS; chat-template: the reply and the template's end-of-turn marker). Labels are -100 on the prompt, so
only the reply and its end carry loss.

Batching: every optimizer step takes `global_batch_size` sequences in a seeded per-epoch order (optionally
grouped by length across a few steps). Inside a step the sequences are sorted by length, dealt
round-robin to the ranks, and cut into micro-batches of similar length under a padded-token budget; so
padding is small and the gradient of a step does not depend on how it is split into micro-batches.
The plan is a pure function of (seed, epoch, lengths), so every rank computes it alone and a resumed run
replays the very same order.

With `packing` a micro-batch is made of rows that each hold several records back to back (first-fit
decreasing, `finetune.packing`): padding is only the tail of a row; `collate` then also gives each token
its position within its record and its record's id in the row, from which the attention mask is built.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune.errors import UserError
from finetune.packing import pack_rows
from finetune.twin import encode_prompt, encode_response
from prepare.memory import Exchange
from prepare.prompt import TWIN_V1, ChatTemplateError, Prompter
from prepare.records import TRAIN_FILE, VAL_FILE, Record, read_records

IGNORE_INDEX = -100
RUN_PREPARE = "run `make prepare` (python -m prepare --raw data/raw --out data/prepared) first"


# ----------------------------------------------------------------------------------------------- records
def load_records(path: Path) -> list[Record]:
    """All records of one JSONL file, validated by prepare's own reader (errors name file and line)."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a JSONL file of records: {RUN_PREPARE}")
    if not path.is_file():
        raise UserError(f"no instruction records at {path}: {RUN_PREPARE}")
    try:
        return read_records(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def load_splits(data_dir: Path) -> tuple[list[Record], list[Record]]:
    """(train, val) records of a prepared folder; empty or missing data is a `UserError`."""
    if data_dir.is_file():
        raise UserError(
            f"--data {data_dir} is a file: pass the folder that holds {TRAIN_FILE} and {VAL_FILE} "
            f"(here: {data_dir.parent})"
        )
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist: {RUN_PREPARE}")
    train = load_records(data_dir / TRAIN_FILE)
    val = load_records(data_dir / VAL_FILE)
    for name, records in ((TRAIN_FILE, train), (VAL_FILE, val)):
        if not records:
            raise UserError(f"{data_dir / name} holds no records: {RUN_PREPARE} (with more chats if needed)")
    return train, val


def render_texts(records: Sequence[Record], prompter: Prompter = TWIN_V1) -> list[str]:
    """The full training text (prompt + reply) of each record, e.g. to train a tokenizer on."""
    return [prompt + response for prompt, response in map(prompter.render_record, records)]


def render_records(
    records: Sequence[Record],
    prompter: Prompter,
    memories: Sequence[Sequence[Exchange]] | None = None,
) -> list[tuple[str, str]]:
    """(prompt, response) of each record, with its retrieved `memories` if given (`prepare.memory`); a
    record the format cannot render is a `UserError` (records without turns under chat-template: re-run
    prepare)."""
    if memories is not None and len(memories) != len(records):
        raise ValueError(f"{len(records)} records but {len(memories)} lists of memories")
    try:
        if memories is None:
            return [prompter.render_record(record) for record in records]
        return [prompter.render_record(r, m) for r, m in zip(records, memories, strict=True)]
    except ChatTemplateError as e:
        raise UserError(f"{e}: use --prompt-format twin-v1") from None
    except ValueError as e:
        raise UserError(str(e)) from None


# -------------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True, slots=True)
class Example:
    """One encoded record: `input_ids` = prompt + reply + EOS; loss on positions >= `prompt_len`."""

    input_ids: torch.Tensor
    """int64 (T,)."""
    prompt_len: int
    """Number of leading tokens that carry no loss (after any truncation)."""

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def loss_tokens(self) -> int:
        """Positions with a next-token target that carries loss (the first token never is a target)."""
        return len(self) - max(self.prompt_len, 1)

    @property
    def labels(self) -> torch.Tensor:
        labels = self.input_ids.clone()
        labels[: self.prompt_len] = IGNORE_INDEX
        return labels


@dataclass(frozen=True, slots=True)
class Encoded:
    examples: list[Example]
    truncated: int
    """Records longer than the max sequence length; their oldest tokens were cut (see `encode_records`)."""


def encode_records(
    records: Sequence[Record],
    tokenizer: Any,
    max_seq_length: int,
    prompter: Prompter = TWIN_V1,
    memories: Sequence[Sequence[Exchange]] | None = None,
) -> Encoded:
    """Encode records with a litgpt `Tokenizer` in `prompter`'s format (with each record's retrieved
    `memories` in its prompt, if given).

    A sequence longer than `max_seq_length` keeps its *last* `max_seq_length` tokens: the new message,
    the reply and its end survive, the template head and the oldest context go. Truncated records are
    counted, never silently dropped.
    """
    if tokenizer.eos_id is None:
        raise UserError("the checkpoint's tokenizer has no EOS token (tokenizer_config.json 'eos_token')")
    examples, truncated = [], 0
    for prompt, response in render_records(records, prompter, memories):
        prompt_ids = encode_prompt(tokenizer, prompter, prompt)
        ids = torch.tensor(prompt_ids + encode_response(tokenizer, prompter, response), dtype=torch.long)
        prompt_len = len(prompt_ids)
        if len(ids) > max_seq_length:
            truncated += 1
            cut = len(ids) - max_seq_length
            ids = ids[cut:]
            prompt_len = max(prompt_len - cut, 0)
        examples.append(Example(ids, prompt_len))
    return Encoded(examples, truncated)


# -------------------------------------------------------------------------------------------- batching
@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Indices into the examples, padded to one length; counts are known on the host (no sync)."""

    indices: tuple[int, ...]
    length: int
    """Padded sequence length T (a multiple of the pad multiple, at most the max sequence length)."""
    loss_tokens: int
    """Label tokens (the reply + EOS) summed over the micro-batch."""
    tokens: int
    """Real (non-pad) tokens."""
    rows: tuple[tuple[int, ...], ...] = ()
    """Packed: the examples of each row, back to back (`indices` is their concatenation); empty: one
    example per row."""

    @property
    def n_rows(self) -> int:
        return len(self.rows) if self.rows else len(self.indices)

    @property
    def padded_tokens(self) -> int:
        return self.n_rows * self.length


@dataclass(frozen=True, slots=True)
class Step:
    """One optimizer step: this rank's micro-batches and the step's loss-token total over all ranks."""

    micro_batches: list[MicroBatch]
    global_loss_tokens: int
    """Target tokens of the step over all ranks: the loss is a mean over these."""
    global_tokens: int
    """Non-pad tokens of the step over all ranks."""
    global_padded_tokens: int
    """Tokens including padding of the step over all ranks."""


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


MICRO_BATCH_OVERHEAD = 256
"""What one more forward/backward pass costs, in padded tokens' worth of work (kernel launches, weight
reads): the packer trades it against padding."""


def pack_micro_batches(
    indices: Sequence[int],
    examples: Sequence[Example],
    max_tokens: int,
    max_size: int,
    pad_multiple: int,
    max_length: int,
) -> list[MicroBatch]:
    """Cut length-sorted (longest first) indices into contiguous micro-batches that minimise padded
    tokens + `MICRO_BATCH_OVERHEAD` per micro-batch, each within `max_tokens` and `max_size`
    (exact dynamic programme; n is at most a step's sequences, so n * max_size is small).

    Single-sequence micro-batches are avoided while pairs fit the budget: a batch dimension of 1 is a
    special case for `torch.compile` (one more graph to compile) and saves next to nothing.
    """
    lengths = [min(round_up(len(examples[i]), pad_multiple), max_length) for i in indices]
    return [
        make_micro_batch(indices[i:j], lengths[i], examples)
        for i, j in cut_runs(lengths, max_tokens, max_size)
    ]


def pack_rows_into_micro_batches(
    indices: Sequence[int],
    examples: Sequence[Example],
    max_tokens: int,
    max_size: int,
    pad_multiple: int,
    max_length: int,
) -> list[MicroBatch]:
    """`--packing`: the examples into rows of up to min(`max_tokens`, `max_length`) tokens, several per
    row, then the rows (fullest first) cut into micro-batches as `pack_micro_batches` cuts sequences."""
    capacity = min(max_tokens, max_length)
    rows = pack_rows([(i, len(examples[i])) for i in indices], capacity)
    lengths = [min(round_up(sum(len(examples[i]) for i in row), pad_multiple), max_length) for row in rows]
    return [
        make_packed_micro_batch(rows[i:j], lengths[i], examples)
        for i, j in cut_runs(lengths, max_tokens, max_size)
    ]


def cut_runs(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[tuple[int, int]]:
    """The (start, end) runs of the longest-first `lengths` that `pack_micro_batches` describes."""
    n = len(lengths)
    for allow_single in (n == 1 or max_size == 1, True):
        best = [0.0] + [math.inf] * n
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j - 1, max(0, j - max_size) - 1, -1):
                size = j - i
                padded = size * lengths[i]  # sorted longest first: lengths[i] is the segment's max
                if padded > max_tokens and size > 1:
                    break  # longer segments only grow
                if size == 1 and not allow_single and 2 * lengths[i] <= max_tokens:
                    continue
                cost = best[i] + padded + MICRO_BATCH_OVERHEAD
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        if best[n] < math.inf:
            break
    runs: list[tuple[int, int]] = []
    j = n
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    runs.reverse()
    return runs


def make_micro_batch(indices: Sequence[int], length: int, examples: Sequence[Example]) -> MicroBatch:
    return MicroBatch(
        indices=tuple(indices),
        length=length,
        loss_tokens=sum(examples[i].loss_tokens for i in indices),
        tokens=sum(len(examples[i]) for i in indices),
    )


def make_packed_micro_batch(
    rows: Sequence[Sequence[int]], length: int, examples: Sequence[Example]
) -> MicroBatch:
    indices = [i for row in rows for i in row]
    mb = make_micro_batch(indices, length, examples)
    return MicroBatch(mb.indices, mb.length, mb.loss_tokens, mb.tokens, rows=tuple(map(tuple, rows)))


def split_largest(batches: list[MicroBatch], examples: Sequence[Example]) -> bool:
    """Split the micro-batch with the most rows in two (in place); a packed micro-batch of one row splits
    that row's records. False when no micro-batch holds two sequences."""
    k = max(range(len(batches)), key=lambda j: (batches[j].n_rows, len(batches[j].indices)))
    mb = batches[k]
    if len(mb.indices) < 2:
        return False
    if not mb.rows:
        half = len(mb.indices) // 2
        batches[k : k + 1] = [
            make_micro_batch(mb.indices[:half], mb.length, examples),
            make_micro_batch(mb.indices[half:], mb.length, examples),
        ]
        return True
    rows = (
        list(mb.rows)
        if len(mb.rows) > 1
        else [mb.rows[0][: len(mb.indices) // 2], mb.rows[0][len(mb.indices) // 2 :]]
    )
    half = len(rows) // 2
    batches[k : k + 1] = [
        make_packed_micro_batch(rows[:half], mb.length, examples),
        make_packed_micro_batch(rows[half:], mb.length, examples),
    ]
    return True


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Turns (seed, epoch) into the optimizer steps of that epoch, for one rank.

    Each epoch: a seeded shuffle; groups of `length_grouping` steps' worth of sequences are sorted by
    length and cut into steps (so a step holds sequences of similar length: little padding); the steps
    are shuffled again. With `length_grouping=1` every step is a uniform random sample.
    """

    examples: Sequence[Example]
    global_batch_size: int
    micro_batch_tokens: int
    micro_batch_size: int
    pad_multiple: int
    max_length: int
    seed: int
    length_grouping: int = 1
    world_size: int = 1
    rank: int = 0
    packing: bool = False
    """Several examples per row (`pack_rows_into_micro_batches`) instead of one padded row each."""

    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.examples), self.global_batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def epoch_chunks(self, epoch: int) -> list[list[int]]:
        """The sequences of each step of `epoch`, in the order they run."""
        rng = random.Random(f"{self.seed}-{epoch}")  # string seeds hash stably across processes
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        gbs = self.global_batch_size
        full = len(order) // gbs
        pool = gbs * self.length_grouping
        chunks = []
        for start in range(0, full * gbs, pool):
            group = order[start : min(start + pool, full * gbs)]
            if self.length_grouping > 1:
                group.sort(key=lambda i: (-len(self.examples[i]), i))
            chunks += [group[k : k + gbs] for k in range(0, len(group), gbs)]
        rest = order[full * gbs :]
        if len(rest) >= self.world_size:
            chunks.append(rest)
        rng.shuffle(chunks)
        return chunks

    def steps(self, epoch: int) -> Iterator[Step]:
        for chunk in self.epoch_chunks(epoch):
            # every rank gets the same number of sequences (a last step drops < world_size of them)
            yield self.make_step(chunk[: len(chunk) - len(chunk) % self.world_size])

    def make_step(self, chunk: Sequence[int]) -> Step:
        ex = self.examples
        ordered = sorted(chunk, key=lambda i: (-len(ex[i]), i))
        cut = pack_rows_into_micro_batches if self.packing else pack_micro_batches
        per_rank = [
            cut(
                ordered[r :: self.world_size],
                ex,
                self.micro_batch_tokens,
                self.micro_batch_size,
                self.pad_multiple,
                self.max_length,
            )
            for r in range(self.world_size)
        ]
        # every rank runs the same number of forward passes (FSDP gathers weights in each one)
        target = max(len(b) for b in per_rank)
        for batches in per_rank:
            while len(batches) < target and split_largest(batches, ex):
                pass
        if len({len(b) for b in per_rank}) > 1:
            # cannot happen: each rank holds the same number of sequences, and splits go down to one each
            raise RuntimeError("could not balance micro-batches across ranks")
        return Step(
            micro_batches=per_rank[self.rank],
            global_loss_tokens=sum(ex[i].loss_tokens for i in chunk),
            global_tokens=sum(mb.tokens for batches in per_rank for mb in batches),
            global_padded_tokens=sum(mb.padded_tokens for batches in per_rank for mb in batches),
        )


def padding_fraction(plan: BatchPlan, epoch: int = 0) -> float:
    """Share of pad tokens over one epoch's micro-batches of this rank."""
    padded = real = 0
    for step in plan.steps(epoch):
        for mb in step.micro_batches:
            padded += mb.padded_tokens
            real += mb.tokens
    return 1.0 - real / padded if padded else 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    """A micro-batch as tensors (on the host; `to` moves it)."""

    input_ids: torch.Tensor
    """(B, T) token ids, right-padded."""
    positions: torch.Tensor
    """(N,) flat indices into B*T of the positions whose next token carries loss (the reply + EOS)."""
    targets: torch.Tensor
    """(N,) the next token at each of `positions`."""
    token_pos: torch.Tensor | None = None
    """Packed: (B, T) each token's position within its own record (RoPE restarts per record)."""
    doc_ids: torch.Tensor | None = None
    """Packed: (B, T) int32 the record each token belongs to, numbered per row (the padding: one more)."""

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if device.type == "cuda":  # pinned host memory: the copies overlap with compute, no sync
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return Batch(*(move(t) for t in self))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter((self.input_ids, self.positions, self.targets, self.token_pos, self.doc_ids))


def collate(batch: MicroBatch, examples: Sequence[Example], pad_id: int) -> Batch:
    """Pad a micro-batch and list its loss positions; position t of a row predicts token t+1."""
    if batch.rows:
        return collate_packed(batch, examples, pad_id)
    b, t = len(batch.indices), batch.length
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    positions, targets = [], []
    for row, i in enumerate(batch.indices):
        ex = examples[i]
        n = len(ex)
        input_ids[row, :n] = ex.input_ids
        first = max(ex.prompt_len, 1) - 1  # the last prompt token predicts the reply's first token
        positions.append(torch.arange(row * t + first, row * t + n - 1))
        targets.append(ex.input_ids[first + 1 : n])
    return Batch(input_ids, torch.cat(positions), torch.cat(targets))


def collate_packed(batch: MicroBatch, examples: Sequence[Example], pad_id: int) -> Batch:
    """Lay each row's examples back to back; the loss positions of each example are exactly those it has
    alone (`collate`), so no target crosses from one record into the next."""
    b, t = len(batch.rows), batch.length
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    token_pos = torch.empty((b, t), dtype=torch.long)
    doc_ids = torch.empty((b, t), dtype=torch.int32)
    positions, targets = [], []
    for row, members in enumerate(batch.rows):
        start = 0
        for doc, i in enumerate(members):
            ex = examples[i]
            n = len(ex)
            input_ids[row, start : start + n] = ex.input_ids
            token_pos[row, start : start + n] = torch.arange(n)
            doc_ids[row, start : start + n] = doc
            first = max(ex.prompt_len, 1) - 1
            positions.append(torch.arange(row * t + start + first, row * t + start + n - 1))
            targets.append(ex.input_ids[first + 1 : n])
            start += n
        token_pos[row, start:] = torch.arange(t - start)
        doc_ids[row, start:] = len(members)  # the padding: a record of its own, never a target
    return Batch(input_ids, torch.cat(positions), torch.cat(targets), token_pos, doc_ids)
