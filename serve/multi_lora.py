"""Several twins on one base (`TWIN_MAX_TWINS`): LoRA adapters held unmerged, stacked, picked per batch row.

With one twin the server merges its adapter into the base (`serve.model`); with several, the base stays
as it is and each LoRA target of the fused blocks (`serve.generate`: Falcon's `[qkv; fc]` and
`[proj | mlp.proj]`, the Llama kind's qkv, proj, `[gate; up]` and down) that the served twins adapt gets
a `serve.kernels_lora.LoraBank`: the updates of every twin slot stacked, A (S, R, K) and B (S, n, R) with
the scaling folded into B, slot 0 all zeros (the base itself). A decode step computes each target as
`W x + B[s] A[s] x` with s the slot of that batch row's twin — one gathered low-rank product per target
for the whole batch (in the manner of Punica's BGMV and S-LoRA), so requests for different twins share
every decode step and every read of the base's weights; at batch 1 the expand runs inside the target's
GEMV (`serve.kernels.LoraTerm`), which leaves one small kernel a target. Each row's slot comes from
`AdapterSlots.rows`, one int64 a batch row, which the runner fills before every prefill chunk and keeps
equal to the slots' twins for decode steps (the CUDA graphs read it in place).

Which targets get banks follows the LoRA switches the server holds (`layers`: TWIN_LORA_LAYERS, by default
those of the twins it starts with): finetune's defaults adapt q and v only, so Falcon's `[proj |
mlp.proj]` gets no bank and `[qkv; fc]` one over its qkv rows — a decode step does no work for layers no
twin adapts. A twin added later that adapts more is refused, naming the setting. A bank's rank R is
`max_rank` for each rank-r pair it covers (q, k and v count one each): an adapter of a smaller rank is
padded with zeros, a larger one is refused when it loads, naming the setting. An adapter becomes slot
updates on the CPU (`adapter_updates`: litgpt's LoRA layers read without the base's weights) and is
written into its slot between two decode steps, while no request uses that slot.

Imports only torch, litgpt, the twin contract and serve's model modules (the GPU benchmark uses it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from litgpt import lora
from litgpt.config import Config
from litgpt.model import GPT
from torch import nn

from finetune.twin import Adapter, AdapterSpec, TwinError, lora_config
from serve.engine_config import LORA_LAYERS
from serve.fused import FusedBlock
from serve.generate import ParallelBlock, SequentialBlock, fusion_for
from serve.kernels_lora import LoraBank
from serve.low_rank import LowRank
from serve.model import load_lora_tensors

# The LoRA targets of each fused block kind: its attribute `lora_<key>` → the litgpt layers it covers
# (module paths inside a litgpt block), stacked as rows (one input, outputs one after the other) or as
# columns (inputs side by side, outputs summed)
TARGETS: dict[type[FusedBlock], dict[str, tuple[str, tuple[str, ...]]]] = {
    ParallelBlock: {"w_in": ("rows", ("attn.qkv", "mlp.fc")), "w_out": ("cols", ("attn.proj", "mlp.proj"))},
    SequentialBlock: {
        "qkv": ("rows", ("attn.qkv",)),
        "proj": ("rows", ("attn.proj",)),
        "w_in": ("rows", ("mlp.fc_1", "mlp.fc_2")),
        "w_down": ("rows", ("mlp.proj",)),
    },
}

PATH_LAYERS = {"attn.qkv": ("query", "key", "value"), "attn.proj": ("projection",)}
"""The switches behind each litgpt layer (every `mlp.*` layer: "mlp"). litgpt's LoRA on the fused qkv
matrix has a rank-r pair for each of q, k and v it adapts."""


def path_parts(path: str, layers: Collection[str]) -> int:
    """How many rank-r pairs the litgpt layer at `path` has under the LoRA switches `layers`."""
    return sum(name in layers for name in PATH_LAYERS.get(path, ("mlp",)))


def adapter_layers(adapter: Adapter | AdapterSpec) -> frozenset[str]:
    """The LoRA switches an adapter was trained with, as `LORA_LAYERS` names."""
    spec = adapter.spec if isinstance(adapter, Adapter) else adapter
    return frozenset(name for name in LORA_LAYERS if getattr(spec.lora, f"lora_{name}"))


AdapterUpdates = dict[str, LowRank | None]
"""A twin's updates by target, "transformer.h.{i}.{key}" (`TARGETS`), on the CPU."""


