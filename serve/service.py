"""What the routes work with, built once at start-up: the tokenizer, the prompt format (the adapter's, or
with no adapter the base's own), the memory of past exchanges (the adapter's, when it has one), the engine
and the effective limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from litgpt.tokenizer import Tokenizer

from common.device import resolve_device, resolve_dtype
from finetune.twin import (
    AdapterSpec,
    TwinError,
    check_base,
    encode_prompt,
    load_base_config,
    read_adapter_spec,
    read_memory,
    serving_prompter,
    stop_token_ids,
)
from prepare.memory import Exchange, Memory, memory_query
from prepare.prompt import Prompter, turns_from_messages
from serve.engine import Engine, EngineConfig
from serve.model import check_quantize, load_model, load_tokenizer
from serve.settings import Settings, compile_cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_new_tokens: int
    default_max_tokens: int

    @property
    def max_seq_length(self) -> int:
        return self.max_input_tokens + self.max_new_tokens


def fit_limits(settings: Settings, block_size: int) -> Limits:
    """The settings' token limits, shrunk to the model's context length if they do not fit in it."""
    max_input, max_new = settings.max_input_tokens, settings.max_new_tokens
    if max_input + max_new > block_size:
        max_new = min(max_new, block_size // 2)
        max_input = min(max_input, block_size - max_new)
        log.warning(
            "max_input_tokens + max_new_tokens exceed the model's %d-token context: using %d + %d",
            block_size,
            max_input,
            max_new,
        )
    return Limits(max_input, max_new, min(settings.default_max_tokens, max_new))


@dataclass
class TwinService:
    settings: Settings
    tokenizer: Tokenizer
    engine: Engine
    limits: Limits
    created: int
    prompter: Prompter = field(default_factory=Prompter)
    """How a live chat becomes a prompt: the format the adapter was trained with (`finetune.twin`)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings applied to every reply (settings' default_stop, else the prompt format's)."""
    memory: Memory | None = None
    """The person's past exchanges (the adapter's memory.jsonl), loaded once; None: memory off."""
    memory_k: int = 0
    """Past exchanges retrieved into each prompt (0: memory off)."""

    def encode(self, prompt: str) -> list[int]:
        """A rendered prompt's token ids, exactly as training encoded its prompts."""
        return encode_prompt(self.tokenizer, self.prompter, prompt)

    def recall(self, messages: Sequence[Mapping[str, Any]]) -> list[Exchange]:
        """The past exchanges to show with this live chat, best first ([] with memory off); searched as
        training searched for its records (`prepare.memory.memory_query`). A malformed chat: ValueError."""
        if self.memory is None or self.memory_k <= 0:
            return []
        turns, _ = turns_from_messages(messages)
        return self.memory.retrieve(memory_query(turns[:-1], turns[-1].text), self.memory_k)


def build_service(settings: Settings) -> TwinService:
    """Tokenizer and limits now (fast, fails early); the engine loads the model when started."""
    config = load_base_config(settings.checkpoint_dir)
    spec = None
    if settings.lora_path is not None:  # the adapter's spec only: its tensors load with the model
        spec = read_adapter_spec(settings.lora_path)
        check_base(spec, config, settings.checkpoint_dir)
    prompter = serving_prompter(settings.checkpoint_dir, spec)
    tokenizer = load_tokenizer(settings.checkpoint_dir)
    stop = prompter.stop_strings if settings.default_stop is None else list(settings.default_stop)
    # the end of the person's turn: EOS and, for a chat template, its end-of-turn token (<|im_end|>, ...)
    stop_ids = stop_token_ids(tokenizer, prompter)
    log.info("prompt format %s: replies end at token ids %s or the text %s", prompter.format, stop_ids, stop)
    memory, memory_k = load_memory(settings, spec)
    limits = fit_limits(settings, config.block_size)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)
    engine_config = EngineConfig(
        max_batch_size=settings.max_batch_size,
        max_seq_length=limits.max_seq_length,
        max_queue=settings.max_queue,
        compile=settings.compile,
        prefill_token_budget=settings.prefill_tokens,
        compile_cache_dir=str(compile_cache_dir(settings)),
    )
    if settings.quantize != "none":
        check_quantize(settings.quantize, device)
    build = partial(
        load_model, settings.checkpoint_dir, settings.lora_path, device, dtype, quantize=settings.quantize
    )
    engine = Engine(build, engine_config, eos_ids=stop_ids)
    return TwinService(
        settings, tokenizer, engine, limits, int(time.time()), prompter, stop, memory, memory_k
    )


def load_memory(settings: Settings, spec: AdapterSpec | None) -> tuple[Memory | None, int]:
    """(memory, k): the adapter's memory.jsonl and how many exchanges each prompt shows — the adapter's
    memory_k unless TWIN_MEMORY_K says otherwise (0: off, nothing loaded)."""
    trained_k = spec.memory_k if spec is not None else 0
    k = trained_k if settings.memory_k is None else settings.memory_k
    if k <= 0:
        if trained_k:
            log.info("memory off (TWIN_MEMORY_K=0): the twin was trained with %d past exchanges", trained_k)
        return None, 0
    if settings.lora_path is None:
        raise TwinError(
            f"TWIN_MEMORY_K={k} needs an adapter trained with memory (python -m finetune --memory-k K, "
            "TWIN_LORA_PATH): the base model has no memory of your exchanges"
        )
    memory = read_memory(settings.lora_path)
    log.info(
        "memory: %d past exchanges, %d retrieved into each prompt (trained with %d)",
        len(memory), k, trained_k,
    )  # fmt: skip
    return memory, k
