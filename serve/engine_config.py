"""How the serve engine sizes its batch and cache and compiles its decode step: `EngineConfig`.

Its own module, free of torch, so that the server's settings (`serve.settings`) take their defaults
from here without loading torch for `python -m serve -h`: every engine default lives in this file.
"""

from __future__ import annotations

from dataclasses import dataclass

LORA_LAYERS: tuple[str, ...] = ("query", "key", "value", "projection", "mlp")
"""The LoRA layer switches several twins on one base can hold: finetune's `lora_<name>` flags but the head
(`finetune.twin.LoraArgs`; a test keeps them in step)."""


@dataclass
class EngineConfig:
    """The engine's sizes and switches; every problem is reported in one ValueError on construction."""

    max_batch_size: int = 32
    """Slots decoded together (requests generating at once); the KV cache holds this many sequences."""
    max_seq_length: int = 2048
    """Tokens per slot (prompt + reply); at most the model's context length."""
    max_queue: int = 64
    """Requests that may wait for a slot; one more is answered EngineBusy (HTTP 503)."""
    compile: bool | None = None
    """torch.compile the decode step (and record CUDA graphs on GPU). None: on for CUDA, off on CPU."""
    compile_tuning: bool = False
    """Let inductor benchmark its kernels' launch configs while compiling (coordinate descent, as
    gpt-fast and `litgpt generate --compile` do). Off: on an H100 at Falcon-7B's shape it made the
    compile 2.3x longer (82 s vs 35 s for batch 1) and the step 5% slower (7.12 vs 6.80 ms)."""
    fuse_blocks: bool = True
    """Fuse each block's matmuls into fewer, larger GEMVs (`serve.generate.fuse_blocks`): Falcon's
    parallel blocks' four into two (`ParallelBlock`), the Llama kind's gate and up projections into one
    (`SequentialBlock`: Llama, SmolLM2, Mistral, Qwen, Gemma 1); same results. Blocks of other kinds stay
    litgpt's. Off: litgpt's blocks as they are (for comparisons)."""
    prefill_token_budget: int | None = None
    """Prompt tokens of one prefill chunk (padded: rows x longest row). Prompts that arrive together are
    prefilled together in chunks of at most this many tokens, a long prompt over several chunks, one
    chunk between two decode steps: it bounds the stall a burst of new prompts causes for streams that
    are already generating. None: 4096 on a GPU, 512 on a CPU."""
    compile_cache_dir: str | None = None
    """Folder of the compile artifacts (Inductor/AOT autograd caches, autotuned kernel choices), reused
    by the next start (`serve.compile_cache`). None: Inductor's default (/tmp/torchinductor_$USER)."""
    warmup_prompt_tokens: int = 512
    """Length of the warm-up prompt (capped by max_seq_length - 1)."""
    twin_slots: int = 0
    """Twins held unmerged over one base, each request picking one (`serve.multi_lora`); slot 0, the base,
    comes on top. 0: one twin, its adapter merged into the base (the fastest decode step)."""
    max_lora_rank: int = 16
    """The largest LoRA rank a twin slot holds (per adapted matrix); memory is reserved for it."""
    lora_layers: tuple[str, ...] = LORA_LAYERS
    """The LoRA switches (finetune's `lora_<name>`) the twin slots hold: layers none of them names get no
    twin bank and cost the decode step nothing (`serve.multi_lora`)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch_size < 1:
            problems.append("max_batch_size must be at least 1")
        if self.max_seq_length < 2:
            problems.append("max_seq_length must be at least 2")
        if self.max_queue < 0:
            problems.append("max_queue must be 0 or more")
        if self.twin_slots < 0 or self.max_lora_rank < 1:
            problems.append("twin_slots must be 0 or more and max_lora_rank at least 1")
        if self.twin_slots and not self.fuse_blocks:
            problems.append("twin_slots needs fuse_blocks (the fused blocks hold the twins' updates)")
        if self.prefill_token_budget is not None and self.prefill_token_budget < 1:
            problems.append("prefill_token_budget must be at least 1")
        if problems:
            raise ValueError("engine settings: " + "; ".join(problems))
