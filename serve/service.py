"""What the routes work with, built once at start-up: the tokenizer, the twins (each with its prompt
format, stop tokens and memory: `serve.twins`), the engine and the effective limits; and the admin side
that adds and removes twins while the server runs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from litgpt.config import Config
from litgpt.tokenizer import Tokenizer

from common.device import resolve_device, resolve_dtype
from finetune.twin import TwinError, encode_prompt, load_base_config
from prepare.memory import Exchange, Memory
from prepare.prompt import Prompter
from serve.engine import Engine, EngineConfig
from serve.model import check_quantize, load_model, load_tokenizer
from serve.multi_lora import LORA_LAYERS, AdapterUpdates, adapter_layers, check_layers
from serve.runner import Runner
from serve.settings import Settings, compile_cache_dir
from serve.twins import Twin, check_twin_name, read_twin, read_updates

log = logging.getLogger(__name__)

DEFAULT_MAX_LORA_RANK = 16
"""TWIN_MAX_LORA_RANK's default (finetune's default rank), raised to the largest rank given at start."""


class UnknownTwin(LookupError):
    """No twin of that name; the message lists the ones there are."""


class TwinConflict(Exception):
    """A twin cannot be added now: its name is taken, or every twin slot is in use."""


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
    twins: dict[str, Twin] = field(default_factory=dict)
    """The twins by name (the `model` id); TWIN_MODEL_NAME's is the default."""
    config: Config | None = None
    """The base's config (adapters added later are read against it)."""
    twin_slots: int = 0
    """Unmerged twins the engine holds (0: one twin, merged)."""
    _admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # ---- the twins -------------------------------------------------------------------------------

    def twin(self, name: str | None = None) -> Twin:
        """The twin called `name` (None: the default one). Raises UnknownTwin, listing the names."""
        name = self.settings.model_name if name is None else name
        twin = self.twins.get(name)
        if twin is None:
            served = ", ".join(repr(n) for n in sorted(self.twins)) or "none"
            raise UnknownTwin(
                f"model {name[:100]!r} does not exist: this server serves {served} (see GET /v1/models)"
            )
        return twin

    def serves(self, twin: Twin) -> bool:
        """Whether `twin` is still served as it was (not removed or replaced since it was looked up)."""
        return self.twins.get(twin.name) is twin

    @property
    def default_twin(self) -> Twin | None:
        return self.twins.get(self.settings.model_name)

    @property
    def prompter(self) -> Prompter:
        """The default twin's prompt format."""
        return self.twin().prompter

    @property
    def stop(self) -> list[str]:
        return self.twin().stop

    @property
    def memory(self) -> Memory | None:
        twin = self.default_twin
        return None if twin is None else twin.memory

    @property
    def memory_k(self) -> int:
        twin = self.default_twin
        return 0 if twin is None else twin.memory_k

    def encode(self, prompt: str, twin: Twin | None = None) -> list[int]:
        """A rendered prompt's token ids, exactly as training encoded its prompts."""
        return encode_prompt(self.tokenizer, (twin or self.twin()).prompter, prompt)

    def recall(self, messages: Sequence[Mapping[str, Any]], twin: Twin | None = None) -> list[Exchange]:
        """The default (or given) twin's past exchanges for this live chat (`Twin.recall`)."""
        return (twin or self.twin()).recall(messages)

    # ---- admin -----------------------------------------------------------------------------------

    async def add_twin(self, name: str, lora_path: Path) -> Twin:
        """Load an adapter as a new twin while the server runs: read and checked off the event loop,
        written into a free twin slot by the engine's worker between two decode steps (requests of the
        other twins keep streaming). Raises TwinError (a bad adapter), TwinConflict, EngineNotReady."""
        check_twin_name(name)
        if not self.twin_slots:
            raise TwinConflict(
                "this server holds one twin, merged into the base: restart it with TWIN_MAX_TWINS=N "
                "(and TWIN_ADMIN_KEY) to add twins while it runs"
            )
        assert self.config is not None
        config, settings = self.config, self.settings
        async with self._admin_lock:
            if name in self.twins:
                raise TwinConflict(f"a twin called {name!r} exists: remove it first, or pick another name")
            taken = {twin.slot for twin in self.twins.values()}
            candidates = [k for k in range(1, self.twin_slots + 1) if k not in taken]
            if not candidates:
                raise TwinConflict(
                    f"all {self.twin_slots} twin slots are taken (TWIN_MAX_TWINS): remove a twin first"
                )
            read = partial(
                read_twin, name, 0, lora_path, settings.checkpoint_dir, config, self.tokenizer,
                settings.default_stop, settings.memory_k,
            )  # fmt: skip
            meta = await asyncio.to_thread(read)
            updates = await asyncio.to_thread(read_updates, config, lora_path)
            assert meta.spec is not None
            rank = meta.spec.lora.lora_r

            def load(runner: Runner) -> int:  # in the worker, between two decode steps
                free = [k for k in candidates if not self.engine.twin_in_use(k)]
                if not free:
                    raise TwinConflict(
                        "the free twin slots still finish requests of removed twins: retry shortly"
                    )
                assert runner.twins is not None and meta.spec is not None
                runner.twins.check(updates, rank, str(lora_path), adapter_layers(meta.spec))
                runner.write_twin(free[0], updates)
                return free[0]

            slot = await asyncio.wrap_future(self.engine.run_in_worker(load))
            twin = dataclasses.replace(meta, slot=slot, created=int(time.time()))
            self.twins[name] = twin
        log.info("twin %r added from %s (twin slot %d)", name, lora_path, slot)
        return twin

    async def remove_twin(self, name: str) -> Twin:
        """Stop serving a twin: new requests for it get 404 at once; requests already generating finish,
        and its slot is reused only after they have. Raises UnknownTwin."""
        async with self._admin_lock:
            twin = self.twin(name)
            del self.twins[name]
        log.info("twin %r removed (twin slot %d)", name, twin.slot)
        return twin


