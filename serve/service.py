"""What the routes work with: the tokenizer, the engine and the effective limits, built once at start-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

from litgpt.tokenizer import Tokenizer

from common.device import resolve_device, resolve_dtype
from finetune.twin import check_base, load_base_config, read_adapter_spec
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


def build_service(settings: Settings) -> TwinService:
    """Tokenizer and limits now (fast, fails early); the engine loads the model when started."""
    config = load_base_config(settings.checkpoint_dir)
    if settings.lora_path is not None:  # the adapter's spec only: its tensors load with the model
        check_base(read_adapter_spec(settings.lora_path), config, settings.checkpoint_dir)
    tokenizer = load_tokenizer(settings.checkpoint_dir)
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
    eos = () if tokenizer.eos_id is None else (tokenizer.eos_id,)
    engine = Engine(build, engine_config, eos_ids=eos)
    return TwinService(settings, tokenizer, engine, limits, created=int(time.time()))
