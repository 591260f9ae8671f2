"""Fine-tuning throughput of our loop on several devices: Fabric DDP and FSDP on 1–8 GPUs (issue 19).

    python bench/scaling_bench.py --out $OUT/scaling.json       # GPUs: both shapes, ddp and fsdp, 1..8
    python bench/scaling_bench.py --fsdp-big --big-layers 80    # GPUs: + the whole Llama-3.1-70B, FSDP
    python bench/scaling_bench.py --smoke --out /tmp/scaling.json   # CPU: tiny model, 1 and 2 gloo procs

Each (shape, strategy, device count) runs in a fresh `python bench/scaling_bench.py --worker SPEC`
process that builds Fabric with `devices=N` and the strategy `finetune.train.make_strategy` picks for
`--devices N --strategy ddp|fsdp` (FSDP wraps each Block, the frozen base sharded with the LoRA
weights), then `fabric.launch()`es itself N times (Fabric's subprocess launcher), so every run starts with
clean device memory and process groups; the parent collects one JSON record per run.

Inside a run, as bench/finetune_bench.py does (its functions, imported): litgpt's LoRA GPT at
Falcon-7B's or Llama-3.1-8B's shape with random weights (bf16; fp32 on a CPU), the synthetic chat
records (made once by the parent, the same for every run), the loop's batching (`BatchPlan`:
length-grouped steps of `--global-batch` sequences split over the ranks, each rank's share cut into
micro-batches under `--micro-batch-tokens`), and `finetune.model.train_step`, the loop's own step.
`--warmup` untimed steps, then `--steps` timed ones between two barriers (after a CUDA synchronize).
On one device `make_strategy` uses no wrapper at all, so the 1-device row (strategy "single") is the
baseline of both DDP and FSDP.

Per row: non-pad tokens/s over all devices and per device; scaling efficiency = tokens/s at N over
N × tokens/s at 1 device (same shape, same invocation); peak memory per device (the max over ranks);
the bytes the whole frozen base takes; with `--profile`, the share of one extra step's wall time spent
in NCCL kernels (kernel names containing "nccl", from torch.profiler; the max over ranks; NCCL kernels
may overlap compute on their own stream, so this is an upper bound on what communication costs; CUDA
only, null on a CPU). `--fsdp-big` adds an FSDP row at the largest device count with Llama-3.1-70B's
layer shape truncated to `--big-layers` layers (8: ~9 B parameters, ~18 GB at bf16, which still fits one
H200; 80: the whole 70B base, ~141 GB, which does not), to show per-device memory against the whole base.

Run order is by priority, so a `--time-budget` cut keeps the key numbers: each shape's 1-device row,
then each shape's rows at the largest device count, then the `--fsdp-big` row, then the device counts
in between. A run starts only if the time left exceeds the median of the finished runs' times; each is
killed at the deadline. A run that fails or is skipped gets a record with the reason, never a crash of
the whole bench. With `--out` the JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # the repo's packages, and this folder's helpers

import lightning as L  # noqa: E402
import torch  # noqa: E402
from finetune_bench import (  # noqa: E402
    MODELS,
    make_data,
    model_config,
    randomize,
    versions,
    write_json,
)
from litgpt.lora import GPT, Config, mark_only_lora_as_trainable  # noqa: E402

from finetune.args import FinetuneArgs, RunArgs, TrainArgs  # noqa: E402
from finetune.data import BatchPlan, Step  # noqa: E402
from finetune.model import attach_loss_positions, make_optimizer, prepare_lora_layers, train_step  # noqa: E402
from finetune.train import make_strategy  # noqa: E402

STRATEGIES = ("ddp", "fsdp")
BIG_MODEL = "Llama-3.1-70B"
"""litgpt config whose layer shape the `--fsdp-big` row uses (truncated to `--big-layers`)."""
DEFAULT_BUDGET_S = 540.0
"""Default --time-budget on GPUs: the key rows of both shapes within one 10-minute call."""
SMOKE_BUDGET_S = 240.0
MIN_RUN_TIMEOUT_S = 30.0
LORA_FIELDS = (
    "lora_r", "lora_alpha", "lora_dropout", "lora_query", "lora_key", "lora_value", "lora_projection",
    "lora_mlp", "lora_head",
)  # fmt: skip


# --------------------------------------------------------------------------------------------- worker
def run_config(spec: dict[str, Any], vocab_size: int) -> Config:
    """The model of one run: `--model`'s shape (tiny with --smoke), or the truncated 70B for fsdp-big."""
    ns = argparse.Namespace(smoke=spec["smoke"], lora_targets=tuple(spec["lora_targets"]))
    config = model_config("llama-3.1-8b" if spec["big"] else spec["model"], ns, vocab_size)
    if not spec["big"]:
        return config
    if spec["smoke"]:  # the tiny Llama, deeper: the plumbing of the row, not its point
        config.n_layer = spec["big_layers"]
        config.name = f"tiny-llama-{spec['big_layers']}-layers-bench"
        return config
    lora = {k: getattr(config, k) for k in LORA_FIELDS}
    big = Config.from_name(BIG_MODEL, n_layer=spec["big_layers"], **lora)
    big.name = f"{BIG_MODEL}-{spec['big_layers']}-layers"
    return big


