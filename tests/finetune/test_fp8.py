"""--base-precision fp8 on a CPU: the quantization, the GEMM's scale convention, the layer against a
full-precision one, the tiny model's loss, and the one-line refusal to train without FP8 tensor cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from litgpt.lora import GPT, Config, LoRALinear

from finetune.__main__ import main
from finetune.args import to_argv
from finetune.fp8 import (
    E4M3,
    FP8Linear,
    dequantize_rows,
    fp8_matmul,
    fp8_unavailable,
    quantize_base_fp8,
    quantize_rows,
)
from finetune.model import attach_loss_positions, batch_loss, compile_blocks, prepare_lora_layers

FP8_REL = 0.06
"""Relative (norm-wise) error of a product of two e4m3-quantized operands: each carries ~2^-4 relative
rounding at most, ~2% typically."""


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_round_trip_is_within_e4m3_rounding() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 64) * torch.logspace(-4, 2, 48)[:, None]  # rows six decades apart
    q, scale = quantize_rows(w)
    assert q.dtype == E4M3 and scale.shape == (48, 1) and scale.dtype == torch.float32
    err = (dequantize_rows(q, scale) - w).abs()
    # 3 mantissa bits: half a step is 2^-4 of the value; below the normal range, half the smallest step
    assert (err <= w.abs() / 16 + scale * 2.0**-10).all()
    assert (q.float().abs().amax(dim=1) == 448).all()  # each row's maximum uses the full range
    assert torch.equal(quantize_rows(torch.zeros(2, 16))[0].float(), torch.zeros(2, 16))  # finite scales


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="this torch has no torch._scaled_mm")
def test_reference_math_is_what_scaled_mm_computes() -> None:
    """The CUDA path calls torch._scaled_mm with (M, 1) and (1, N) scales and the weight transposed;
    where torch has a CPU kernel for it, that call must give the reference's numbers."""
    torch.manual_seed(0)
    a, a_scale = quantize_rows(torch.randn(32, 64))
    b, b_scale = quantize_rows(torch.randn(48, 64) * 3)
    reference = fp8_matmul(a, a_scale, b, b_scale, torch.float32, reference=True)
    try:
        real = torch._scaled_mm(
            a, b.t(), scale_a=a_scale, scale_b=b_scale.view(1, -1), out_dtype=torch.float32
        )
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no CPU kernel for torch._scaled_mm here: {e}")
    torch.testing.assert_close(real, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="this torch has no torch._scaled_mm")
def test_the_gpu_path_compiles_and_matches_the_reference(monkeypatch) -> None:
    """FP8Linear's torch._scaled_mm path (rows padded to 16, bf16 out, the weight transposed for the
    input gradient), forced on the CPU where torch has the kernel, eager and under torch.compile."""
    import finetune.fp8 as fp8_module

    torch.manual_seed(0)
    layer = FP8Linear.from_linear(torch.nn.Linear(64, 96))
    x = torch.randn(3, 7, 64)
    grad = torch.randn(3, 7, 96)

    def run(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x_ = x.clone().requires_grad_()
        y = module(x_)
        y.backward(grad)
        assert x_.grad is not None
        return y.detach(), x_.grad

    y_ref, dx_ref = run(layer)  # the reference math on a CPU
    monkeypatch.setattr(fp8_module, "scaled_mm_runs_on", lambda device: True)
    try:
        y_mm, dx_mm = run(layer)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no CPU kernel for torch._scaled_mm here: {e}")
    # the GEMM writes bf16 (rowwise scaling): within bf16 rounding of the fp32 reference
    assert rel_error(y_mm, y_ref) < 2**-7 and rel_error(dx_mm, dx_ref) < 2**-7
    compiled = torch.compile(layer, backend="aot_eager_decomp_partition", dynamic=True)
    y_c, dx_c = run(compiled)
    torch.testing.assert_close(y_c, y_mm)
    torch.testing.assert_close(dx_c, dx_mm)


def test_fp8_linear_forward_and_input_gradient_match_full_precision() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=True)
    fp8 = FP8Linear.from_linear(linear)
    assert not fp8.weight.requires_grad and fp8.weight.dtype == E4M3
    x = torch.randn(3, 7, 64)  # 21 tokens: not a multiple of 16
    x_fp8, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fp8, y_ref = fp8(x_fp8), linear(x_ref)
    assert y_fp8.shape == y_ref.shape == (3, 7, 96)
    assert rel_error(y_fp8, y_ref) < FP8_REL
    grad = torch.randn_like(y_ref)
    y_fp8.backward(grad)
    y_ref.backward(grad)
    assert x_fp8.grad is not None and x_ref.grad is not None
    assert rel_error(x_fp8.grad, x_ref.grad) < FP8_REL
    assert fp8.bias is not None and fp8.bias.grad is not None  # the bias is an ordinary parameter
    # the FP8 path against the dequantized weight, its own exact reference: only x and dy rounding remain
    fp8.reference = True
    y_deq = fp8(x)
    assert rel_error(y_fp8.detach(), y_deq.detach()) < FP8_REL / 2


