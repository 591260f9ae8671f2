"""QLoRA's frozen base in 4-bit NormalFloat (NF4): quantize a litgpt (LoRA) GPT's Linear weights in place.

The implementation is torchao's `NF4Tensor` (what torchtune's QLoRA uses): pure PyTorch, so the code that
runs in the CPU tests is the code that runs on the GPU, it works under `torch.compile`, and its wheel is
~3 MiB. Every `nn.Linear` of the base (except `skip`, by default the LM head) becomes an `NF4Linear`
holding a frozen `NF4Tensor`; the LoRA `A`/`B` matrices are plain parameters of litgpt's LoRA layers and
stay in the model's dtype and trainable. The module tree and state-dict keys are unchanged, so
`lit_model_lora_finetuned.pth` (LoRA tensors only) loads onto a quantized or an unquantized base alike.

The two modes, `nf4` and `nf4-dq` (double-quantized scalers), and the checks whether one can run here
are in `common.quantize`.

Typical use — a 7B base never sits on the GPU in bf16, only one layer at a time::

    model = load_quantized_model(lora_config, checkpoint_dir / "lit_model.pth", "nf4-dq", "cuda")
    model.load_state_dict(adapter, strict=False)  # optional: a trained adapter, applied unmerged

`quantize_model` does the in-place conversion for a model built any other way; `parameter_memory` and
`tensor_nbytes` count what the weights really take.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from common.quantize import QuantizeMode, check_quantize_support, nf4_tensor_class, parse_quantize_mode

if TYPE_CHECKING:
    from litgpt.lora import GPT, Config
    from torchao.quantization import NF4Tensor

log = logging.getLogger(__name__)

NF4_BLOCK_SIZE = 64  # weights per absmax scaler (QLoRA paper, bitsandbytes and torchao default)
DQ_SCALER_BLOCK_SIZE = 256  # scalers per int8 scale factor in double quantization (same sources)


def _largest_divisor(n: int, at_most: int, even: bool = False) -> int:
    for d in range(min(n, at_most), 0, -1):
        if n % d == 0 and (d % 2 == 0 or not even):
            return d
    return 0


def nf4_block_sizes(numel: int, double_quant: bool) -> tuple[int, int] | None:
    """(block_size, scaler_block_size) for a weight of `numel` elements, or None if NF4 cannot hold it.

    Blocks run over the flattened weight, so a block of 64 needs numel % 64 == 0 (true for every
    Falcon-7B matrix); otherwise the largest even divisor below 64 is used. Double quantization groups
    the scalers in blocks of up to 256 that divide their count (Falcon-7B's qkv gives 146, its MLP 256).
    """
    block_size = _largest_divisor(numel, NF4_BLOCK_SIZE, even=True)
    if block_size < 2:
        return None
    n_blocks = numel // block_size
    scaler_block_size = _largest_divisor(n_blocks, DQ_SCALER_BLOCK_SIZE) if double_quant else n_blocks
    return block_size, scaler_block_size


def quantize_nf4(weight: torch.Tensor, *, double_quant: bool) -> NF4Tensor:
    """`weight` (2-D, floating) as an NF4Tensor on its device; dequantizes to `weight.dtype`."""
    nf4_cls = nf4_tensor_class()
    sizes = nf4_block_sizes(weight.numel(), double_quant)
    if sizes is None or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"NF4 needs a 2-D floating weight with an even number of elements, got {weight.shape}"
        )
    block_size, scaler_block_size = sizes
    weight = weight.detach().contiguous()
    if double_quant:
        return nf4_cls.from_tensor(weight, block_size, scaler_block_size)
    # torchao always double-quantizes its scalers. For plain NF4, take its codes (and code table) from a
    # quantization with a single scaler block, then swap in the absmax scalers themselves — exact, as an
    # absmax is one of the weights — with a unit factor and zero mean, which torchao's dequantization
    # (`scalers / factor + mean`) returns unchanged. Rebuilt through the tensor-subclass protocol.
    n_blocks = weight.numel() // block_size
    packed = nf4_cls.from_tensor(weight, block_size, scaler_block_size)
    names, metadata = packed.__tensor_flatten__()
    inner = {name: getattr(packed, name) for name in names}
    inner["quantized_scalers"] = weight.flatten().view(n_blocks, block_size).abs().amax(dim=1)
    inner["quantization_factor"] = torch.ones(1, dtype=weight.dtype, device=weight.device)
    inner["scaler_mean"] = torch.zeros((), dtype=weight.dtype, device=weight.device)
    return nf4_cls.__tensor_unflatten__(inner, metadata, packed.size(), packed.stride())


def clone_nf4(weight: NF4Tensor) -> NF4Tensor:
    """A copy of an NF4Tensor's quantized parts (its own `clone()` re-quantizes)."""
    names, metadata = weight.__tensor_flatten__()
    inner = {name: getattr(weight, name).clone() for name in names}
    return type(weight).__tensor_unflatten__(inner, metadata, weight.size(), weight.stride())


def _dequantize(weight: NF4Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight.get_original_weight().to(dtype)


@functools.cache
def _compiled_dequantize() -> Callable[[NF4Tensor, torch.dtype], torch.Tensor]:
    # one fused kernel per weight shape (four in Falcon) instead of ~10 eager ops with int64 temporaries
    return cast(Callable[["NF4Tensor", torch.dtype], torch.Tensor], torch.compile(_dequantize, dynamic=False))


def dequantize(weight: NF4Tensor, dtype: torch.dtype, *, compiled: bool = False) -> torch.Tensor:
    """The full-precision weight an NF4Tensor stands for, in `dtype`."""
    if compiled and not torch.compiler.is_compiling():  # inside a compiled region it fuses anyway
        return _compiled_dequantize()(weight, dtype)
    return _dequantize(weight, dtype)


class _LinearNF4(torch.autograd.Function):
    """y = x W^T with W frozen in NF4: dequantized in the forward and again in the backward, never kept.

    torchao's `linear_nf4` does the same; this one can use a compiled dequantization in eager training and
    skips the backward's dequantization when the input needs no gradient (the first layer's input).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: NF4Tensor, compiled: bool) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.compiled = compiled
        return F.linear(x, dequantize(weight, x.dtype, compiled=compiled))  # (..., out)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        return grad_output @ dequantize(weight, grad_output.dtype, compiled=ctx.compiled), None, None


class NF4Linear(nn.Module):
    """A frozen `nn.Linear` whose weight is an NF4Tensor; drop-in for the `.linear` of litgpt's LoRA layers.

    The parameter keeps the name `weight`, so state-dict keys do not change. Moving the module to a device
    keeps the weight in NF4; dtype casts (`model.to(torch.bfloat16)`, Fabric's `bf16-true`) leave it alone
    too — the forward computes in the input's dtype anyway — where a plain `.to(dtype)` on an NF4Tensor
    would dequantize it. A full-precision weight loaded through `load_state_dict` is quantized on arrival.
    """

    def __init__(self, weight: NF4Tensor, bias: torch.Tensor | None = None, *, compile_dequant: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.double_quant = weight.quantized_scalers.dtype == torch.int8
        self.compile_dequant = compile_dequant
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = cast(torch.Tensor, _LinearNF4.apply(x, self.weight, self.compile_dequant))
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        mode = "nf4-dq" if self.double_quant else "nf4"
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}, {mode}"

    def __deepcopy__(self, memo: dict[int, Any]) -> NF4Linear:
        # torchao's NF4Tensor.clone() re-quantizes the dequantized weight with its default block sizes,
        # which loses plain NF4's exact scalers and fails on block counts not divisible by 256: copy the
        # quantized parts instead.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_parameters":
                value = {
                    name: nn.Parameter(clone_nf4(p), requires_grad=False)
                    if name == "weight"
                    else copy.deepcopy(p, memo)
                    for name, p in value.items()
                }
            else:
                value = copy.deepcopy(value, memo)
            new.__dict__[key] = value
        return new

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> NF4Linear:
        weight = self.weight
        del self._parameters["weight"]
        try:
            super()._apply(fn, recurse)
        finally:
            # apply `fn` to an empty probe to learn where it sends tensors; move the NF4 data there as is
            target = fn(torch.empty(0, dtype=weight.dtype, device=weight.device)).device
            if target != weight.device:
                weight = nn.Parameter(weight.to(target), requires_grad=False)
            self._parameters = {"weight": weight, **self._parameters}
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
        key = prefix + "weight"
        incoming = state_dict.get(key)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if incoming is None:
            return
        missing_keys.remove(key)
        if tuple(incoming.shape) != tuple(self.weight.shape):
            error_msgs.append(
                f"size mismatch for {key}: {tuple(incoming.shape)} vs {tuple(self.weight.shape)}"
            )
            return
        if not isinstance(incoming, nf4_tensor_class()):
            incoming = quantize_nf4(
                incoming.to(device=self.weight.device, dtype=self.weight.dtype),
                double_quant=self.double_quant,
            )
        self.weight = nn.Parameter(incoming.to(self.weight.device), requires_grad=False)


@dataclass
class QuantizationReport:
    """What `quantize_model` did."""

    mode: QuantizeMode
    layers: list[str] = field(default_factory=list)
    """Linear layers now in NF4."""
    kept: list[str] = field(default_factory=list)
    """Linear layers left in full precision (in `skip`, or a shape NF4 cannot hold)."""
    quantized_bytes: int = 0
    """Memory of the NF4 weights (codes, scalers, factors)."""
    source_bytes: int = 0
    """Memory of the same weights in the dtype they were quantized from."""


def _source_weight(name: str, linear: nn.Linear, weights: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    if weights is not None:
        # a base checkpoint names litgpt's LoRA `x.linear.weight` as `x.weight`
        for key in (f"{name}.weight", f"{name.removesuffix('.linear')}.weight"):
            if key in weights:
                return weights[key]
    return linear.weight


def quantize_model(
    model: nn.Module,
    mode: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    skip: Iterable[str] = ("lm_head",),
    compile_dequant: bool = False,
) -> QuantizationReport:
    """Replace every `nn.Linear` of `model` (but those under a name in `skip`) by a frozen `NF4Linear`.

    One layer at a time: its full-precision weight — from `weights` (a state dict, e.g. a checkpoint
    loaded with `mmap=True`) when given, else the module's own — is moved to `device` in `dtype` (both
    default to the weight's), quantized and replaced, so only one full-precision layer is ever on the
    device. LoRA `A`/`B` matrices are not `nn.Linear`s and stay as they are; everything else (embeddings,
    norms, LoRA, the skipped head) is for the caller to move to the device.
    """
    quantize_mode = parse_quantize_mode(mode)
    double_quant = quantize_mode == "nf4-dq"
    skip = tuple(skip)
    report = QuantizationReport(quantize_mode)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        if any(name == s or name.startswith(s + ".") for s in skip):
            report.kept.append(name)
            continue
        source = _source_weight(name, linear, weights)
        if nf4_block_sizes(source.numel(), double_quant) is None:
            report.kept.append(name)
            continue
        if source.is_meta and weights is not None:
            raise ValueError(f"the checkpoint has no {name}.weight: it does not fit the model config")
        if source.is_meta:
            raise ValueError(
                f"{name}.weight is on the meta device: load the base weights first "
                "(model.load_state_dict(checkpoint, assign=True)) or pass them as `weights`"
            )
        weight = source.detach().to(device=device or source.device, dtype=dtype or source.dtype)
        qweight = quantize_nf4(weight, double_quant=double_quant)
        bias = (
            None if linear.bias is None else linear.bias.detach().to(device=weight.device, dtype=weight.dtype)
        )
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name), child, NF4Linear(qweight, bias, compile_dequant=compile_dequant)
        )
        report.layers.append(name)
        report.quantized_bytes += tensor_nbytes(qweight)
        report.source_bytes += weight.numel() * weight.element_size()
        del weight, qweight, linear
    log.info(
        "%s: %d linear layers in NF4 (%.1f MiB, from %.1f MiB), %d kept in full precision",
        quantize_mode,
        len(report.layers),
        report.quantized_bytes / 2**20,
        report.source_bytes / 2**20,
        len(report.kept),
    )
    return report


def load_quantized_model(
    config: Config,
    checkpoint: Path | Mapping[str, torch.Tensor],
    mode: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    skip: Iterable[str] = ("lm_head",),
    compile_dequant: bool | None = None,
) -> GPT:
    """litgpt's LoRA GPT for `config` with its base weights from `checkpoint` (a `lit_model.pth` or a
    state dict) in NF4 on `device`; the full-precision base is never on the device whole.

    The checkpoint is memory-mapped on the CPU; the Linear weights go to the device one at a time and
    are quantized there, the other weights (embeddings, norms, head) follow in `dtype`, and the LoRA
    tensors are freshly initialized on the device (A random, B zero) — seed before calling, and load an
    adapter afterwards with `model.load_state_dict(adapter, strict=False)`. `compile_dequant` None: on
    for CUDA GPUs that Triton supports (compute capability 7.0+), off elsewhere.
    """
    from litgpt.lora import GPT, LoRALinear

    device = torch.device(device)
    if compile_dequant is None:
        compile_dequant = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7
    check_quantize_support(mode, device, compile_dequant=compile_dequant)
    if isinstance(checkpoint, Path):
        state: Mapping[str, torch.Tensor] = torch.load(
            checkpoint, mmap=True, weights_only=True, map_location="cpu"
        )
    else:
        state = checkpoint
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so materialized LoRA tensors come out in `dtype`
    try:
        with torch.device("meta"):
            model = GPT(config)
        report = quantize_model(
            model, mode, device=device, dtype=dtype, weights=state, skip=skip, compile_dequant=compile_dequant
        )
        quantized = {f"{n}.weight" for n in report.layers} | {
            f"{n.removesuffix('.linear')}.weight" for n in report.layers
        }
        rest = {k: v for k, v in state.items() if k not in quantized}
        result = model.load_state_dict(rest, strict=False, assign=True)  # CPU tensors, moved below
        missing = [k for k in result.missing_keys if "lora_" not in k and k not in quantized]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"the checkpoint does not fit the model config {config.name!r}: "
                f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        for module in model.modules():
            if isinstance(module, LoRALinear) and module.r > 0:
                module.to_empty(device=device, recurse=False)
                module.reset_parameters()
        model.cos, model.sin = model.rope_cache(device=device)  # non-persistent buffers, still on meta
    finally:
        torch.set_default_dtype(default_dtype)
    return model.to(device=device, dtype=dtype)


def strip_unused_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer without an adapter (r=0: by default the head, projections and MLP) by the
    layer it wraps, in place; for inference, where code expects `model.lm_head.weight` as in a plain GPT.
    """
    from litgpt.lora import LoRALinear

    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear) and module.r == 0:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.linear)
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of `model` holds an NF4 weight (then LoRA must not be merged into it)."""
    return any(isinstance(m, NF4Linear) for m in model.modules())


def is_nf4(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is an NF4Tensor (a quantized base weight)."""
    return isinstance(tensor, nf4_tensor_class())


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really occupies; for a wrapper subclass (NF4, low-bit optimizer states) its parts."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_nbytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class ParameterMemory:
    """Where a model's parameter memory goes."""

    quantized_params: int
    """Elements held in NF4."""
    quantized_bytes: int
    """Bytes of the NF4 weights, all inner tensors counted."""
    other_bytes: int
    """Bytes of every other parameter (embeddings, norms, LoRA, unquantized layers)."""
    trainable_params: int

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.other_bytes

    @property
    def bits_per_quantized_param(self) -> float:
        return 8 * self.quantized_bytes / max(self.quantized_params, 1)


def parameter_memory(model: nn.Module) -> ParameterMemory:
    """Count `model`'s parameters by kind (NF4, other, trainable)."""
    q_params = q_bytes = other = trainable = 0
    for p in model.parameters():
        if is_nf4(p):
            q_params += p.numel()
            q_bytes += tensor_nbytes(p)
        else:
            other += tensor_nbytes(p)
        if p.requires_grad:
            trainable += p.numel()
    return ParameterMemory(q_params, q_bytes, other, trainable)
