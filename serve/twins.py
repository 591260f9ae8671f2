"""The twins one server answers as: each an adapter (or the base) with its own prompt format, stop tokens
and memory, picked by the request's `model`.

With one twin (TWIN_MAX_TWINS=0) its adapter is merged into the base and it lives in engine slot 0. With
several, every adapter stays unmerged in a twin slot of the engine (`serve.multi_lora`): TWIN_LORA_PATH's
is served as TWIN_MODEL_NAME, TWIN_TWINS' under their own names, and the admin endpoints add and remove
more while the server runs. `read_twin` reads what a twin needs besides its weights; `read_updates` reads
its weights as slot updates. Both run before anything reaches the engine, so a bad adapter is refused
with the file and the fix, and the engine never sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litgpt.config import Config
from litgpt.tokenizer import Tokenizer

from finetune.twin import (
    AdapterSpec,
    TwinError,
    check_base,
    load_adapter,
    read_adapter_spec,
    read_memory,
    serving_prompter,
    stop_token_ids,
)
from prepare.memory import Exchange, Memory, memory_query
from prepare.prompt import Prompter, turns_from_messages
from serve.multi_lora import AdapterUpdates, adapter_updates
from serve.settings import TWIN_NAME

log = logging.getLogger(__name__)


def check_twin_name(name: str) -> None:
    if not TWIN_NAME.fullmatch(name):
        raise TwinError(
            f"twin name {name[:80]!r}: use 1-64 letters, digits and . _ : - (starting with a letter or digit)"
        )


@dataclass(frozen=True)
class Twin:
    """One twin the server answers as."""

    name: str
    """The `model` id clients ask for."""
    slot: int
    """Its engine twin slot: 0 for the base or the one adapter merged into it, 1.. for unmerged ones."""
    path: Path | None
    """Its adapter (None: the base model)."""
    spec: AdapterSpec | None
    prompter: Prompter
    """How a live chat becomes a prompt: the format the adapter was trained with (`finetune.twin`)."""
    stop: list[str]
    """Stop strings applied to every reply (settings' default_stop, else the prompt format's)."""
    stop_ids: tuple[int, ...]
    """Tokens that end its reply: EOS and, for a chat template, its end-of-turn token."""
    memory: Memory | None = None
    """The person's past exchanges (the adapter's memory.jsonl), loaded once; None: memory off."""
    memory_k: int = 0
    """Past exchanges retrieved into each prompt (0: memory off)."""
    created: int = 0

    def recall(self, messages: Sequence[Mapping[str, Any]]) -> list[Exchange]:
        """The past exchanges to show with this live chat, best first ([] with memory off); searched as
        training searched for its records (`prepare.memory.memory_query`). A malformed chat: ValueError."""
        if self.memory is None or self.memory_k <= 0:
            return []
        turns, _ = turns_from_messages(messages)
        return self.memory.retrieve(memory_query(turns[:-1], turns[-1].text), self.memory_k)

    def card(self) -> dict[str, Any]:
        """What the admin endpoints report of it."""
        return {
            "id": self.name,
            "adapter": None if self.path is None else str(self.path),
            "prompt_format": self.prompter.format,
            "lora_rank": None if self.spec is None else self.spec.lora.lora_r,
            "memory_exchanges": 0 if self.memory is None else len(self.memory),
            "memory_k": self.memory_k,
            "created": self.created,
        }


def read_twin(
    name: str,
    slot: int,
    lora_path: Path | None,
    checkpoint_dir: Path,
    config: Config,
    tokenizer: Tokenizer,
    default_stop: list[str] | None,
    memory_k: int | None,
) -> Twin:
    """A twin's prompt format, stops and memory (its adapter's spec checked against the base; the
    tensors are not read). `memory_k`: None for the adapter's own, 0 for off."""
    check_twin_name(name)
    spec = None
    if lora_path is not None:
        spec = read_adapter_spec(lora_path)
        check_base(spec, config, checkpoint_dir)
    prompter = serving_prompter(checkpoint_dir, spec)
    stop = prompter.stop_strings if default_stop is None else list(default_stop)
    stop_ids = stop_token_ids(tokenizer, prompter)
    memory, k = read_twin_memory(name, lora_path, spec, memory_k)
    log.info(
        "twin %r: prompt format %s, replies end at token ids %s or the text %s%s",
        name, prompter.format, stop_ids, stop, f", {k} past exchanges a prompt" if k else "",
    )  # fmt: skip
    return Twin(name, slot, lora_path, spec, prompter, stop, stop_ids, memory, k, int(time.time()))


def read_twin_memory(
    name: str, lora_path: Path | None, spec: AdapterSpec | None, memory_k: int | None
) -> tuple[Memory | None, int]:
    """(memory, k): the adapter's memory.jsonl and how many exchanges each prompt shows — the adapter's
    memory_k unless `memory_k` (TWIN_MEMORY_K) says otherwise (0: off, nothing loaded)."""
    trained_k = spec.memory_k if spec is not None else 0
    k = trained_k if memory_k is None else memory_k
    if k <= 0:
        if trained_k:
            log.info(
                "twin %r: memory off (TWIN_MEMORY_K=0); it was trained with %d past exchanges",
                name,
                trained_k,
            )
        return None, 0
    if lora_path is None:
        raise TwinError(
            f"TWIN_MEMORY_K={k} needs an adapter trained with memory (python -m finetune --memory-k K, "
            "TWIN_LORA_PATH): the base model has no memory of your exchanges"
        )
    memory = read_memory(lora_path)
    log.info(
        "twin %r memory: %d past exchanges, %d retrieved into each prompt (trained with %d)",
        name, len(memory), k, trained_k,
    )  # fmt: skip
    return memory, k


def read_updates(config: Config, lora_path: Path) -> AdapterUpdates:
    """An adapter's weights as twin-slot updates (`serve.multi_lora`), on the CPU; refuses one that does
    not fit the base (`read_twin` has checked the base's name already)."""
    return adapter_updates(config, load_adapter(lora_path))
