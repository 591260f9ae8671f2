"""`--base-precision fp8`: the frozen base's matmuls through scaled FP8 GEMMs (Hopper-class GPUs).

Every `nn.Linear` of the base but the LM head becomes an `FP8Linear`: its weight quantized once, on
arrival, to `float8_e4m3fn` with one scale per output channel (row), and kept so. In training:

- forward  y  = x W^T:  x quantized per row (token) on the fly, one `torch._scaled_mm` with the row
  scales of x and the channel scales of W (cuBLASLt/CUTLASS rowwise scaling), output in x's dtype;
- backward dx = dy W:   W's channel scales run along the contraction here, so they are folded into dy
  first, then dy is quantized per row and multiplied with W^T (transposed on the fly: an FP8 GEMM wants
  the contraction dimension contiguous in both operands); W needs no gradient and x is not kept.

LoRA's A and B, the optimizer, norms, embeddings, the head and the loss stay in --precision (bf16) /
fp32: only the frozen GEMMs, ~all of a LoRA step's FLOPs, run in FP8. This is torchao's "rowwise" float8
recipe restricted to frozen weights (whose quantization can then be done once), written over
`torch._scaled_mm` directly so that it composes with litgpt's LoRA layers and `torch.compile`.

Off CUDA the same math runs as a reference (dequantize, then matmul in fp32): the CPU tests check it,
and check it against `torch._scaled_mm` where this torch has a CPU kernel for it. Training refuses to
start with fp8 on a device without FP8 tensor cores (`fp8_unavailable`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
MIN_AMAX = 1e-12
"""Floor of a row's absolute maximum (an all-zero row still gets a finite scale)."""
ALIGN = 16
"""FP8 GEMMs need both dimensions of each operand divisible by 16: weights that are not stay as they
were; the token dimension is padded."""
MIN_CAPABILITY = (9, 0)
INSTEAD = "drop --base-precision fp8 (bf16 base), or use --quantize nf4-dq for a smaller one"


def fp8_unavailable(device: torch.device | str) -> str | None:
    """Why the FP8 base cannot train on `device`, in one line naming what to use instead (None: it can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return (
            f"--base-precision fp8 needs an NVIDIA GPU with FP8 tensor cores (Hopper-class: H100/H200, "
            f"compute capability 9.0+), not a {device.type.upper()}: {INSTEAD}"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"--base-precision fp8 needs rowwise-scaled FP8 GEMMs (Hopper-class, compute capability 9.0+); "
            f"{name} is {major}.{minor}: {INSTEAD}"
        )
    if not hasattr(torch, "_scaled_mm"):
        return (
            f"--base-precision fp8 needs torch._scaled_mm, which torch {torch.__version__} lacks: {INSTEAD}"
        )
    return None


# ------------------------------------------------------------------------------------------- numerics
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale): `x` (M, K) in e4m3 with one fp32 scale per row (M, 1), x ≈ q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=MIN_AMAX)
    scale = amax / E4M3_MAX
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def scaled_mm_runs_on(device: torch.device) -> bool:
    """Whether `fp8_matmul` calls torch._scaled_mm on `device` (else the dequantizing reference)."""
    return device.type == "cuda"


def fp8_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
    reference: bool | None = None,
) -> torch.Tensor:
    """(a * a_scale) @ (b * b_scale)^T for row-major e4m3 `a` (M, K) and `b` (N, K) with row scales
    (M, 1) and (N, 1): one `torch._scaled_mm` on CUDA, the same math dequantized in fp32 elsewhere (or
    when `reference`)."""
    if reference is None:
        reference = not scaled_mm_runs_on(a.device)
    if reference:
        return (dequantize_rows(a, a_scale) @ dequantize_rows(b, b_scale).t()).to(out_dtype)
    m = a.size(0)
    pad = -m % ALIGN
    if pad:
        a, a_scale = (
            F.pad(a.view(torch.uint8), (0, 0, 0, pad)).view(E4M3),
            F.pad(a_scale, (0, 0, 0, pad), value=1.0),
        )
    # b.t(): column-major (K, N), as the GEMM wants; rowwise scaling writes bf16 only
    out = torch._scaled_mm(
        a,
        b.t(),
        scale_a=a_scale,
        scale_b=b_scale.view(1, -1),
        out_dtype=torch.bfloat16,
        use_fast_accum=fast_accum,
    ).to(out_dtype)
    return out[:m] if pad else out


# Only the FP8 GEMM is a custom op (opaque to torch.compile, traced by its fake, shape-only version:
# dynamo could not trace an autograd.Function around `_scaled_mm` — "lift_tracked_freevar_to_input should
# not be called on root SubgraphTracer", torch 2.11 on the H200). The quantization around it — each row's
# amax, its scale, the cast to e4m3, and in the backward the folding of the weight's scales into dy —
# stays ordinary torch code that Inductor compiles and fuses with the ops next to it (the norm before a
# projection, the gradient's producer), instead of three more passes over every activation and gradient.
@torch.library.custom_op("twin::fp8_mm", mutates_args=())
def fp8_mm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    fast_accum: bool,
) -> torch.Tensor:
    """`fp8_matmul` as one opaque op: (M, K) x (N, K)^T e4m3 with row scales → (M, N) in `out_dtype`."""
    out = fp8_matmul(a, a_scale, b, b_scale, out_dtype, fast_accum=fast_accum)
    return out if out._base is None else out.clone()  # never a view of a temporary (the padded rows)


@fp8_mm.register_fake
def _(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    fast_accum: bool,
) -> torch.Tensor:
    return a.new_empty(a.size(0), b.size(0), dtype=out_dtype)


@torch.library.custom_op("twin::fp8_linear", mutates_args=())
def _fp8_linear_2d(
    x: torch.Tensor, xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """y = x (scale * W)^T from x's e4m3 rows `xq`, `x_scale` (x itself only carries the gradient)."""
    # fast accumulation in the forward, exact in the backward: torchao's float8 recipes do the same
    return fp8_mm(xq, x_scale, weight, scale, x.dtype, True)


