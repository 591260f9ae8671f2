"""The base class of serve's fused decoder blocks (`serve.generate`'s bf16 ones, `serve.blocks_nf4`'s
NF4 ones): a litgpt `Block` computed with fewer, larger matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gated_activation(gemma: bool, gelu_approximate: str) -> str:
    """The activation of a gated MLP's gate as `serve.kernels.ACTIVATIONS` names it: "silu" (SwiGLU), or
    "gelu"/"gelu_tanh" for Gemma's GeGLU."""
    if gemma:
        return "gelu_tanh" if gelu_approximate == "tanh" else "gelu"
    return "silu"


def apply_activation(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """`gate` through `activation` (one of `gated_activation`'s names), as the litgpt MLP computes it."""
    if activation == "silu":
        return F.silu(gate)
    return F.gelu(gate, approximate="tanh" if activation == "gelu_tanh" else "none")


class FusedBlock(nn.Module):
    """A litgpt `Block` computed with fewer, larger matmuls (`ParallelBlock`, `SequentialBlock`)."""

    gemv: bool
    """One-token steps on a GPU run `serve.kernels`' GEMVs (set when the block is built;
    `select_kernels` switches it)."""
    activation: str
    """A gated MLP's activation (`gated_activation`); the sequential blocks set it."""

    def act(self, gate: torch.Tensor) -> torch.Tensor:
        return apply_activation(gate, self.activation)
