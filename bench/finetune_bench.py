"""Fine-tuning throughput of our loop on Falcon-7B's shape, and of plain `litgpt finetune_lora` (anchor).

    python bench/finetune_bench.py                    # GPU: every configuration, ~8 minutes on an H100
    python bench/finetune_bench.py --anchor           # GPU: litgpt 0.5.13 `finetune_lora`, its defaults
    python bench/finetune_bench.py --smoke            # CPU: a tiny Falcon-shaped model, seconds
    python bench/finetune_bench.py --configs ours-compile,ours-compile-ac --lora-targets q,k,v

Weights are random (bf16; 32-true on a CPU) — speed does not depend on their values. The data are
synthetic chat records whose token lengths spread like real chats (log-normal, ~60–600 tokens, median
~180), rendered with our prompt and tokenized by a byte-level BPE trained on them; the anchor trains on
the very same records as litgpt JSON data. Each configuration runs warm-up steps (torch.compile
compiles there), then timed optimizer steps of `--global-batch` sequences through `finetune.model.
train_step` — the training loop's own code. Prints one JSON object per configuration and a summary.

MFU counts useful work only (non-pad tokens): 4·N FLOPs per token (forward 2N + input-gradient 2N; the
frozen weights need no weight-gradient) with N = 7.22e9, plus causal attention 6·n_layer·n_embd·L² per
sequence of length L, over the H100's dense bf16 peak of 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from litgpt.lora import GPT, Block, Config, LoRALinear, mark_only_lora_as_trainable
from litgpt.prompts import Alpaca
from litgpt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finetune.data import (  # noqa: E402
    BatchPlan,
    Example,
    MicroBatch,
    Step,
    encode_records,
    make_micro_batch,
    render_texts,
)
from finetune.model import (  # noqa: E402
    CheckpointedBlock,
    attach_loss_positions,
    compile_blocks,
    make_optimizer,
    prepare_lora_layers,
    train_step,
)
from finetune.tiny import EOS_TOKEN, train_tokenizer  # noqa: E402
from prepare.records import Record  # noqa: E402

N_PARAMS = 7.22e9
PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
WORDS = 1000


@dataclass(frozen=True)
class BenchConfig:
    name: str
    batching: str
    """"ours": length-grouped steps cut into micro-batches under a token budget; "naive": fixed-size
    micro-batches in data order, each padded to its longest sequence (what a plain loop does)."""
    micro_batch_tokens: int = 8192
    micro_batch_size: int = 64
    compile: bool = False
    activation_checkpointing: bool = False
    note: str = ""


CONFIGS = [  # in run order: what needs a new compile (checkpointed blocks) comes late
    BenchConfig("naive-eager", "naive", micro_batch_size=8, note="plain loop: 8 sequences, padded"),
    BenchConfig("ours-eager", "ours"),
    BenchConfig("ours-compile", "ours", compile=True),
    BenchConfig("ours-compile-16k", "ours", micro_batch_tokens=16384, compile=True),
    BenchConfig("ours-compile-3k", "ours", micro_batch_tokens=3072, compile=True, note="<= 24 GB candidate"),
    BenchConfig("ours-compile-2k", "ours", micro_batch_tokens=2048, compile=True, note="<= 24 GB candidate"),
    BenchConfig("naive-compile", "naive", micro_batch_size=8, compile=True),
    BenchConfig("ours-compile-ac", "ours", compile=True, activation_checkpointing=True, note="<= 24 GB"),
    BenchConfig(
        "ours-compile-ac-16k",
        "ours",
        micro_batch_tokens=16384,
        compile=True,
        activation_checkpointing=True,
        note="<= 24 GB candidate",
    ),
    BenchConfig("ours-eager-ac", "ours", activation_checkpointing=True),
]
SMOKE_CONFIGS = ["naive-eager", "ours-eager", "ours-eager-ac"]


# ------------------------------------------------------------------------------------------------ data
def synthetic_records(n: int, seed: int) -> list[dict[str, Any]]:
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
            {
                "instruction": words(message),
                "context": "\n".join(lines),
                "response": words(reply),
                "dialog_id": i % 50,
                "date": "2024-01-01T00:00:00+00:00",
                "partner": "Alex",
            }
        )
    return records


def tokenizer_texts(records: list[dict[str, Any]]) -> list[str]:
    """Texts to train the BPE on: both prompt templates (ours and litgpt's alpaca) are common words to
    it, as English is to Falcon's tokenizer, so neither side pays for a template it does not know."""
    alpaca = Alpaca()
    sample = records[:2000]
    texts = render_texts([Record(**r) for r in sample])
    texts += [alpaca.apply(r["instruction"], input=r["context"]) + r["response"] for r in sample]
    return texts


def write_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> Tokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(texts, vocab_size).save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer(folder)


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
        out.append(make_step(mbs, examples))
    return out


def make_step(mbs: list[MicroBatch], examples: list[Example]) -> Step:
    return Step(
        micro_batches=mbs,
        global_loss_tokens=sum(mb.loss_tokens for mb in mbs),
        global_tokens=sum(mb.tokens for mb in mbs),
        global_padded_tokens=sum(mb.padded_tokens for mb in mbs),
    )


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
    )
    steps: list[Step] = []
    epoch = 0
    while len(steps) < n:
        steps += list(plan.steps(epoch))
        epoch += 1
    return steps[:n]