@_fp8_linear_2d.register_fake
def _(
    x: torch.Tensor, xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    return x.new_empty(x.size(0), weight.size(0))


def fp8_linear_input_grad(
    grad_output: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """dx = dy (scale * W) for `fp8_linear`, dy (M, N): the channel scales lie along the contraction, so
    they scale dy's columns before dy is quantized per row; W^T is made contiguous (an FP8 GEMM wants the
    contraction dimension contiguous in both operands)."""
    n, k = weight.shape
    gq, g_scale = quantize_rows(grad_output.float() * scale.view(1, n))  # one fused pass when compiled
    ones = torch.ones((k, 1), dtype=torch.float32, device=weight.device)
    return fp8_mm(gq, g_scale, weight.t().contiguous(), ones, grad_output.dtype, False)


def _fp8_linear_setup(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    _, _, _, weight, scale = inputs
    ctx.save_for_backward(weight, scale)  # the stored weight: no activation is kept for the base


def _fp8_linear_backward(
    ctx: Any, grad_output: torch.Tensor
) -> tuple[torch.Tensor | None, None, None, None, None]:
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    weight, scale = ctx.saved_tensors
    return fp8_linear_input_grad(grad_output, weight, scale), None, None, None, None


_fp8_linear_2d.register_autograd(_fp8_linear_backward, setup_context=_fp8_linear_setup)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """y = x (scale * W)^T, W frozen in e4m3 with per-row `scale`; x quantized per token on the fly."""
    x2 = x.reshape(-1, x.size(-1))  # (M, K)
    xq, x_scale = quantize_rows(x2.detach())  # (M, K), (M, 1)
    return _fp8_linear_2d(x2, xq, x_scale, weight, scale).view(*x.shape[:-1], weight.size(0))


class FP8Linear(nn.Module):
    """A frozen `nn.Linear` with its weight in e4m3 and per-output-channel scales; drop-in for the `.linear`
    of litgpt's LoRA layers (state-dict key `weight` unchanged, plus `weight_scale`).

    Dtype casts (Fabric's `bf16-true`, `model.to(torch.bfloat16)`) leave the FP8 weight and its fp32
    scales alone; device moves take them along. A full-precision weight loaded through `load_state_dict`
    (a base checkpoint) is quantized on arrival.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
        self.reference = False
        """Force the dequantizing reference math (tests)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        weight, scale = quantize_rows(linear.weight.detach())
        return cls(weight, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            y = x @ dequantize_rows(self.weight, self.weight_scale, x.dtype).t()
        else:
            y = fp8_linear(x, self.weight, self.weight_scale)
        return y if self.bias is None else y + self.bias

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_rows(self.weight, self.weight_scale, dtype)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, e4m3"

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FP8Linear:
        weight, scale = self.weight, self.weight_scale
        del self._parameters["weight"]
        del self._buffers["weight_scale"]
        try:
            super()._apply(fn, recurse)
        finally:
            # an empty probe tells where `fn` sends tensors: move there, keep the dtypes
            target = fn(torch.empty(0, device=weight.device)).device
            self._parameters = {
                "weight": nn.Parameter(weight.to(target), requires_grad=False),
                **self._parameters,
            }
            self._buffers["weight_scale"] = scale.to(target)
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key, scale_key = prefix + "weight", prefix + "weight_scale"
        incoming, incoming_scale = state_dict.get(key), state_dict.get(scale_key)
        rest = {k: v for k, v in state_dict.items() if k not in (key, scale_key)}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for k in (key, scale_key):
            if k in missing_keys:
                missing_keys.remove(k)
        if incoming is None:
            if strict:
                missing_keys.append(key)
            return
        if tuple(incoming.shape) != (self.out_features, self.in_features):
            error_msgs.append(
                f"size mismatch for {key}: {tuple(incoming.shape)} vs {tuple(self.weight.shape)}"
            )
            return
        device = self.weight.device
        if incoming.dtype == E4M3 and incoming_scale is not None:
            weight, scale = incoming.to(device), incoming_scale.to(device=device, dtype=torch.float32)
        else:  # a full-precision base checkpoint: quantize here, on the module's device
            weight, scale = quantize_rows(incoming.to(device))
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = scale


# ------------------------------------------------------------------------------------------------ model
@dataclass
class FP8Report:
    layers: list[str] = field(default_factory=list)
    """Linear layers now in FP8."""
    kept: list[str] = field(default_factory=list)
    """Linear layers left as they were (skipped, or a shape FP8 GEMMs cannot take)."""


def quantize_base_fp8(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> FP8Report:
    """Replace every `nn.Linear` of `model` (but those under a name in `skip`) by an `FP8Linear` quantized
    from its current weight, in place; LoRA's A and B are not `nn.Linear`s and stay as they are."""
    skip = tuple(skip)
    report = FP8Report()
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        aligned = linear.in_features % ALIGN == 0 and linear.out_features % ALIGN == 0
        if any(name == s or name.startswith(s + ".") for s in skip) or not aligned:
            report.kept.append(name)
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, FP8Linear.from_linear(linear))
        report.layers.append(name)
    log.info("fp8 base: %d linear layers in e4m3, %d kept", len(report.layers), len(report.kept))
    return report