def comm_share(fabric: L.Fabric, run_one: Any) -> float | None:
    """Share of one step's wall time in NCCL kernels (torch.profiler; max over ranks); None on a CPU."""
    if fabric.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fabric.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run_one()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    nccl_us = sum(
        getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages() if "nccl" in e.key.lower()
    )
    share = torch.tensor(nccl_us / wall_us, device=fabric.device)
    return round(float(fabric.all_gather(share).max()), 4)


def worker_main(fabric: L.Fabric, spec: dict[str, Any]) -> None:
    """One run on every rank: build, warm up, time, measure; rank 0 writes the record."""
    cuda = fabric.device.type == "cuda"
    if spec["smoke"]:
        torch.set_num_threads(1)  # N processes share a small CPU
    data = torch.load(spec["data"], weights_only=False)
    examples, pad_id = data["examples"], data["pad_id"]
    config = run_config(spec, data["vocab_size"])
    fsdp = isinstance(fabric.strategy, L.fabric.strategies.FSDPStrategy)

    # as finetune.train.build_model: under FSDP the model is built on the meta device, and set-up
    # materializes each rank's shard (reset_parameters gives random weights there)
    fabric.seed_everything(0, verbose=False)
    t_build = time.perf_counter()
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    dtype_bytes = 4 if spec["smoke"] else 2
    base_bytes = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) * dtype_bytes
    if not fsdp:
        randomize(model)
    model.max_seq_length = spec["max_seq_length"]
    if not fsdp:
        model.reset_parameters()  # the rope cache, now on the device
    mark_only_lora_as_trainable(model)
    prepare_lora_layers(model, build_buffers=not fsdp)
    head = attach_loss_positions(model)
    fabric_model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(make_optimizer(fabric_model, 1e-4, 0.01, fabric.device))
    build_s = time.perf_counter() - t_build

    plan = BatchPlan(
        examples=examples,
        global_batch_size=spec["global_batch"],
        micro_batch_tokens=spec["micro_batch_tokens"],
        micro_batch_size=64,
        pad_multiple=8,
        max_length=spec["max_seq_length"],
        seed=0,
        length_grouping=4,
        world_size=fabric.world_size,
        rank=fabric.global_rank,
    )
    need = spec["warmup"] + spec["steps"] + (1 if spec["profile"] else 0)
    steps: list[Step] = []
    epoch = 0
    while len(steps) < need:
        steps += list(plan.steps(epoch))
        epoch += 1

    def run(step: Step) -> torch.Tensor:
        return train_step(fabric, fabric_model, optimizer, head, step, examples, pad_id, 1.0)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in steps[: spec["warmup"]]:
        run(step)
    if cuda:
        torch.cuda.synchronize()
    fabric.barrier()
    warmup_s = time.perf_counter() - t0
    timed = steps[spec["warmup"] : spec["warmup"] + spec["steps"]]
    t0 = time.perf_counter()
    loss = torch.zeros((), device=fabric.device)
    for step in timed:
        loss = run(step)
    if cuda:
        torch.cuda.synchronize()
    fabric.barrier()
    seconds = time.perf_counter() - t0

    peak = torch.cuda.max_memory_allocated() if cuda else 0
    reserved = torch.cuda.max_memory_reserved() if cuda else 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    per_rank = torch.tensor([peak, reserved, rss], dtype=torch.float64, device=fabric.device)
    peaks = fabric.all_gather(per_rank).reshape(-1, 3).max(dim=0).values.tolist()
    share = comm_share(fabric, lambda: run(steps[-1])) if spec["profile"] else None
    if not fabric.is_global_zero:
        return
    n = fabric.world_size
    nonpad = sum(s.global_tokens for s in timed)
    padded = sum(s.global_padded_tokens for s in timed)
    device_total = torch.cuda.get_device_properties(fabric.device).total_memory if cuda else None
    record = {
        "config": config.name,
        "world_size": n,
        "strategy_class": type(fabric.strategy).__name__,
        "nonpad_tokens_per_s": round(nonpad / seconds, 1),
        "nonpad_tokens_per_s_per_device": round(nonpad / seconds / n, 1),
        "padding_fraction": round(1 - nonpad / padded, 4),
        "step_s": round(seconds / len(timed), 3),
        "timed_steps": len(timed),
        "micro_batches_per_step_per_device": round(sum(len(s.micro_batches) for s in timed) / len(timed), 1),
        "warmup_s": round(warmup_s, 1),
        "build_s": round(build_s, 1),
        "peak_memory_gib": round(peaks[0] / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(peaks[1] / 2**30, 2) if cuda else None,
        "peak_rss_gib": round(peaks[2] / 2**30, 2),
        "whole_base_gib": round(base_bytes / 2**30, 2),
        "device_memory_gib": round(device_total / 2**30, 1) if device_total else None,
        "whole_base_fits_one_device": base_bytes < device_total if device_total else None,
        "nccl_time_share": share,
        "last_step_loss_rank0": round(
            loss.item() / max(sum(mb.loss_tokens for mb in timed[-1].micro_batches), 1), 4
        ),
    }
    Path(spec["result"]).write_text(json.dumps(record))


def worker(spec_file: Path) -> int:
    spec = json.loads(spec_file.read_text())
    accelerator = "cpu" if spec["smoke"] else "cuda"
    ft = FinetuneArgs(
        run=RunArgs(devices=spec["devices"], strategy=spec["strategy"], accelerator=accelerator),
        train=TrainArgs(global_batch_size=spec["global_batch"]),
    )
    try:
        fabric = L.Fabric(
            accelerator=accelerator,
            devices=spec["devices"],
            strategy=make_strategy(ft),
            precision="32-true" if spec["smoke"] else "bf16-true",
        )
    except ValueError as e:  # e.g. Lightning's FSDP runs on GPUs only: a skipped row, with Fabric's reason
        Path(spec["result"]).write_text(json.dumps({"skipped": f"Fabric refuses this run: {e}"}))
        return 0
    fabric.launch(worker_main, spec)
    return 0


# --------------------------------------------------------------------------------------------- parent
def planned_runs(args: argparse.Namespace, available: int) -> list[dict[str, Any]]:
    """Every (shape, strategy, N) in priority order; counts over `available` become skipped rows."""
    counts = sorted(set(args.devices))
    multi = [n for n in counts if n > 1]
    usable = [n for n in multi if n <= available]
    top = max(usable) if usable else None
    runs: list[dict[str, Any]] = []
    if 1 in counts:
        runs += [{"model": m, "strategy": "single", "devices": 1} for m in args.model]
    if top:
        runs += [{"model": m, "strategy": s, "devices": top} for m in args.model for s in args.strategies]
    if args.fsdp_big and top:
        runs.append({"model": f"{BIG_MODEL.lower()}-{args.big_layers}l", "strategy": "fsdp", "devices": top,
                     "big": True})  # fmt: skip
    for n in sorted((n for n in usable if n != top), reverse=True):
        runs += [{"model": m, "strategy": s, "devices": n} for m in args.model for s in args.strategies]
    unit = "CPU processes" if args.smoke else "GPUs"
    for n in multi:
        if n > available:
            runs += [
                {"model": m, "strategy": s, "devices": n, "skipped": f"only {available} {unit} here"}
                for m in args.model
                for s in args.strategies
            ]
    if args.fsdp_big and not top:
        big = {"model": f"{BIG_MODEL.lower()}-{args.big_layers}l", "strategy": "fsdp", "big": True}
        runs.append({**big, "devices": max(counts), "skipped": "FSDP needs 2 devices or more"})
    return runs


def launch(run: dict[str, Any], args: argparse.Namespace, data_file: Path, timeout: float) -> dict[str, Any]:
    """One run in its own process group (the worker and the ranks Fabric launches); its record."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "model": run["model"],
            "strategy": "ddp" if run["strategy"] == "single" else run["strategy"],
            "devices": run["devices"],
            "big": run.get("big", False),
            "big_layers": args.big_layers,
            "smoke": args.smoke,
            "data": str(data_file),
            "result": str(Path(tmp) / "result.json"),
            "steps": args.steps,
            "warmup": args.warmup,
            "global_batch": args.global_batch,
            "micro_batch_tokens": args.micro_batch_tokens,
            "max_seq_length": args.max_seq_length,
            "lora_targets": list(args.lora_targets),
            "profile": args.profile,
        }
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
        env.pop("MASTER_PORT", None)  # Fabric picks a free port per run
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends every rank
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return {
                "error": f"killed at the time budget after {timeout:.0f} s",
                "output_tail": output[-1500:],
            }
        result = Path(spec["result"])
        if proc.returncode == 0 and result.exists():
            return json.loads(result.read_text())
        why = "out of memory" if "OutOfMemoryError" in output else f"exit status {proc.returncode}"
        return {"error": why, "output_tail": output[-1500:]}


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Scaling efficiency of each row against its shape's 1-device row of this invocation."""
    base = {
        r["model"]: r["nonpad_tokens_per_s"] for r in rows if r["devices"] == 1 and "nonpad_tokens_per_s" in r
    }
    for r in rows:
        if "nonpad_tokens_per_s" in r and not r.get("big"):
            one = base.get(r["model"])
            r["scaling_efficiency"] = (
                round(r["nonpad_tokens_per_s"] / (r["devices"] * one), 3) if one else None
            )


def bench(args: argparse.Namespace, t_start: float) -> dict[str, Any]:
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU check")
    available = max(args.devices) if args.smoke else torch.cuda.device_count()
    name = "cpu (gloo processes)" if args.smoke else torch.cuda.get_device_name()
    summary: dict[str, Any] = {
        "bench": "scaling",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": name,
        "devices_here": available,
        "versions": versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [],
    }

    def write() -> None:
        summary["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if args.out:  # after every row: a run cut short still leaves its numbers
            write_json(args.out, summary)

    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(args)  # once: every run trains on the very same encoded records
        data_file = Path(tmp) / "data.pt"
        vocab = data.tokenizer.vocab_size if args.smoke else 0
        torch.save({"examples": data.examples, "pad_id": data.pad_id, "vocab_size": vocab}, data_file)
        summary["data"] = data.summary()
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
        deadline = t_start + args.time_budget
        durations: list[float] = []
        for run in planned_runs(args, available):
            row = {k: v for k, v in run.items() if k != "skipped"}
            left = deadline - time.perf_counter()
            if "skipped" in run:
                row["skipped"] = run["skipped"]
            elif left <= (statistics.median(durations) if durations and not args.smoke else 0):
                row["skipped"] = f"time budget: {left:.0f} s left"
            else:
                t_run = time.perf_counter()
                result = launch(run, args, data_file, max(left, MIN_RUN_TIMEOUT_S))
                if args.smoke and "error" in result and "time budget" not in result["error"]:
                    # a shared CPU box can fail a gloo rendezvous now and then: once more, saying so
                    left = deadline - time.perf_counter()
                    first = result
                    result = launch(run, args, data_file, max(left, MIN_RUN_TIMEOUT_S))
                    result["first_try"] = {k: first[k] for k in ("error", "output_tail") if k in first}
                row |= result
                row["run_s"] = round(time.perf_counter() - t_run, 1)
                durations.append(row["run_s"])
            summary["rows"].append(row)
            add_efficiency(summary["rows"])
            print(json.dumps({k: v for k, v in row.items() if k != "output_tail"}), flush=True)
            write()
    write()
    return summary


def print_table(summary: dict[str, Any]) -> None:
    """The rows as a short table, last in the output (a GPU call returns the output's tail)."""
    print(f"\n{summary['device']}: {summary['devices_here']} here")
    print(f"{'model':<18} {'strategy':<8} {'N':>2} {'tok/s':>10} {'tok/s/dev':>10} {'eff':>6} {'GiB/dev':>8}"
          f" {'base GiB':>8} {'nccl':>6}")  # fmt: skip
    for r in summary["rows"]:
        head = f"{r['model']:<18} {r['strategy']:<8} {r['devices']:>2}"
        if "nonpad_tokens_per_s" not in r:
            print(f"{head} {r.get('skipped') or r.get('error')}")
            continue
        eff = r.get("scaling_efficiency")
        gib = r["peak_memory_gib"] if r["peak_memory_gib"] is not None else r["peak_rss_gib"]
        mem = f"{gib:.2f}" + ("" if r["peak_memory_gib"] is not None else "*")
        share = r["nccl_time_share"]
        print(
            f"{head} {r['nonpad_tokens_per_s']:>10,.0f} {r['nonpad_tokens_per_s_per_device']:>10,.0f}"
            f" {(f'{eff:.0%}' if eff is not None else '-'):>6} {mem:>8} {r['whole_base_gib']:>8.2f}"
            f" {(f'{share:.0%}' if share is not None else '-'):>6}"
        )
    if any(r.get("peak_memory_gib") is None and "peak_rss_gib" in r for r in summary["rows"]):
        print("* peak resident memory of a process (CPU), not device memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU: a tiny model, 1 and 2 gloo processes")
    p.add_argument("--model", default=None,
                   help=f"comma list of {', '.join(MODELS)} (default both; smoke falcon-7b)")  # fmt: skip
    p.add_argument("--strategies", default="ddp,fsdp", help="comma list of ddp,fsdp (default both)")
    p.add_argument("--devices", default=None, help="comma list of device counts (default 1,2,4,8; smoke 1,2)")
    p.add_argument("--fsdp-big", action="store_true", help=f"add an FSDP row with {BIG_MODEL}'s layers")
    p.add_argument("--big-layers", type=int, default=8, help="layers of the --fsdp-big model (80: all)")
    p.add_argument("--profile", action="store_true", help="share of step time in NCCL kernels (CUDA)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed optimizer steps per run (default 4; smoke 2)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 2; smoke 1)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="sequences per step over all devices (default 128; smoke 16)")  # fmt: skip
    p.add_argument("--micro-batch-tokens", type=int, default=8192, help="per device, as in finetune")
    p.add_argument("--records", type=int, default=None, help="synthetic records (default 4096; smoke 256)")
    p.add_argument("--max-seq-length", type=int, default=1024, help="longer records are truncated")
    p.add_argument("--lora-targets", default="q,v", help="comma list of q,k,v,proj,mlp,head (default: q,v)")
    p.add_argument("--time-budget", type=float, default=None,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}; "
                        f"smoke {SMOKE_BUDGET_S:.0f})")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every row)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    smoke, problems = args.smoke, []
    args.model = [
        m.strip().lower() for m in (args.model or ("falcon-7b" if smoke else ",".join(MODELS))).split(",")
    ]
    problems += [f"unknown --model {m!r} (use {', '.join(MODELS)})" for m in args.model if m not in MODELS]
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    problems += [f"unknown strategy {s!r} (use ddp,fsdp)" for s in args.strategies if s not in STRATEGIES]
    try:
        args.devices = [int(n) for n in (args.devices or ("1,2" if smoke else "1,2,4,8")).split(",")]
    except ValueError:
        problems.append("--devices takes a comma list of whole numbers, e.g. 1,2,4,8")
        args.devices = [1]
    problems += [f"--devices {n}: must be at least 1" for n in args.devices if n < 1]
    args.lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    args.steps = args.steps or (2 if smoke else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    args.global_batch = args.global_batch or (16 if smoke else 128)
    args.records = args.records or (256 if smoke else 4096)
    args.time_budget = args.time_budget or (SMOKE_BUDGET_S if smoke else DEFAULT_BUDGET_S)
    problems += [f"--global-batch ({args.global_batch}) must be a multiple of --devices {n}"
                 for n in args.devices if args.global_batch % n]  # fmt: skip
    if args.big_layers < 1:
        problems.append("--big-layers must be at least 1")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.smoke:
        torch.set_num_threads(1)
    summary = bench(args, t_start)
    print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
