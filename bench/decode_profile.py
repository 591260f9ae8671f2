"""Where one batch-1 decode step's time goes at Falcon-7B's or Llama-3.1-8B's shape (random bf16 weights),
and what each serve-engine change buys, measured step by step in one process.

    python bench/decode_profile.py --out decode_profile.json                        # CUDA, Falcon-7B
    python bench/decode_profile.py --model llama-3.1-8b --gemv-sweep --out x.json   # CUDA, Llama-3.1-8B
    python bench/decode_profile.py --smoke [--model llama-3.1-8b] [--gemv-sweep]    # CPU: checks the script

Variants (each compiled with `mode="reduce-overhead"`, batch 1, position 300 of a 2,048-token cache):
- `litgpt-blocks, eager sort sampler`: litgpt's blocks; the CUDA graph returns logits and the top-p
  sampler (softmax, full-vocabulary sort, cumsum) runs eagerly after it — the engine before this change;
- `litgpt-blocks, in-graph sampler`: `serve.generate.decode_step` (the top-k-prefix sampler in the graph);
- `fused blocks (cuBLAS), in-graph sampler`: after `fuse_blocks(gemv=False)`: Falcon's four matmuls a
  block as two, Llama's gate and up as one, still cuBLAS;
- `fused blocks + Triton GEMVs, in-graph sampler`: `serve.kernels` GEMVs for the block matmuls (with
  the activation, concatenation and residual adds folded in) and the LM head;
- `... + Triton decode attention`: and `serve.kernels.decode_attention` — what the engine runs now;
- the same with Inductor's `combo_kernels` (horizontal fusion of independent small kernels).
The variants before the last two use the plain-matmul decode attention (never broadcasting the key/value
groups to the query heads).

For the last variant a torch.profiler pass splits the step into GEMM/GEMV kernels, Inductor's fused
Triton kernels and the rest. Also prints the device's copy bandwidth (the roofline of a batch-1 step).
`--gemv-sweep` times the Triton GEMV alone on each of the model's weight matrices (the fused blocks' and
the LM head's) for several tile shapes (rows a program, K chunk, warps), from HBM (the weights rotate
through copies larger than L2, in one CUDA graph), against the copy bandwidth: which tile
`serve.kernels` should use at that shape. `--nf4-sweep` does the same for the 4-bit GEMVs of an NF4 base
(`serve.kernels_nf4`, random codes and scales in the packed layout: speed does not depend on the values)
on the model's fused NF4 matrices, at 1, 4 and 16 tokens a step:

    python bench/decode_profile.py --model llama-3.1-8b --nf4-sweep --quick --out nf4_sweep.json

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from litgpt.config import Config  # noqa: E402

from finetune.tiny import tiny_config  # noqa: E402
from serve import kernels  # noqa: E402
from serve.generate import (  # noqa: E402
    FusedBlock,
    ParallelBlock,
    SequentialBlock,
    decode_logits,
    decode_step,
    fuse_blocks,
    select_kernels,
    setup_caches,
)
from serve.model import random_model  # noqa: E402

MODELS = {"falcon-7b": "falcon-7b", "llama-3.1-8b": "Llama-3.1-8B"}
"""--model names → litgpt `Config.from_name` names."""
GEMV_TILES = [(4, 512, 4), (2, 512, 4), (8, 256, 4), (4, 1024, 4), (4, 1024, 8), (8, 512, 8), (2, 1024, 4)]
"""(rows a program, K chunk, warps) tried by --gemv-sweep (serve.kernels.gemv_tile picks per matrix)."""

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


def smoke_config(model: str) -> Config:
    """A tiny config of the shape's family (same block kind, grouping, RoPE settings)."""
    if model == "falcon-7b":
        return tiny_config(300)
    config = Config.from_name(
        MODELS[model],
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_query_groups=2,
        head_size=16,
        intermediate_size=160,
        vocab_size=300,
        padded_vocab_size=320,
        block_size=512,
    )
    config.name = f"tiny-{model}"
    return config


