"""Fused blocks over an NF4 base with the LoRA adapter unmerged (`python -m serve --quantize nf4|nf4-dq`).

The same two block kinds as `serve.generate` — Falcon's parallel block (`[qkv; fc]`, then
`[proj | mlp.proj]` on `[heads, gelu(fc)]`) and the Llama kind's sequential one (qkv; proj; `[gate; up]`;
down) — with the weights in `serve.kernels_nf4`'s packed 4-bit layout and decode steps of up to 16
tokens on `serve.kernels_nf4`'s GEMVs, which dequantize in registers. Each LoRA target keeps its adapter
as a low-rank pair (`LowRank`: `x A^T B^T`, the scaling folded into B) computed beside the GEMV with two
small matmuls and handed to it as an addend before its activation and residual, so the folds stay exact.
Prefills (longer inputs) dequantize each weight and use `F.linear`.

`fusion_for` says whether a block of litgpt's LoRA GPT over `common.nf4`'s NF4 layers can be fused;
`serve.generate.fuse_blocks` asks it for every block holding an NF4 weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from litgpt import lora
from litgpt.model import CausalSelfAttention, GemmaMLP, GptNeoxMLP, LLaMAMLP
from torch import nn

from common.nf4 import NF4Linear
from serve import kernels_nf4
from serve.fused import FusedBlock, gated_activation
from serve.kernels_nf4 import PackedNF4, nf4_cat_gemv, nf4_gemv, nf4_glu_gemv, pack_nf4, use_nf4_gemv
from serve.low_rank import LowRank


class PackedLinear(nn.Module):
    """A linear layer on an NF4 base: `PackedNF4` weight, bias, and the LoRA update unmerged (or None)."""

    def __init__(self, weight: PackedNF4, bias: torch.Tensor | None, update: LowRank | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.update = update
        self.out_features, self.in_features = weight.shape

    @classmethod
    def of(cls, layer: nn.Module, dtype: torch.dtype) -> PackedLinear:
        """`common.nf4`'s NF4Linear, or litgpt's LoRA layer around one, packed (see `packable`)."""
        base = layer.linear if isinstance(layer, lora.LoRALinear) else layer
        assert isinstance(base, NF4Linear), "check packable() first"
        return cls(pack_nf4(base.weight, dtype), base.bias, LowRank.of(layer))

    @classmethod
    def stack_rows(cls, a: PackedLinear, b: PackedLinear) -> PackedLinear:
        """One layer computing `cat(a(x), b(x))`."""
        bias = None
        if a.bias is not None or b.bias is not None:
            parts = [
                lin.bias if lin.bias is not None else a.weight.scales.new_zeros(lin.out_features)
                for lin in (a, b)
            ]
            bias = torch.cat(parts)
        update = LowRank.stack_rows(a.update, a.out_features, b.update, b.out_features)
        return cls(kernels_nf4.stack_rows(a.weight, b.weight), bias, update)

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The LoRA update for `x`, or None."""
        return None if self.update is None else self.update(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight.dequantize(), self.bias)
        return out if self.update is None else out + self.update(x)


def packable(layer: nn.Module | None) -> bool:
    """Whether `layer` is an NF4Linear of an even width, or litgpt's LoRA layer around one."""
    base = layer.linear if isinstance(layer, lora.LoRALinear) else layer
    return isinstance(base, NF4Linear) and base.in_features % 2 == 0


def holds_nf4(block: nn.Module) -> bool:
    """Whether any layer of `block` is an NF4Linear (a quantized base)."""
    return any(isinstance(m, NF4Linear) for m in block.modules())