@dataclass
class AdapterSlots:
    """The banks of a model served for several twins, and the per-row slot index they read."""

    model: GPT
    slots: int
    """Twin slots, slot 0 included (the base: all zeros)."""
    max_rank: int
    """The largest adapter rank a slot holds, per litgpt layer."""
    layers: frozenset[str]
    """The LoRA switches the banks hold (`LORA_LAYERS`): targets of none of them get no bank."""
    rows: torch.Tensor
    """(max batch,) int64 on the model's device: batch row i uses slot rows[i]."""
    banks: dict[str, LoraBank]

    @classmethod
    def attach(
        cls, model: GPT, slots: int, max_rank: int, max_batch: int, layers: Collection[str] = LORA_LAYERS
    ) -> AdapterSlots:
        """Give every fused block of `model` its banks (all slots zero) for the LoRA switches `layers`, in
        place: a target none of them adapts gets no bank (no work in the decode step), a stacked target
        a bank over its rows up to the last adapted part. Refuses a model with blocks the engine does not
        fuse, naming why."""
        check_multi_twin(model)
        held = frozenset(layers)
        if unknown := held - set(LORA_LAYERS):
            raise ValueError(f"LoRA layers {sorted(unknown)}: choose from {', '.join(LORA_LAYERS)}")
        weight = model.transformer.wte.weight
        rows = torch.zeros(max_batch, dtype=torch.int64, device=weight.device)
        banks: dict[str, LoraBank] = {}
        for i, block in enumerate(model.transformer.h):
            for key, (how, paths) in TARGETS[type(block)].items():
                parts = [path_parts(path, held) for path in paths]
                if not any(parts):
                    continue
                in_features, out_features = target_shape(block, key)
                covered = out_features
                if how == "rows":  # outputs one after the other: up to the end of the last adapted one
                    last = max(j for j, p in enumerate(parts) if p)
                    covered = sum(row_widths(block, key)[: last + 1])
                rank = max_rank * sum(parts)
                bank = LoraBank(rows, slots, rank, in_features, out_features, covered, weight.dtype)
                setattr(block, f"lora_{key}", bank)
                banks[f"transformer.h.{i}.{key}"] = bank
        return cls(model, slots, max_rank, held, rows, banks)

    def check(self, updates: AdapterUpdates, rank: int, name: str, layers: Collection[str]) -> None:
        """Refuse an adapter that does not fit the banks: a LoRA rank over `max_rank`, LoRA layers
        (`layers`, its switches) the banks leave out, or another base."""
        if rank > self.max_rank:
            raise TwinError(
                f"{name}: its LoRA rank {rank} exceeds this server's TWIN_MAX_LORA_RANK={self.max_rank}: "
                "restart the server with TWIN_MAX_LORA_RANK set to at least that rank"
            )
        check_layers(name, layers, self.layers)
        problems = []
        for key, update in updates.items():
            bank = self.banks.get(key)
            if update is None:
                continue
            if bank is None or not bank.fits(update):
                problems.append(f"{key}: shapes {tuple(update.A.shape)}/{tuple(update.B.shape)}")
        if problems:
            raise TwinError(f"{name} does not fit this base: {'; '.join(problems[:3])}")

    def write(self, slot: int, updates: AdapterUpdates) -> None:
        """Put a twin's updates into `slot` (1 .. slots - 1); targets it lacks get zeros. Updates that do
        not fit the banks (`check` says why, for people) are refused before anything is written."""
        if not 1 <= slot < self.slots:
            raise ValueError(f"twin slot {slot} outside 1 .. {self.slots - 1}")
        unfit = [
            key
            for key, update in updates.items()
            if update is not None and (key not in self.banks or not self.banks[key].fits(update))
        ]
        if unfit:
            raise TwinError(f"updates that do not fit this server's twin banks: {', '.join(unfit[:3])}")
        for key, bank in self.banks.items():
            bank.write(slot, updates.get(key))