def gemv_launches(
    model: torch.nn.Module,
) -> dict[str, tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], Any]]]:
    """Each distinct one-token GEMV of the fused model: name → (weight, launch(x_source, weight))."""
    block = model.transformer.h[0]
    found: dict[str, tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], Any]]] = {}
    if isinstance(block, ParallelBlock):
        qkv, approximate = block.qkv_size, block.config.gelu_approximate
        found["[qkv; fc] + gelu"] = (
            block.w_in.weight,
            lambda x, w: kernels.gemv(x[: w.size(1)], w, None, qkv, approximate),
        )
        heads = block.attn.config.n_head * block.attn.config.head_size
        found["[proj | mlp.proj] + residual"] = (
            block.w_out.weight,
            lambda x, w: kernels.cat_gemv(x[:heads], x[heads : w.size(1)], w, None, x[: w.size(0)]),
        )
    elif isinstance(block, SequentialBlock):
        activation = block.activation
        found["qkv"] = (block.qkv.weight, lambda x, w: kernels.gemv(x[: w.size(1)], w))
        found["proj + residual"] = (
            block.proj.weight,
            lambda x, w: kernels.gemv(x[: w.size(1)], w, residual=x[: w.size(0)]),
        )
        found["[gate; up] + act * up"] = (
            block.w_in.weight,
            lambda x, w: kernels.glu_gemv(x[: w.size(1)], w, None, activation),
        )
        found["down + residual"] = (
            block.w_down.weight,
            lambda x, w: kernels.gemv(x[: w.size(1)], w, residual=x[: w.size(0)]),
        )
    found["lm_head"] = (model.lm_head.weight, lambda x, w: kernels.gemv(x[: w.size(1)], w))
    return found