def _dtype(block: Any) -> torch.dtype:
    norm_weight = getattr(block.norm_1, "weight", None)
    return norm_weight.dtype if isinstance(norm_weight, torch.Tensor) else torch.get_default_dtype()


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class ParallelNF4Block(FusedBlock):
    """Falcon's parallel block (`serve.generate.ParallelBlock`) on an NF4 base: `x + w_out([attn(h[:qkv]),
    gelu(h[qkv:])]) (+ LoRA updates)`, `h = w_in(norm_1(x))`, `w_in = [qkv; fc]`, `w_out = [proj |
    mlp.proj]` packed; decode steps are two NF4 GEMVs (GELU, concatenation and residual folded in)."""

    def __init__(self, block: Any, gemv: bool = True) -> None:
        super().__init__()
        attn: Any = block.attn
        mlp: Any = block.mlp
        self.config = block.config
        self.norm_1 = block.norm_1
        self.gemv = gemv and kernels_nf4.available()
        dtype = _dtype(block)
        qkv, fc = PackedLinear.of(attn.qkv, dtype), PackedLinear.of(mlp.fc, dtype)
        proj, mlp_proj = PackedLinear.of(attn.proj, dtype), PackedLinear.of(mlp.proj, dtype)
        self.qkv_size = qkv.out_features
        self.w_in = PackedLinear.stack_rows(qkv, fc)
        bias = _add(proj.bias, mlp_proj.bias)
        self.w_out = PackedLinear(kernels_nf4.stack_cols(proj.weight, mlp_proj.weight), bias, None)
        self.update_proj, self.update_mlp_proj = proj.update, mlp_proj.update  # on heads, on gelu(fc)
        attn.qkv, attn.proj = nn.Identity(), nn.Identity()
        self.attn = attn

    def _out_delta(self, heads: torch.Tensor, act: torch.Tensor) -> torch.Tensor | None:
        return _add(
            None if self.update_proj is None else self.update_proj(heads),
            None if self.update_mlp_proj is None else self.update_mlp_proj(act),
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        approximate = self.config.gelu_approximate
        step = self.gemv and use_nf4_gemv(x)  # a decode step: NF4 GEMVs (static under torch.compile)
        n = self.norm_1(x)
        w_in, w_out = self.w_in, self.w_out
        if step:
            h = nf4_gemv(n, w_in.weight, w_in.bias, self.qkv_size, approximate, add=w_in.delta(n))
        else:
            h = w_in(n)  # (B, T, qkv + intermediate)
        qkv, mlp = h.split((self.qkv_size, h.size(-1) - self.qkv_size), dim=-1)
        heads = self.attn(qkv, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, T, n_head * hs)
        if step:  # mlp is gelu(fc) already
            return nf4_cat_gemv(heads, mlp, w_out.weight, w_out.bias, x, add=self._out_delta(heads, mlp))
        act = F.gelu(mlp, approximate=approximate)
        out = w_out(torch.cat((heads, act), dim=-1))
        delta = self._out_delta(heads, act)
        return (out if delta is None else out + delta) + x


class SequentialNF4Block(FusedBlock):
    """A sequential block with a gated MLP (`serve.generate.SequentialBlock`) on an NF4 base: qkv; proj
    adding x; `[gate; up]` giving `act(gate) * up`; down adding x — four NF4 GEMVs a decode step, each
    with its LoRA update (if any) added before its activation and residual."""

    def __init__(self, block: Any, gemv: bool = True) -> None:
        super().__init__()
        attn: Any = block.attn
        mlp: Any = block.mlp
        self.config = block.config
        self.norm_1, self.norm_2 = block.norm_1, block.norm_2
        self.gemv = gemv and kernels_nf4.available()
        gemma = isinstance(mlp, GemmaMLP | lora.GemmaMLP)
        self.activation = gated_activation(gemma, self.config.gelu_approximate)
        dtype = _dtype(block)
        self.qkv, self.proj = PackedLinear.of(attn.qkv, dtype), PackedLinear.of(attn.proj, dtype)
        gate, up = PackedLinear.of(mlp.fc_1, dtype), PackedLinear.of(mlp.fc_2, dtype)
        self.intermediate_size = gate.out_features
        self.w_in = PackedLinear.stack_rows(gate, up)  # [gate; up]
        self.w_down = PackedLinear.of(mlp.proj, dtype)
        attn.qkv, attn.proj = nn.Identity(), nn.Identity()
        self.attn = attn

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        step = self.gemv and use_nf4_gemv(x)  # a decode step: NF4 GEMVs (static under torch.compile)
        qkv_l, proj, w_in, w_down = self.qkv, self.proj, self.w_in, self.w_down
        n = self.norm_1(x)
        qkv = nf4_gemv(n, qkv_l.weight, qkv_l.bias, add=qkv_l.delta(n)) if step else qkv_l(n)
        heads = self.attn(qkv, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, T, n_head * hs)
        if step:
            x = nf4_gemv(heads, proj.weight, proj.bias, residual=x, add=proj.delta(heads))
        else:
            x = proj(heads) + x  # (B, T, C)
        n = self.norm_2(x)
        if step:
            act = nf4_glu_gemv(n, w_in.weight, w_in.bias, self.activation, add=w_in.delta(n))
            return nf4_gemv(act, w_down.weight, w_down.bias, residual=x, add=w_down.delta(act))
        gate, up = w_in(n).split(self.intermediate_size, dim=-1)  # 2 x (B, T, intermediate)
        return w_down(self.act(gate) * up) + x


def fusion_for(block: nn.Module) -> tuple[type[FusedBlock] | None, str]:
    """The NF4 fused block that computes `block` (a litgpt block, LoRA or not, over NF4 layers), or None
    and why there is none."""
    config: Any = block.config
    attn: Any = block.attn
    mlp: Any = block.mlp
    if not isinstance(attn, CausalSelfAttention):
        return None, f"{type(attn).__name__} attention"
    extra_norms = (getattr(block, name, None) for name in ("post_attention_norm", "post_mlp_norm"))
    if not all(n is None or isinstance(n, nn.Identity) for n in extra_norms):
        return None, "norms after attention and MLP (Gemma 2/3)"
    names = ("fc", "fc_1", "fc_2", "proj")
    linears = [attn.qkv, attn.proj, *(getattr(mlp, name) for name in names if hasattr(mlp, name))]
    if not all(packable(lin) for lin in linears):
        return None, "linear layers neither NF4 (of an even width) nor LoRA over NF4"
    if config.parallel_residual:
        if config.shared_attention_norm and isinstance(mlp, GptNeoxMLP):
            return ParallelNF4Block, ""
        return None, "an NF4 parallel residual other than Falcon's"
    if isinstance(mlp, LLaMAMLP):
        return SequentialNF4Block, ""
    return None, f"an NF4 sequential residual with {type(mlp).__name__}"
