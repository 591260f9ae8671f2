"""Where one batch-1 decode step's time goes at Falcon-7B's shape (random bf16 weights), and what each
serve-engine change buys, measured step by step in one process.

    python bench/decode_profile.py --out decode_profile.json   # CUDA
    python bench/decode_profile.py --smoke                     # CPU, tiny config: checks the script

Variants (each compiled with `mode="reduce-overhead"`, batch 1, position 300 of a 2,048-token cache):
- `litgpt-blocks, eager sort sampler`: litgpt's blocks; the CUDA graph returns logits and the top-p
  sampler (softmax, full-vocabulary sort, cumsum) runs eagerly after it — the engine before this change;
- `litgpt-blocks, in-graph sampler`: `serve.generate.decode_step` (the top-k-prefix sampler in the graph);
- `fused blocks (cuBLAS), in-graph sampler`: after `fuse_parallel_blocks(gemv=False)`: two big
  matmuls a block instead of four, still cuBLAS;
- `fused blocks + Triton GEMVs, in-graph sampler`: `serve.kernels` GEMVs for the block matmuls (with
  the norm, GELU, concatenation and residual folded in) and the LM head;
- `... + Triton decode attention`: and `serve.kernels.decode_attention` — what the engine runs now;
- the same with Inductor's `combo_kernels` (horizontal fusion of independent small kernels).
The variants before the last two use the plain-matmul decode attention.

For the last variant a torch.profiler pass splits the step into GEMM/GEMV kernels, Inductor's fused
Triton kernels and the rest. Also prints the device's copy bandwidth (the roofline of a batch-1 step).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from litgpt.config import Config  # noqa: E402

from finetune.tiny import tiny_config  # noqa: E402
from serve.generate import (  # noqa: E402
    ParallelBlock,
    decode_logits,
    decode_step,
    fuse_parallel_blocks,
    select_kernels,
    setup_caches,
)
from serve.model import random_model  # noqa: E402

RECORDS: list[dict[str, Any]] = []


def emit(record: dict[str, Any]) -> None:
    RECORDS.append(record)
    print(json.dumps(record), flush=True)


def sort_sampler(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The engine's sampler before the in-graph one: a full-vocabulary sort, run eagerly."""
    greedy = logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature.clamp_min(1e-5).unsqueeze(-1), dim=-1)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before > top_p.unsqueeze(-1), 0.0)
    race = torch.empty_like(sorted_probs).exponential_(1)
    choice = (sorted_probs / race).argmax(dim=-1, keepdim=True)
    sampled = sorted_ids.gather(-1, choice).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], torch.Tensor], device: torch.device, n: int) -> float:
    """Milliseconds a step, `n` steps enqueued back to back (each feeding the next, as decoding does)."""
    for _ in range(5):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n * 1e3