def check_layers(name: str, layers: Collection[str], held: Collection[str], at_start: bool = False) -> None:
    """Refuse an adapter of LoRA switches `layers` on banks that hold only `held` (`at_start`: one of
    the twins the server starts with, where TWIN_LORA_LAYERS alone decides)."""
    if missing := sorted(set(layers) - set(held)):
        said = ", ".join(missing)
        fix = (
            f"list {said} in TWIN_LORA_LAYERS, or leave it unset (the layers of the twins given at start)"
            if at_start
            else f"restart it with TWIN_LORA_LAYERS listing {said}, or with this twin among TWIN_TWINS"
        )
        raise TwinError(
            f"{name} adapts the LoRA layers {said}, which this server's twins leave out (it holds "
            f"{', '.join(sorted(held)) or 'none'}: TWIN_LORA_LAYERS, by default the layers of the twins "
            f"it starts with): {fix}"
        )


def row_widths(block: nn.Module, key: str) -> list[int]:
    """The output widths of the litgpt layers a rows-stacked target stacks, in order."""
    _, out_features = target_shape(block, key)
    if isinstance(block, ParallelBlock) and key == "w_in":  # [qkv; fc]
        return [block.qkv_size, out_features - block.qkv_size]
    if isinstance(block, SequentialBlock) and key == "w_in":  # [gate; up]
        return [block.intermediate_size, block.intermediate_size]
    return [out_features]


def target_shape(block: nn.Module, key: str) -> tuple[int, int]:
    """(in_features, out_features) of a fused block's LoRA target."""
    if isinstance(block, ParallelBlock):
        if key == "w_in":
            return block.w_in.in_features, block.w_in.out_features
        return block.w_out.in_features, block.w_out.out_features
    assert isinstance(block, SequentialBlock)
    linear = {"qkv": block.qkv, "proj": block.proj, "w_in": block.w_in, "w_down": block.w_down}[key]
    return linear.in_features, linear.out_features


def check_multi_twin(model: GPT) -> None:
    """Refuse a model whose blocks are not all fused (several twins need the fused blocks' banks)."""
    for block in model.transformer.h:
        if type(block) not in TARGETS:
            _, why = fusion_for(block)
            raise TwinError(
                f"{model.config.name}: serving several twins on one base needs blocks the engine fuses "
                f"(Falcon's, Llama's kind); this one has {why or type(block).__name__}: serve one twin "
                "(TWIN_MAX_TWINS=0)"
            )


def fused_kind(config: Config) -> type[FusedBlock]:
    """The fused block kind `serve.generate.fuse_blocks` gives this config's blocks."""
    return ParallelBlock if config.parallel_residual else SequentialBlock


def adapter_updates(config: Config, adapter: Adapter) -> AdapterUpdates:
    """A trained adapter's updates by bank (`AdapterSlots.banks`' keys), on the CPU, read through litgpt's
    own LoRA layers (built without the base's weights). Refuses an adapter that does not fit `config`."""
    name = str(adapter.path)
    if adapter.spec.lora.lora_head:
        raise TwinError(
            f"{name} adapts the output head (lora_head), which several twins on one base do not share: "
            "serve it alone (TWIN_MAX_TWINS=0)"
        )
    with torch.device("meta"):
        model = lora.GPT(lora_config(config, adapter.spec))
    for module in model.modules():  # the base's weights are never read: an empty stand-in off meta
        if isinstance(module, lora.LoRALinear):
            module.linear.weight = nn.Parameter(torch.empty(0), requires_grad=False)
    load_lora_tensors(model, adapter, assign=True)
    kind = fused_kind(config)
    updates: AdapterUpdates = {}
    for i, block in enumerate(model.transformer.h):
        for key, (how, paths) in TARGETS[kind].items():
            layers = [block.get_submodule(path) for path in paths]
            parts = [(LowRank.of(layer), layer) for layer in layers]
            update, _ = parts[0]
            for part, layer in parts[1:]:
                first = layers[0]
                if how == "rows":
                    update = LowRank.stack_rows(update, _out(first), part, _out(layer))
                else:
                    update = LowRank.stack_cols(update, _in(first), part, _in(layer))
            if update is not None:
                update = LowRank(update.A.float(), update.B.float())
            updates[f"transformer.h.{i}.{key}"] = update
    return updates


def _linear(layer: nn.Module) -> nn.Linear:
    linear = layer.linear if isinstance(layer, lora.LoRALinear) else layer
    assert isinstance(linear, nn.Linear)
    return linear


def _out(layer: nn.Module) -> int:
    return _linear(layer).out_features


def _in(layer: nn.Module) -> int:
    return _linear(layer).in_features
