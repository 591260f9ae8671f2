"""The base class of serve's fused decoder blocks (`serve.generate`'s bf16 ones, `serve.blocks_nf4`'s
NF4 ones): a litgpt `Block` computed with fewer, larger matmuls."""

from __future__ import annotations

from torch import nn


class FusedBlock(nn.Module):
    """A litgpt `Block` computed with fewer, larger matmuls (`ParallelBlock`, `SequentialBlock`)."""

    gemv: bool
    """One-token steps on a GPU run `serve.kernels`' GEMVs (set when the block is built;
    `select_kernels` switches it)."""