def kernel_breakdown(step: Callable[[], torch.Tensor], device: torch.device, n: int = 20) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(n):
            step()
        sync(device)
    groups: dict[str, float] = {"gemm": 0.0, "triton (inductor-fused)": 0.0, "other": 0.0}
    counts: dict[str, int] = dict.fromkeys(groups, 0)
    top = []
    for event in prof.key_averages():
        us = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / n
        if us <= 0:
            continue
        name = event.key
        low = name.lower()
        if any(k in low for k in ("gemm", "gemv", "nvjet", "cutlass", "sm90_xmma", "ampere_")):
            group = "gemm"
        elif low.startswith("triton_"):
            group = "triton (inductor-fused)"
        else:
            group = "other"
        groups[group] += us
        counts[group] += event.count // n
        top.append((us, event.count // n, name[:90]))
    top.sort(reverse=True)
    return {
        "us_per_step_by_group": {k: round(v, 1) for k, v in groups.items()},
        "kernels_per_step_by_group": counts,
        "top_kernels": [{"us_per_step": round(us, 1), "calls": c, "name": k} for us, c, k in top[:20]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, eager (checks the script)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="only the first (old engine) and the current variant")
    p.add_argument("--out", type=Path, help="also write the records here (JSON)")
    args = p.parse_args(argv)
    if args.smoke:
        device, dtype, config, compile_ = torch.device("cpu"), torch.float32, tiny_config(300), False
        args.steps = min(args.steps, 5)
    else:
        if not torch.cuda.is_available():
            p.error("needs a CUDA GPU (or --smoke)")
        device, dtype, config, compile_ = (
            torch.device("cuda"),
            torch.bfloat16,
            Config.from_name("falcon-7b"),
            True,
        )
        torch.set_float32_matmul_precision("high")
    emit(
        {
            "what": "environment",
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "model": config.name,
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    max_seq = min(2048, config.block_size)
    tokens = torch.zeros(1, 1, dtype=torch.int64, device=device)
    pos = torch.full((1, 1), min(300, max_seq - 1), dtype=torch.int64, device=device)
    temperature = torch.full((1,), 0.8, device=device)
    top_p = torch.full((1,), 0.95, device=device)
    if device.type == "cuda":
        x = torch.empty(2**31, dtype=torch.uint8, device=device)
        y = torch.empty_like(x)
        ms = time_steps(lambda: y.copy_(x), device, 20)
        emit({"what": "copy bandwidth (read + write)", "tb_per_s": round(2 * x.numel() / ms / 1e9, 3)})
        del x, y
    model = random_model(config, device, dtype)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    with torch.no_grad():
        setup_caches(model, 1, max_seq)
        variants: list[tuple[str, str, bool, bool, dict[str, Any]]] = [
            ("litgpt blocks, eager sort sampler", "litgpt", False, False, {}),
            ("litgpt blocks, in-graph sampler", "litgpt", True, False, {}),
            ("fused blocks (cuBLAS), in-graph sampler", "fused", True, False, {}),
            ("fused blocks + Triton GEMVs, in-graph sampler", "gemv", True, False, {}),
            ("... + Triton decode attention", "gemv", True, True, {}),
            ("... + Inductor combo_kernels", "gemv", True, True, {"combo_kernels": True}),
        ]
        if args.quick:
            variants = [variants[0], variants[4]]
        steps: list[Callable[[], torch.Tensor]] = []
        for name, blocks, in_graph, attention, inductor in variants:
            torch._dynamo.reset()
            if blocks != "litgpt" and not isinstance(model.transformer.h[0], ParallelBlock):
                fuse_parallel_blocks(model, gemv=False)  # in place: the later variants are all fused
            # the fused blocks' and LM head's Triton GEMVs or cuBLAS, the Triton decode attention or not
            select_kernels(model, gemv=blocks == "gemv", attention=attention)
            fn: Callable[..., torch.Tensor] = decode_step if in_graph else decode_logits
            if compile_:
                fn = torch.compile(fn, mode="reduce-overhead", fullgraph=True)

            def step(fn: Callable[..., torch.Tensor] = fn, in_graph: bool = in_graph) -> torch.Tensor:
                if compile_:
                    torch.compiler.cudagraph_mark_step_begin()
                if in_graph:
                    out = fn(model, tokens, pos, temperature, top_p)
                else:
                    out = sort_sampler(fn(model, tokens, pos), temperature, top_p)
                tokens.copy_(out.view(1, 1))
                return out

            steps.append(step)
            try:
                with torch._inductor.config.patch(inductor):
                    t = time.perf_counter()
                    for _ in range(3):
                        step()
                    sync(device)
                    compile_s = time.perf_counter() - t
                    ms = time_steps(step, device, args.steps)
            except Exception as e:  # keep going: report the variant that failed
                emit({"what": name, "error": f"{type(e).__name__}: {e}"[:800]})
                steps.pop()
                continue
            emit(
                {
                    "what": name,
                    "ms_per_step": round(ms, 3),
                    "tokens_per_s": round(1e3 / ms, 1),
                    "compile_s": round(compile_s, 1),
                    "weights_gb": round(weight_bytes / 1e9, 2),
                    "weights_tb_per_s": round(weight_bytes / ms / 1e9, 3),
                }
            )
        # the Triton path against cuBLAS on the same weights (eager, one token)
        logits = {}
        for on in (False, True):
            select_kernels(model, gemv=on, attention=True)
            logits[on] = decode_logits(model, tokens, pos)
        emit(
            {
                "what": "Triton GEMV path vs cuBLAS path, same weights, eager",
                "logits_max_abs_diff": round((logits[True] - logits[False]).abs().max().item(), 5),
                "logits_max_abs": round(logits[False].abs().max().item(), 3),
                "same_argmax": bool((logits[True].argmax(-1) == logits[False].argmax(-1)).all()),
            }
        )
        breakdown = kernel_breakdown(steps[-1], device)
        emit({"what": f"kernels of a step: {variants[-1][0]}", **breakdown})
    if args.out:
        args.out.write_text(json.dumps(RECORDS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