# ----------------------------------------------------------------------------------------------- model
def model_config(args: argparse.Namespace, vocab_size: int, lora: bool = True) -> Config:
    targets = set(args.lora_targets.split(",")) if lora else set()
    lora_kwargs = dict(
        lora_r=16 if lora else 0,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_query="q" in targets,
        lora_key="k" in targets,
        lora_value="v" in targets,
        lora_projection="proj" in targets,
        lora_mlp="mlp" in targets,
        lora_head="head" in targets,
    )
    if args.smoke:
        return Config(
            name="tiny-falcon-bench",
            block_size=1024,
            vocab_size=vocab_size,
            padded_vocab_size=-(-vocab_size // 64) * 64,
            n_layer=2,
            n_head=4,
            n_embd=128,
            n_query_groups=1,
            rotary_percentage=1.0,
            parallel_residual=True,
            shared_attention_norm=True,
            bias=False,
            **lora_kwargs,
        )
    config = Config.from_name("falcon-7b", **lora_kwargs)
    assert config is not None
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


def set_speed_options(model: GPT, compile: bool, checkpointing: bool) -> None:
    for block in model.transformer.h:
        block.__class__ = CheckpointedBlock if checkpointing else Block
        block._compiled_call_impl = None
    if compile:
        compile_blocks(model)


def flops(lengths: list[int], config: Config) -> float:
    return sum(4 * N_PARAMS * n + 6 * config.n_layer * config.n_embd * n * n for n in lengths)


def run_config(
    fabric: L.Fabric, model: GPT, fabric_model: Any, head: Any, optimizer: Any, cfg: BenchConfig,
    examples: list[Example], pad_id: int, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    cuda = fabric.device.type == "cuda"
    set_speed_options(model, cfg.compile, cfg.activation_checkpointing)
    warmup = args.warmup + (args.compile_warmup if cfg.compile else 0)
    steps = planned_steps(examples, cfg, args, warmup + args.steps)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in steps[:warmup]:
        train_step(fabric, fabric_model, optimizer, head, step, examples, pad_id, 1.0)
    if cuda:
        torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = torch.zeros((), device=fabric.device)
    for step in steps[warmup:]:
        loss = train_step(fabric, fabric_model, optimizer, head, step, examples, pad_id, 1.0)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    timed = steps[warmup:]
    nonpad = sum(s.global_tokens for s in timed)
    padded = sum(s.global_padded_tokens for s in timed)
    lengths = [len(examples[i]) for s in timed for mb in s.micro_batches for i in mb.indices]
    result = {
        "config": cfg.name,
        "batching": cfg.batching,
        "micro_batch_tokens": cfg.micro_batch_tokens if cfg.batching == "ours" else None,
        "micro_batch_size": cfg.micro_batch_size,
        "compile": cfg.compile,
        "activation_checkpointing": cfg.activation_checkpointing,
        "nonpad_tokens_per_s": round(nonpad / dt, 1),
        "tokens_per_s": round(padded / dt, 1),
        "mfu": round(flops(lengths, model.config) / dt / PEAK_FLOPS, 4) if cuda else None,
        "padding_fraction": round(1 - nonpad / padded, 4),
        "micro_batches_per_step": round(sum(len(s.micro_batches) for s in timed) / len(timed), 1),
        "step_s": round(dt / len(timed), 3),
        "warmup_s": round(t_warm, 1),
        "timed_steps": len(timed),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "last_step_loss": round(loss.item() / max(timed[-1].global_loss_tokens, 1), 4),
        "note": cfg.note,
    }
    return result


def adapter_bytes(model: GPT) -> int:
    buffer = io.BytesIO()
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" in k}, buffer)
    return buffer.tell()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    accelerator = "cpu" if args.smoke else "cuda"
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU check")
    fabric = L.Fabric(accelerator=accelerator, devices=1, precision="32-true" if args.smoke else "bf16-true")
    records = synthetic_records(args.records, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp), tokenizer_texts(records), 16384)
    encoded = encode_records([Record(**r) for r in records], tokenizer, args.max_seq_length)
    examples = encoded.examples
    lengths = sorted(len(e) for e in examples)
    config = model_config(args, tokenizer.vocab_size if args.smoke else 0)
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    randomize(model)
    model.max_seq_length = args.max_seq_length
    model.reset_parameters()  # the rope cache, now on the device
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model)
    head = attach_loss_positions(model)
    fabric_model = fabric.setup_module(model)
    optimizer: Any = fabric.setup_optimizers(make_optimizer(fabric_model, 1e-4, 0.01, fabric.device))
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if accelerator == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": config.name,
        "lora_targets": args.lora_targets,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter_mib": round(adapter_bytes(model) / 2**20, 2),
        "global_batch": args.global_batch,
        "records": len(examples),
        "truncated": encoded.truncated,
        "length_tokens": {
            "mean": round(sum(lengths) / len(lengths), 1),
            "p10": lengths[len(lengths) // 10],
            "p50": lengths[len(lengths) // 2],
            "p90": lengths[len(lengths) * 9 // 10],
            "max": lengths[-1],
        },
        "reply_token_fraction": round(sum(e.loss_tokens for e in examples) / sum(lengths), 3),
        "results": [],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)
    wanted = (
        args.configs.split(",")
        if args.configs
        else (SMOKE_CONFIGS if args.smoke else [c.name for c in CONFIGS])
    )
    by_name = {c.name: c for c in CONFIGS}
    for name in wanted:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.time_budget:
            summary["results"].append(
                {"config": name, "skipped": f"time budget ({args.time_budget:.0f} s) used"}
            )
            continue
        try:
            result = run_config(
                fabric,
                model,
                fabric_model,
                head,
                optimizer,
                by_name[name],
                examples,
                tokenizer.eos_id or 0,
                args,
            )
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            result = {"config": name, "error": "CUDA out of memory"}
        except Exception as e:  # keep the other configurations' numbers
            optimizer.zero_grad(set_to_none=True)
            result = {"config": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        summary["results"].append(result)
        print(json.dumps(result), flush=True)
        if args.out:  # after every configuration: a run cut short still leaves its numbers
            write_json(args.out, summary)
    done = [r for r in summary["results"] if "nonpad_tokens_per_s" in r]
    if done:
        best = max(done, key=lambda r: r["nonpad_tokens_per_s"])
        # what the allocator held (reserved) must fit: 24 GB cards have ~23.6 GB usable at most
        small = [
            r for r in done if r["peak_reserved_gib"] is not None and r["peak_reserved_gib"] * 2**30 <= 24e9
        ]
        summary["best"] = {"config": best["config"], "nonpad_tokens_per_s": best["nonpad_tokens_per_s"]}
        if small:
            best_small = max(small, key=lambda r: r["nonpad_tokens_per_s"])
            summary["best_within_24gb"] = {
                "config": best_small["config"],
                "nonpad_tokens_per_s": best_small["nonpad_tokens_per_s"],
                "peak_memory_gib": best_small["peak_memory_gib"],
                "peak_reserved_gib": best_small["peak_reserved_gib"],
            }
    summary["total_s"] = round(time.perf_counter() - t_start, 1)
    return summary


# ---------------------------------------------------------------------------------------------- anchor
REPORT_RE = re.compile(r"Tok/sec\s*:\s*([\d.]+)")
TIME_RE = re.compile(r"Training Time\s*:\s*([\d.]+)")
MEMORY_RE = re.compile(r"Memory Used\s*:\s*([\d.]+)")
TOKENS_RE = re.compile(r"Total Tokens \(w/ Padding\)\s*:\s*(\d+)")


def write_anchor_checkpoint(folder: Path, args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    """A litgpt checkpoint folder with random weights, as if downloaded (base model, no LoRA)."""
    tokenizer = write_tokenizer(folder, tokenizer_texts(records), 16384)
    config = model_config(args, tokenizer.vocab_size, lora=False)
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device).to(dtype)
    randomize(model)
    state = {k: v for k, v in model.state_dict().items()}
    (folder / "model_config.yaml").write_text(yaml.safe_dump(asdict(config)))
    torch.save({k: v.cpu() for k, v in state.items()}, folder / "lit_model.pth")
    del model, state
    if device == "cuda":
        torch.cuda.empty_cache()


def anchor(args: argparse.Namespace) -> dict[str, Any]:
    """Time `litgpt finetune_lora` with its defaults on the same records (JSON data, alpaca prompt)."""
    t_start = time.perf_counter()
    records = synthetic_records(args.records, seed=0)
    work = Path(tempfile.mkdtemp(prefix="anchor-", dir=args.work_dir))
    try:
        checkpoint = work / ("tiny-falcon-bench" if args.smoke else "falcon-7b")
        checkpoint.mkdir()
        write_anchor_checkpoint(checkpoint, args, records)
        data = work / "data"
        data.mkdir()
        rows = [
            {"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in records
        ]
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
        return {
            "anchor": "litgpt finetune_lora (defaults)",
            "litgpt": importlib.metadata.version("litgpt"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu",
            "command": " ".join(command[1:]),
            "steps": args.anchor_steps,
            "nonpad_tokens_per_s": float(tok_s.group(1)),  # micro-batch 1: no padding at all
            "training_s": float(train_s.group(1)),
            "tokens": int(tokens.group(1)) if tokens else None,
            "peak_memory_gb": float(memory.group(1)) if memory else None,
            "mfu": round(float(tok_s.group(1)) * 4 * N_PARAMS / PEAK_FLOPS, 4) if not args.smoke else None,
            "checkpoint_write_s": round(t_written, 1),
            "litgpt_wall_s": round(time.perf_counter() - t_launch, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU, tiny Falcon-shaped model, few steps")
    p.add_argument("--anchor", action="store_true", help="time plain `litgpt finetune_lora` instead")
    p.add_argument(
        "--configs", default="", help=f"comma-separated subset of: {', '.join(c.name for c in CONFIGS)}"
    )
    p.add_argument("--lora-targets", default="q,v", help="comma list of q,k,v,proj,mlp,head (default: q,v)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed optimizer steps per config (default 4; smoke 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per config")
    p.add_argument("--compile-warmup", type=int, default=1, help="extra untimed steps when compiling")
    p.add_argument(
        "--global-batch", type=int, default=None, help="sequences per step (default 128; smoke 16)"
    )
    p.add_argument("--records", type=int, default=None, help="synthetic records (default 4096; smoke 256)")
    p.add_argument("--max-seq-length", type=int, default=1024, help="longer records are truncated")
    p.add_argument("--time-budget", type=float, default=450.0, help="start no configuration after this (s)")
    p.add_argument(
        "--anchor-steps", type=int, default=None, help="litgpt optimizer steps (default 30; smoke 2)"
    )
    p.add_argument("--anchor-precision", default="", help="override litgpt's default precision (bf16-mixed)")
    p.add_argument(
        "--work-dir", default=None, help="where the anchor's 14 GB checkpoint goes (default: TMPDIR)"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (1 if smoke else 4)
    args.global_batch = args.global_batch or (16 if smoke else 128)
    args.records = args.records or (256 if smoke else 4096)
    args.anchor_steps = args.anchor_steps or (2 if smoke else 30)
    if smoke and args.anchor and not args.anchor_precision:
        args.anchor_precision = "32-true"  # bf16 autocast on a CPU is far too slow for a smoke test
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # less fragmentation with ragged micro-batches (read at the first CUDA allocation)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.smoke:
        torch.set_num_threads(1)  # a smoke run shares a small CPU; one thread is the robust choice
    summary = anchor(args) if args.anchor else bench(args)
    print(json.dumps(summary, indent=2))
    if args.out:
        write_json(args.out, summary)
    return 0


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
