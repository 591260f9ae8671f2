"""Several twins on one base (`TWIN_MAX_TWINS`): LoRA adapters held unmerged, stacked, picked per batch row.

With one twin the server merges its adapter into the base (`serve.model`); with several, the base stays
as it is and every LoRA target of the fused blocks (`serve.generate`: Falcon's `[qkv; fc]` and
`[proj | mlp.proj]`, the Llama kind's qkv, proj, `[gate; up]` and down) gets a `LoraBank`: the updates
of every twin slot stacked, A (S, R, K) and B (S, N, R) with the scaling folded into B, slot 0 all zeros
(the base itself). A decode step computes each target as `W x + B[s] A[s] x` with s the slot of that batch
row's twin — one gathered low-rank product per target for the whole batch (`serve.kernels_lora`, in the
manner of Punica's BGMV and S-LoRA), so requests for different twins share every decode step and every
read of the base's weights. Each row's slot comes from `AdapterSlots.rows`, one int64 a batch row, which
the runner fills before every prefill chunk and keeps equal to the slots' twins for decode steps (the CUDA
graphs read it in place).

A bank's rank R is `max_rank` for each litgpt layer it covers (twice that for a stacked pair): an
adapter of a smaller rank is padded with zeros, a larger one is refused when it loads, naming the setting.
An adapter becomes slot updates on the CPU (`adapter_updates`: litgpt's LoRA layers read without the
base's weights) and is written into its slot between two decode steps, while no request uses that slot.

Imports only torch, litgpt, the twin contract and serve's model modules (the GPU benchmark uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from litgpt import lora
from litgpt.config import Config
from litgpt.model import GPT
from torch import nn

from finetune.twin import Adapter, TwinError, lora_config
from serve.fused import FusedBlock
from serve.generate import ParallelBlock, SequentialBlock, fusion_for
from serve.kernels_lora import lora_delta
from serve.low_rank import LowRank
from serve.model import load_lora_tensors


class LoraBank(nn.Module):
    """The stacked LoRA updates of one linear target for S twin slots: `forward(x)` is row b's update
    `B[s] A[s] x[b]`, s = `rows[b]`."""

    A: torch.Tensor
    B: torch.Tensor
    rows: torch.Tensor

    def __init__(
        self,
        rows: torch.Tensor,
        slots: int,
        rank: int,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        dev = rows.device
        self.register_buffer("A", torch.zeros(slots, rank, in_features, device=dev, dtype=dtype))
        self.register_buffer("B", torch.zeros(slots, out_features, rank, device=dev, dtype=dtype))
        self.register_buffer("rows", rows, persistent=False)  # (max batch,) the one shared by every bank

    @property
    def rank(self) -> int:
        return self.A.size(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, T, K) → (b, T, N); batch row i is slot rows[i]'s twin
        b, T, K = x.shape
        index = self.rows[:b]  # (b,)
        if T > 1:
            index = index.repeat_interleave(T)  # (b * T,) one per token
        return lora_delta(x.reshape(b * T, K), self.A, self.B, index).view(b, T, -1)

    def write(self, slot: int, update: LowRank | None) -> None:
        """Put `update` (None: no update, the base) into `slot`, padding its rank with zeros."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        if update is not None:
            r = update.rank
            self.A[slot, :r].copy_(update.A)
            self.B[slot, :, :r].copy_(update.B)


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

RANK_PARTS = {"attn.qkv": 3}
"""litgpt's LoRA on the fused qkv matrix has a rank-r pair for each of q, k and v it adapts: up to 3r."""

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
    rows: torch.Tensor
    """(max batch,) int64 on the model's device: batch row i uses slot rows[i]."""
    banks: dict[str, LoraBank]

    @classmethod
    def attach(cls, model: GPT, slots: int, max_rank: int, max_batch: int) -> AdapterSlots:
        """Give every fused block of `model` its banks (all slots zero), in place; refuses a model with
        blocks the engine does not fuse, naming why."""
        check_multi_twin(model)
        weight = model.transformer.wte.weight
        rows = torch.zeros(max_batch, dtype=torch.int64, device=weight.device)
        banks: dict[str, LoraBank] = {}
        for i, block in enumerate(model.transformer.h):
            for key, (_, paths) in TARGETS[type(block)].items():
                in_features, out_features = target_shape(block, key)
                rank = max_rank * sum(RANK_PARTS.get(path, 1) for path in paths)
                bank = LoraBank(rows, slots, rank, in_features, out_features, weight.dtype)
                setattr(block, f"lora_{key}", bank)
                banks[f"transformer.h.{i}.{key}"] = bank
        return cls(model, slots, max_rank, rows, banks)

    def check(self, updates: AdapterUpdates, rank: int, name: str) -> None:
        """Refuse updates that do not fit the banks: a LoRA rank over `max_rank`, or another base."""
        if rank > self.max_rank:
            raise TwinError(
                f"{name}: its LoRA rank {rank} exceeds this server's TWIN_MAX_LORA_RANK={self.max_rank}: "
                "restart the server with TWIN_MAX_LORA_RANK set to at least that rank"
            )
        problems = []
        for key, update in updates.items():
            bank = self.banks.get(key)
            if bank is None:
                problems.append(f"{key} is not a target of this model")
            elif update is not None and (
                update.rank > bank.rank
                or update.A.size(1) != bank.A.size(2)
                or update.B.size(0) != bank.B.size(1)
            ):
                problems.append(f"{key}: shapes {tuple(update.A.shape)}/{tuple(update.B.shape)}")
        if problems:
            raise TwinError(f"{name} does not fit this base: {'; '.join(problems[:3])}")

    def write(self, slot: int, updates: AdapterUpdates) -> None:
        """Put a twin's updates into `slot` (1 .. slots - 1); targets it lacks get zeros."""
        if not 1 <= slot < self.slots:
            raise ValueError(f"twin slot {slot} outside 1 .. {self.slots - 1}")
        for key, bank in self.banks.items():
            bank.write(slot, updates.get(key))


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