def gemv_sweep(model: torch.nn.Module, device: torch.device, bandwidth: float | None) -> None:
    """Time the Triton GEMV on each of the model's weight matrices per tile in GEMV_TILES (see --help).
    On a CPU (--smoke, with TRITON_INTERPRET=1 set) each launch runs once through Triton's interpreter."""
    interpret = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if not kernels.available() or (device.type != "cuda" and not interpret):
        emit({"what": "gemv sweep: skipped (needs Triton and a CUDA GPU, or TRITON_INTERPRET=1 on a CPU)"})
        return
    saved = (kernels.TILE, kernels.cpu_interpreter)
    kernels.cpu_interpreter = interpret
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    try:
        for name, (weight, launch) in gemv_launches(model).items():
            nbytes = weight.numel() * weight.element_size()
            copies = max(1, -(-4 * l2 // nbytes))  # every launch reads its weight from HBM, not L2
            weights = [weight] + [weight.clone() for _ in range(copies - 1)]
            x = torch.randn(max(weight.shape), dtype=weight.dtype, device=device)
            row: dict[str, Any] = {
                "what": f"gemv sweep: {name}",
                "shape": list(weight.shape),
                "copies": copies,
            }
            for tile in GEMV_TILES:
                kernels.TILE = tile
                try:
                    ms = time_launches(lambda: [launch(x, w) for w in weights], device) / copies  # noqa: B023
                except Exception as e:  # keep the other tiles
                    row[str(tile)] = f"{type(e).__name__}: {e}"[:200]
                    continue
                row[str(tile)] = {
                    "us": round(ms * 1e3, 2),
                    "tb_per_s": round(nbytes / ms / 1e9, 3),
                    **({"pct_of_copy": round(100 * nbytes / ms / 1e9 / bandwidth, 1)} if bandwidth else {}),
                }
            emit(row)
    finally:
        kernels.TILE, kernels.cpu_interpreter = saved


NF4_TILES = [(2, 1024, 1), (4, 512, 1), (8, 512, 1), (2, 1024, 4), (4, 1024, 4), (8, 512, 4), (4, 2048, 4)]
"""(rows a program, K chunk in weights, warps) tried by --nf4-sweep (serve.kernels_nf4.nf4_tile picks)."""
NF4_QUAD_TILES = [
    (4, 1024, 1),
    (8, 1024, 1),
    (4, 512, 1),
    (8, 512, 1),
    (16, 512, 1),
    (8, 2048, 2),
    (4, 2048, 2),
]
"""The `quads` kernel's tiles (its rows share a thread's input: more rows a program), each with and
without the next chunk's codes loaded ahead (`kernels_nf4.QUADS_PREFETCH`)."""


def nf4_matrices(config: Config) -> dict[str, tuple[int, int, str]]:
    """The NF4 fused blocks' matrices of `config`: name → (rows, columns, kind: plain, glu or cat)."""
    hs = config.head_size
    qkv = (config.n_head + 2 * config.n_query_groups) * hs
    heads, C, inter = config.n_head * hs, config.n_embd, config.intermediate_size
    if config.parallel_residual:
        return {
            "[qkv; fc] + gelu": (qkv + inter, C, "plain"),
            "[proj | mlp.proj] + residual": (C, heads + inter, "cat"),
        }
    return {
        "qkv": (qkv, C, "plain"),
        "proj + residual": (C, heads, "plain"),
        "[gate; up] + act * up": (2 * inter, C, "glu"),
        "down + residual": (C, inter, "plain"),
    }


def random_packed(rows: int, K: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A packed NF4 weight of random codes and scales (groups of 64, as every 7B matrix has)."""
    from serve.kernels_nf4 import PackedNF4

    group = math.gcd(K, 64)  # 64 but at --smoke sizes
    codes = torch.randint(0, 256, (rows, K // 2), dtype=torch.uint8, device=device)
    scales = torch.rand(rows, K // group, device=device, dtype=dtype) / 10
    return PackedNF4(codes, scales, torch.linspace(-1, 1, 16, device=device, dtype=dtype), group)


def nf4_launch(kind: str, x: torch.Tensor, w: Any, residual: torch.Tensor, split: int) -> Any:
    """One NF4 GEMV of the fused blocks' kind: plain (with the residual where it fits), glu, cat."""
    from serve import kernels_nf4

    if kind == "glu":
        return kernels_nf4.nf4_glu_gemv(x, w)
    if kind == "cat":
        return kernels_nf4.nf4_cat_gemv(x[..., :split], x[..., split:], w, None, residual)
    fits = residual.size(-1) == w.shape[0]
    return kernels_nf4.nf4_gemv(x, w, residual=residual if fits else None)


def nf4_sweep(
    config: Config,
    device: torch.device,
    dtype: torch.dtype,
    bandwidth: float | None,
    only: list[str] | None = None,
) -> None:
    """Time the NF4 GEMV on each fused matrix of `config` per decode (`kernels_nf4.DECODES`) and tile in
    NF4_TILES (batch 1), and the default decode and tile at 4 and 16 tokens; each decode's output is
    checked against the dequantized weight's `F.linear` first. On a CPU (TRITON_INTERPRET=1) one launch
    each, through the interpreter (which runs no `prmt`: PTX)."""
    from serve import kernels_nf4

    interpret = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if not kernels_nf4.available() or (device.type != "cuda" and not interpret):
        emit({"what": "nf4 sweep: skipped (needs Triton and a CUDA GPU, or TRITON_INTERPRET=1 on a CPU)"})
        return
    saved = (
        kernels_nf4.TILE,
        kernels_nf4.DECODE,
        kernels_nf4.QUADS_PREFETCH,
        kernels_nf4.QUADS_SPLIT,
        kernels.cpu_interpreter,
    )
    kernels.cpu_interpreter = interpret
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    split = config.n_head * config.head_size  # Falcon's [proj | mlp.proj]: heads, then gelu(fc)
    decodes = [d for d in only or kernels_nf4.DECODES if not (interpret and d == "prmt")]
    try:
        for name, (rows, K, kind) in nf4_matrices(config).items():
            first = random_packed(rows, K, device, dtype)
            nbytes = first.nbytes()
            copies = max(1, -(-4 * l2 // nbytes))  # every launch reads its codes from HBM, not L2
            weights = [first] + [random_packed(rows, K, device, dtype) for _ in range(copies - 1)]
            out = rows // 2 if kind == "glu" else rows
            row: dict[str, Any] = {"what": f"nf4 sweep: {name}", "shape": [rows, K], "copies": copies}
            row["check"] = nf4_check(kind, first, split, device, dtype, decodes)
            Run = tuple[str | None, tuple[int, int, int] | None, int, bool, int | None]
            runs: list[Run] = [(d, t, 1, False, 1) for d in decodes if d != "quads" for t in NF4_TILES]
            if "quads" in decodes:
                runs += [("quads", t, 1, ahead, 1) for t in NF4_QUAD_TILES for ahead in (False, True)]
                # split-K (`kernels_nf4.QUADS_SPLIT`): fixed splits, and None (picked from the SM count)
                runs += [("quads", NF4_QUAD_TILES[2], 1, False, s) for s in (2, 4, 8, None)]
            defaults = kernels_nf4.QUADS_PREFETCH, kernels_nf4.QUADS_SPLIT
            for decode, tile, tokens, ahead, parts in [
                *runs,
                (None, None, 4, *defaults),
                (None, None, 16, *defaults),
            ]:
                kernels_nf4.TILE, kernels_nf4.DECODE = tile, decode
                kernels_nf4.QUADS_PREFETCH, kernels_nf4.QUADS_SPLIT = ahead, parts
                x = torch.randn(tokens, 1, K, device=device, dtype=dtype)
                res = torch.randn(tokens, 1, out, device=device, dtype=dtype)
                key = f"{decode or 'default'} {tile or kernels_nf4.nf4_tile(K, decode or 'quads')} x{tokens}"
                key += (" ahead" if ahead and decode else "") + (
                    f" split {parts or 'auto'}" if parts != 1 else ""
                )
                try:
                    ms = time_launches(
                        lambda x=x, res=res: [nf4_launch(kind, x, w, res, split) for w in weights],  # noqa: B023
                        device,
                    )
                    ms /= copies
                except Exception as e:  # keep the other tiles
                    row[key] = f"{type(e).__name__}: {e}"[:200]
                    continue
                row[key] = {
                    "us": round(ms * 1e3, 2),
                    "tb_per_s": round(nbytes / ms / 1e9, 3),
                    **({"pct_of_copy": round(100 * nbytes / ms / 1e9 / bandwidth, 1)} if bandwidth else {}),
                }
            emit(row)
    finally:
        (
            kernels_nf4.TILE,
            kernels_nf4.DECODE,
            kernels_nf4.QUADS_PREFETCH,
            kernels_nf4.QUADS_SPLIT,
            kernels.cpu_interpreter,
        ) = saved


def nf4_check(
    kind: str, w: Any, split: int, device: torch.device, dtype: torch.dtype, decodes: list[str]
) -> dict[str, Any]:
    """Each decode's output at 1, 3 and 16 tokens against the same fold computed in fp32 from the
    dequantized weight (a plain matrix also with a per-token addend and GELU from its middle row on, as
    Falcon's [qkv; fc] runs): the largest absolute difference, relative to the reference's largest value."""
    from serve import kernels_nf4

    rows, K = w.shape
    out = rows // 2 if kind == "glu" else rows
    weight = w.dequantize().float()
    result: dict[str, Any] = {}
    for tokens in (1, 3, 16):
        x = torch.randn(tokens, 1, K, device=device, dtype=dtype)
        res = torch.randn(tokens, 1, out, device=device, dtype=dtype)
        add = torch.randn(tokens, 1, rows, device=device, dtype=dtype) / 10
        y = x.float() @ weight.T
        if kind == "glu":
            gate, up = y.chunk(2, dim=-1)
            ref = F.silu(gate) * up
        elif kind == "cat":
            ref = y + res.float()
        else:
            y = y + add.float()
            ref = torch.cat((y[..., : rows // 2], F.gelu(y[..., rows // 2 :])), dim=-1)
        for decode in decodes:
            kernels_nf4.DECODE = decode
            if kind == "plain":
                got = kernels_nf4.nf4_gemv(x, w, gelu_from=rows // 2, add=add).float()
            else:
                got = nf4_launch(kind, x, w, res, split).float()
            err = float((got - ref).abs().max() / ref.abs().max())
            result[f"{decode} x{tokens}"] = round(err, 5)
    kernels_nf4.DECODE = None
    return result


def time_launches(run: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds a call of `run`: replayed from one CUDA graph on a GPU (no launch gaps), once on a CPU."""
    if device.type != "cuda":
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(run, rep=50))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, eager (checks the script)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="only the first (old engine) and the current variant")
    p.add_argument("--out", type=Path, help="also write the records here (JSON)")
    p.add_argument("--model", choices=list(MODELS), default="falcon-7b")
    p.add_argument("--gemv-sweep", action="store_true", help="also time the GEMV's tile shapes per matrix")
    p.add_argument("--nf4-sweep", action="store_true", help="also time the NF4 GEMV's tiles per NF4 matrix")
    p.add_argument(
        "--nf4-decodes",
        type=lambda v: [d for d in v.split(",") if d],
        default=None,
        help="comma list of the decodes --nf4-sweep times (default: all of serve.kernels_nf4.DECODES)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        device, dtype, config, compile_ = torch.device("cpu"), torch.float32, smoke_config(args.model), False
        args.steps = min(args.steps, 5)
    else:
        if not torch.cuda.is_available():
            p.error("needs a CUDA GPU (or --smoke)")
        device, dtype, config, compile_ = (
            torch.device("cuda"),
            torch.bfloat16,
            Config.from_name(MODELS[args.model]),
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
    bandwidth = None
    if device.type == "cuda":
        x = torch.empty(2**31, dtype=torch.uint8, device=device)
        y = torch.empty_like(x)
        ms = time_steps(lambda: y.copy_(x), device, 20)
        bandwidth = 2 * x.numel() / ms / 1e9  # TB/s
        emit({"what": "copy bandwidth (read + write)", "tb_per_s": round(bandwidth, 3)})
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
            if blocks != "litgpt" and not isinstance(model.transformer.h[0], FusedBlock):
                fuse_blocks(model, gemv=False)  # in place: the later variants are all fused
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
        if args.gemv_sweep:
            gemv_sweep(model, device, bandwidth)
        if args.nf4_sweep:
            nf4_sweep(config, device, dtype, bandwidth, args.nf4_decodes)
    if args.out:
        args.out.write_text(json.dumps(RECORDS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
