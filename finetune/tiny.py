"""A tiny Falcon-shaped litgpt checkpoint, built on this machine from the prepared chats.

`python -m finetune.tiny --data data/prepared --out checkpoints/tiny-falcon` writes a folder litgpt loads
exactly like a downloaded one — `model_config.yaml`, `lit_model.pth`, `tokenizer.json`,
`tokenizer_config.json` (+ `generation_config.json`, as Falcon ships it) — so every later stage can run
on a CPU without the 14 GB Falcon-7B. The config keeps Falcon-7B's code paths (parallel residual with a
shared attention norm, multi-query attention, full rotary, LayerNorm, no biases) at a toy width; the
tokenizer is a byte-level BPE trained with `tokenizers` on the texts; a few seconds of next-token
pretraining on the same texts make the base speak the corpus' language rather than noise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from litgpt.config import Config
from litgpt.model import GPT
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from common.cli import run_function
from common.files import open_private_atomic, write_private_atomic
from finetune.data import load_records, render_texts
from finetune.errors import UserError, make_out_dir, write_errors
from prepare.records import TRAIN_FILE

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"  # Falcon's only special token that matters: bos = eos = <|endoftext|>
DEFAULT_OUT = Path("checkpoints/tiny-falcon")


def tiny_config(
    vocab_size: int, n_layer: int = 4, n_embd: int = 128, n_head: int = 4, block_size: int = 512
) -> Config:
    """Falcon-7B's architecture (litgpt's `falcon-7b` entry) scaled down to a toy."""
    falcon = Config.from_name("falcon-7b")
    assert falcon is not None
    return Config(
        name="tiny-falcon",
        hf_config={},
        block_size=block_size,
        vocab_size=vocab_size,
        padding_multiple=64,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        rotary_percentage=falcon.rotary_percentage,
        n_query_groups=1,  # multi-query attention, as Falcon-7B
        parallel_residual=falcon.parallel_residual,
        shared_attention_norm=falcon.shared_attention_norm,
        bias=falcon.bias,
        norm_class_name=falcon.norm_class_name,
        mlp_class_name=falcon.mlp_class_name,
    )


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE (Falcon's kind) with `<|endoftext|>` as its special token."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def pretrain(
    model: GPT,
    token_ids: torch.Tensor,
    steps: int,
    seq_len: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Plain next-token training on random windows of the token stream; returns the losses."""
    if steps <= 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    seq_len = min(seq_len, len(token_ids) - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(token_ids) - seq_len, (batch_size,), generator=generator)
        x = torch.stack([token_ids[s : s + seq_len] for s in starts.tolist()])
        y = torch.stack([token_ids[s + 1 : s + seq_len + 1] for s in starts.tolist()])
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def save_torch_private(obj: object, path: Path) -> None:
    """`torch.save` into a file that is 0600 from its first byte, replaced atomically (a failed save leaves
    no temp file and the old file as it was)."""
    with open_private_atomic(path, "wb") as f:
        torch.save(obj, f)


def make_tiny_checkpoint(
    out_dir: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    pretrain_texts: Sequence[str] | None = None,
    vocab_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    block_size: int,
    pretrain_steps: int,
    seed: int,
) -> Path:
    """Write a litgpt checkpoint folder into `out_dir` (created 0700, files 0600) and return its path
    (the sizes' defaults are `build`'s, the CLI).

    The tokenizer is trained on `texts`; the base model is pretrained on `pretrain_texts` (default:
    `texts`) for `pretrain_steps` steps of 8 windows of `block_size` tokens.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("no texts to build the tiny checkpoint from: run `make prepare` first")
    out = make_out_dir(Path(out_dir), "--out")
    torch.manual_seed(seed)

    hf_tokenizer = train_tokenizer(texts, vocab_size)
    eos_id = hf_tokenizer.token_to_id(EOS_TOKEN)
    config = tiny_config(hf_tokenizer.get_vocab_size(), n_layer, n_embd, n_head, block_size)

    model = GPT(config)
    model.apply(model._init_weights)
    stream = []
    for text in texts if pretrain_texts is None else pretrain_texts:
        stream.extend(hf_tokenizer.encode(text).ids)
        stream.append(eos_id)
    losses = pretrain(model, torch.tensor(stream, dtype=torch.long), pretrain_steps, block_size, seed=seed)
    if losses:
        log.info("pretrained %d steps: loss %.2f -> %.2f", len(losses), losses[0], sum(losses[-10:]) / 10)

    write_private_atomic(out / "tokenizer.json", hf_tokenizer.to_str())
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "add_bos_token": False,
        "model_max_length": block_size,
    }
    write_private_atomic(out / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
    generation_config = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    write_private_atomic(out / "generation_config.json", json.dumps(generation_config, indent=2) + "\n")
    write_private_atomic(out / "model_config.yaml", yaml.safe_dump(asdict(config), sort_keys=True))
    save_torch_private(model.state_dict(), out / "lit_model.pth")
    return out


def build(
    data: Path = Path("data/prepared"),
    out: Path = DEFAULT_OUT,
    vocab_size: int = 2048,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    block_size: int = 512,
    pretrain_steps: int = 300,
    seed: int = 0,
) -> None:
    """Build a tiny Falcon-shaped litgpt checkpoint from prepare's train records (a CPU, seconds).

    Args:
        data: prepare's output folder
        out: checkpoint folder to write
        vocab_size: BPE vocabulary size
        n_layer: transformer blocks
        n_embd: width (a multiple of --n-head)
        n_head: attention heads (one shared key/value head)
        block_size: context length in tokens
        pretrain_steps: next-token steps on the texts (0: none)
        seed: random seed
    """
    problems = []
    if n_embd % n_head:
        problems.append("--n-embd must be a multiple of --n-head")
    if min(vocab_size, n_layer, n_embd, n_head, block_size) < 1:
        problems.append("sizes must be positive")
    if vocab_size < 300:
        problems.append("--vocab-size must be at least 300 (256 bytes + merges)")
    if problems:
        raise UserError("; ".join(problems))
    # train split only: the validation replies stay unseen by the base as well
    records = load_records(data / TRAIN_FILE)
    t0 = time.perf_counter()
    with write_errors("--out"):
        path = make_tiny_checkpoint(
            out,
            render_texts(records),
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            block_size=block_size,
            pretrain_steps=pretrain_steps,
            seed=seed,
        )
    n_params = sum(p.numel() for p in torch.load(path / "lit_model.pth", weights_only=True).values())
    print(f"tiny checkpoint ({n_params / 1e6:.2f}M parameters) in {path} ({time.perf_counter() - t0:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_function(build, argv, prog="python -m finetune.tiny", errors=(UserError,))


if __name__ == "__main__":
    sys.exit(main())