def max_lora_rank(settings: Settings, ranks: Sequence[int]) -> int:
    """TWIN_MAX_LORA_RANK, or the larger of its default and the largest rank given at start."""
    if settings.max_lora_rank is not None:
        return settings.max_lora_rank
    return max([DEFAULT_MAX_LORA_RANK, *ranks])


def lora_layers(settings: Settings, given: Sequence[frozenset[str]]) -> tuple[str, ...]:
    """TWIN_LORA_LAYERS, or the LoRA layers of the twins given at start, or all of them with none."""
    chosen: set[str] = set(LORA_LAYERS)
    if settings.lora_layers is not None:
        chosen = set(settings.lora_layers)
    elif given:
        chosen = set().union(*given)
    return tuple(name for name in LORA_LAYERS if name in chosen)


def build_service(settings: Settings) -> TwinService:
    """Tokenizer, twins and limits now (fast, fails early); the engine loads the model when started."""
    checkpoint_dir = settings.checkpoint_dir
    config = load_base_config(checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint_dir)
    twin_slots = settings.twin_slots()
    read = partial(read_twin, checkpoint_dir=checkpoint_dir, config=config, tokenizer=tokenizer)
    # one twin: its adapter merged, slot 0; several: every adapter unmerged in a slot of its own
    first = 1 if twin_slots and settings.lora_path is not None else 0
    primary = read(
        settings.model_name, first, settings.lora_path, default_stop=settings.default_stop,
        memory_k=settings.memory_k,
    )  # fmt: skip
    twins = {primary.name: primary}
    initial: dict[int, AdapterUpdates] = {}
    if twin_slots:
        given = ([(primary.name, settings.lora_path)] if first else []) + list(settings.twins.items())
        for slot, (name, path) in enumerate(given, start=1):
            assert path is not None
            if name != primary.name:
                twins[name] = read(
                    name, slot, path, default_stop=settings.default_stop, memory_k=settings.memory_k
                )
            initial[slot] = read_updates(config, path)
        ranks = [twin.spec.lora.lora_r for twin in twins.values() if twin.spec is not None]
        rank = max_lora_rank(settings, ranks)
        layers = lora_layers(settings, [adapter_layers(t.spec) for t in twins.values() if t.spec is not None])
        for twin in twins.values():
            if twin.spec is not None and twin.spec.lora.lora_r > rank:
                raise TwinError(
                    f"{twin.path}: its LoRA rank {twin.spec.lora.lora_r} exceeds TWIN_MAX_LORA_RANK={rank}"
                )
            if twin.spec is not None:
                check_layers(str(twin.path), adapter_layers(twin.spec), layers, at_start=True)
        log.info(
            "serving %d twin(s) on one base, unmerged (room for %d; LoRA layers %s): %s",
            len(twins), twin_slots, ", ".join(layers) or "none", list(twins),
        )  # fmt: skip
    else:
        rank, layers = DEFAULT_MAX_LORA_RANK, LORA_LAYERS
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
        twin_slots=twin_slots,
        max_lora_rank=rank,
        lora_layers=layers,
    )
    if settings.quantize != "none":
        check_quantize(settings.quantize, device)
    merged_adapter = None if twin_slots else settings.lora_path
    build = partial(load_model, checkpoint_dir, merged_adapter, device, dtype, quantize=settings.quantize)
    engine = Engine(build, engine_config, eos_ids=primary.stop_ids, twins=initial)
    return TwinService(settings, tokenizer, engine, limits, int(time.time()), twins, config, twin_slots)
