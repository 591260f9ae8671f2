"""The serve engine's GPU path decodes what litgpt decodes, for every served family (tiny random models).

    python bench/gpu_parity.py --out gpu_parity.json      # CUDA: fused blocks, Triton kernels, CUDA graphs
    python bench/gpu_parity.py --smoke                    # CPU: the same checks, eager, no kernels

The unit tests run the Triton kernels through Triton's interpreter on a CPU; this runs the engine as
`python -m serve` runs it on a GPU — fused blocks, Triton GEMVs and decode attention at batch 1, the
compiled decode step replayed from CUDA graphs per batch bucket — over each family's tiny random model
(tests/serve/model_families.py: Falcon, Llama-2, Llama-3.1, SmolLM2, Qwen2.5, Qwen3, Mistral, Gemma,
Gemma 2), in fp32, and compares its greedy tokens with litgpt's own `generate` on the same weights on
the CPU (fp32; for Gemma 2 its forward over the whole sequence, see `litgpt_greedy`): three prompts,
two of them decoded together (batch bucket 2), one alone (bucket 1, the GEMVs). One JSON line per
family, and a last line with the count; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests" / "serve")]

from model_families import (  # noqa: E402
    ENGINE_PROMPTS,
    FAMILIES,
    engine_greedy_tokens,
    litgpt_greedy,
    random_family_model,
)

NEW_TOKENS = 16


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, eager: checks the script")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list")
    p.add_argument("--out", type=Path, help="also write the records here (JSON)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_parity: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides: greedy ties stay ties
        torch.backends.cudnn.allow_tf32 = False
    records: list[dict[str, Any]] = []
    for family in args.families.split(","):
        reference = random_family_model(family, vocab_size=320)  # no padded rows for litgpt to pick
        t0 = time.perf_counter()
        try:
            outs, engine = engine_greedy_tokens(reference, NEW_TOKENS, not args.smoke, device)
            stats, error = engine.stats(), None
        except Exception as e:  # noqa: BLE001 — a family that fails is a row, the others still run
            outs, stats, error = [], {}, f"{type(e).__name__}: {e}"
        want = [litgpt_greedy(reference, prompt, NEW_TOKENS) for prompt in ENGINE_PROMPTS]
        record = {
            "family": family,
            "device": str(device),
            "match": error is None and outs == want,
            "tokens_equal": sum(
                a == b for o, w in zip(outs, want, strict=False) for a, b in zip(o, w, strict=False)
            ),
            "tokens": NEW_TOKENS * len(ENGINE_PROMPTS),
            "fused_blocks": stats.get("fused_blocks"),
            "compiled": stats.get("compiled"),
            "seconds": round(time.perf_counter() - t0, 1),
            "error": error,
        }
        if not record["match"] and error is None:
            record["ours"], record["litgpt"] = outs, want
        records.append(record)
        print(json.dumps(record), flush=True)
        torch._dynamo.reset()
    summary = {"families": len(records), "matching": sum(r["match"] for r in records)}
    print(json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps([*records, summary], indent=1) + "\n")
    return 0 if summary["matching"] == summary["families"] else 1


if __name__ == "__main__":
    sys.exit(main())
