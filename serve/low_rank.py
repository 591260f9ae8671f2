"""A LoRA adapter's update held apart from the weight it updates: `x A^T B^T`, the scaling folded into B.

Read from litgpt's LoRA layers (`LowRank.of`, litgpt's q/k/v layout made explicit) and combined the way
serve's fused blocks combine their matrices: rows stacked (`[qkv; fc]`, `[gate; up]`) or columns side by
side (`[proj | mlp.proj]`). The NF4 blocks (`serve.blocks_nf4`) add one beside each 4-bit GEMV; several
twins on one base (`serve.multi_lora`) stack one per twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from litgpt import lora
from torch import nn


class LowRank(nn.Module):
    """A LoRA adapter's update as `F.linear(F.linear(x, A), B)`: A (R, K), B (N, R), scaling in B."""

    A: torch.Tensor
    B: torch.Tensor

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A.detach().contiguous())
        self.register_buffer("B", B.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B)  # (..., R) then (..., N)

    @classmethod
    def of(cls, layer: nn.Module) -> LowRank | None:
        """The update of a litgpt LoRA layer (`LoRALinear`, or `LoRAQKVLinear` with its q/k/v parts), or
        None where it has none (r = 0, no part enabled, merged)."""
        if not isinstance(layer, lora.LoRALinear) or layer.r == 0 or layer.merged:
            return None
        A, B = layer.lora_A.detach(), layer.lora_B.detach() * layer.scaling
        if not isinstance(layer, lora.LoRAQKVLinear):
            return cls(A, B)
        if not any(layer.enable_lora):
            return None
        # part j of the enabled q/k/v reads rows [j r, (j + 1) r) of A (litgpt's grouped conv1d) and
        # writes its output features (`lora_ind`, litgpt's zero_pad): B block-diagonal, zero elsewhere
        r, index = layer.r, layer.lora_ind
        full = B.new_zeros(layer.linear.out_features, A.size(0))
        start = 0
        for j, size in enumerate(layer.qkv_shapes):
            full[index[start : start + size], j * r : (j + 1) * r] = B[start : start + size]
            start += size
        return cls(A, full)

    @classmethod
    def stack_rows(cls, a: LowRank | None, n_a: int, b: LowRank | None, n_b: int) -> LowRank | None:
        """The update of `cat(a(x), b(x))` (outputs n_a then n_b), None where neither has one."""
        if a is None and b is None:
            return None
        A_parts = [p.A for p in (a, b) if p is not None]
        ref = A_parts[0]
        r_a, r_b = (0 if p is None else p.A.size(0) for p in (a, b))
        B = ref.new_zeros(n_a + n_b, r_a + r_b)
        if a is not None:
            B[:n_a, :r_a] = a.B
        if b is not None:
            B[n_a:, r_a:] = b.B
        return cls(torch.cat(A_parts), B)

    @classmethod
    def stack_cols(cls, a: LowRank | None, k_a: int, b: LowRank | None, k_b: int) -> LowRank | None:
        """The update of `a(x1) + b(x2)` computed on `cat(x1, x2)` (inputs k_a then k_b wide), None where
        neither has one: A block-diagonal over the two inputs, B side by side."""
        if a is None and b is None:
            return None
        ref = a if a is not None else b
        assert ref is not None
        r_a, r_b = (0 if p is None else p.A.size(0) for p in (a, b))
        A = ref.A.new_zeros(r_a + r_b, k_a + k_b)
        B_parts = []
        if a is not None:
            A[:r_a, :k_a] = a.A
            B_parts.append(a.B)
        if b is not None:
            A[r_a:, k_a:] = b.A
            B_parts.append(b.B)
        return cls(A, torch.cat(B_parts, dim=1))

    @property
    def rank(self) -> int:
        return self.A.size(0)