def test_fp8_linear_keeps_its_dtype_and_quantizes_what_it_loads() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16, bias=False)
    fp8 = FP8Linear.from_linear(torch.nn.Linear(32, 16, bias=False))
    fp8.to(torch.bfloat16)  # Fabric's bf16-true
    assert fp8.weight.dtype == E4M3 and fp8.weight_scale.dtype == torch.float32
    fp8.load_state_dict({"weight": linear.weight.detach()})  # a full-precision checkpoint
    assert rel_error(fp8.dequantized(), linear.weight) < 0.05
    again = FP8Linear.from_linear(torch.nn.Linear(32, 16, bias=False))
    again.load_state_dict(fp8.state_dict())  # an FP8 state dict is taken as it is
    assert torch.equal(again.weight.view(torch.uint8), fp8.weight.view(torch.uint8))


def test_tiny_model_loss_and_lora_gradients_in_fp8(tiny_checkpoint: Path, chat_records) -> None:
    from litgpt.tokenizer import Tokenizer

    from finetune.data import collate, encode_records, make_micro_batch

    def model_loss(fp8: bool, compiled: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        lora = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_query=True, lora_value=True, lora_mlp=True)
        model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml", **lora))
        if fp8:
            report = quantize_base_fp8(model)
            assert report.kept == ["lm_head.linear"] and len(report.layers) == 2 * 4  # qkv, proj, fc, proj
        model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True), strict=False)
        for name, p in model.named_parameters():
            p.requires_grad = "lora_" in name
            if name.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.05)
        prepare_lora_layers(model)
        if compiled:  # the loop's per-block compile (dynamo must trace the blocks around the FP8 op)
            compile_blocks(model, backend="aot_eager")
        assert all(
            isinstance(m.linear, FP8Linear) == fp8
            for n, m in model.named_modules()
            if isinstance(m, LoRALinear) and n != "lm_head"
        )
        examples = encode_records(chat_records["val"][:8], Tokenizer(tiny_checkpoint), 256).examples
        mb = make_micro_batch(range(8), max(map(len, examples)), examples)
        loss = batch_loss(model, attach_loss_positions(model), collate(mb, examples, pad_id=0))
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss_ref, grads_ref = model_loss(False)
    loss_fp8, grads_fp8 = model_loss(True)
    loss_compiled, grads_compiled = model_loss(True, compiled=True)
    assert loss_compiled == pytest.approx(loss_fp8, rel=1e-5)
    for name, grad in grads_fp8.items():
        torch.testing.assert_close(grads_compiled[name], grad, rtol=1e-4, atol=1e-6)
    assert loss_fp8 == pytest.approx(loss_ref, rel=0.01)  # the bar for a run's validation loss
    assert set(grads_fp8) == set(grads_ref)
    for name, grad in grads_ref.items():
        assert rel_error(grads_fp8[name], grad) < 0.1, name


def test_training_refuses_fp8_without_fp8_tensor_cores(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, tiny_run_args, capsys
) -> None:
    why = fp8_unavailable("cpu")
    assert why is not None and "\n" not in why and "drop --base-precision fp8" in why
    argv = to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "out"))
    code = main([*argv, "--base-precision", "fp8"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert "--base-precision fp8 needs an NVIDIA GPU" in lines[0] and "not a CPU" in lines[0]
    assert not (tmp_path / "out").exists()
