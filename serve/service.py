"""What the routes work with, built once at start-up: the tokenizer, the prompt format (the adapter's, or
with no adapter the base's own), the engine and the effective limits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

from litgpt.tokenizer import Tokenizer

from common.device import resolve_device, resolve_dtype
from finetune.twin import (
    check_base,
    encode_prompt,
    load_base_config,
    read_adapter_spec,
    serving_prompter,
    stop_token_ids,
)
from prepare.prompt import Prompter
from serve.engine import Engine, EngineConfig
from serve.model import check_quantize, load_model, load_tokenizer
from serve.settings import Settings

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

    def encode(self, prompt: str) -> list[int]:
        """A rendered prompt's token ids, exactly as training encoded its prompts."""
        return encode_prompt(self.tokenizer, self.prompter, prompt)


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
    limits = fit_limits(settings, config.block_size)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)
    engine_config = EngineConfig(
        max_batch_size=settings.max_batch_size,
        max_seq_length=limits.max_seq_length,
        max_queue=settings.max_queue,
        compile=settings.compile,
    )
    if settings.quantize != "none":
        check_quantize(settings.quantize, device)
    build = partial(
        load_model, settings.checkpoint_dir, settings.lora_path, device, dtype, quantize=settings.quantize
    )
    engine = Engine(build, engine_config, eos_ids=stop_ids)
    return TwinService(settings, tokenizer, engine, limits, int(time.time()), prompter, stop)
