"""QLoRA's NF4 base (common/nf4.py) on a tiny Falcon-shaped litgpt LoRA model, on this CPU."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from litgpt.lora import GPT, Config, lora_filter, mark_only_lora_as_trainable

from common.nf4 import (
    NF4Linear,
    dequantize,
    is_nf4,
    is_quantized,
    load_quantized_model,
    nf4_block_sizes,
    parameter_memory,
    quantize_model,
    quantize_nf4,
    strip_unused_lora,
    tensor_nbytes,
)
from common.quantize import QuantizationUnavailableError, check_quantize_support, parse_quantize_mode
from finetune.model import make_optimizer

REPO = Path(__file__).resolve().parents[2]
VOCAB = 256


def tiny_config(**overrides: object) -> Config:
    """Falcon-7B's code paths (parallel residual, multi-query attention, rotary) at toy width."""
    kwargs: dict = dict(n_layer=2, n_embd=128, n_head=4, intermediate_size=512, vocab_size=VOCAB)
    kwargs.update(padded_vocab_size=VOCAB, block_size=64)
    kwargs.update(lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_query=True, lora_value=True)
    kwargs.update(overrides)
    return Config.from_name("falcon-7b", **kwargs)


def arithmetic_sequences(n: int, seed: int) -> torch.Tensor:
    """(n, 33) token rows s, s+d, s+2d, ... mod 64: a pattern the LoRA can learn over a random base."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 64, (n, 1), generator=g)
    step = torch.randint(1, 3, (n, 1), generator=g)
    return (start + step * torch.arange(33)) % 64


def lm_loss(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return GPT(tiny_config()).state_dict()


def make_model(state: dict[str, torch.Tensor], **lora: object) -> GPT:
    model = GPT(tiny_config(**lora))
    model.load_state_dict(state, strict=not lora)  # extra LoRA layers keep their own init
    return model


@pytest.fixture(scope="module")
def trained(base_state: dict[str, torch.Tensor]) -> dict:
    """LoRA (r=8 on q, v) trained for 40 steps on an NF4-DQ base; val losses along the way."""
    val = arithmetic_sequences(64, seed=1)
    model = make_model(base_state)
    quantize_model(model, "nf4-dq")
    mark_only_lora_as_trainable(model)
    nf4_before = {n: p.quantized_data.clone() for n, p in model.named_parameters() if is_nf4(p)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with torch.no_grad():
        val_before = lm_loss(model, val).item()
    torch.manual_seed(2)
    for step in range(40):
        loss = lm_loss(model, arithmetic_sequences(16, seed=100 + step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        val_after = lm_loss(model, val).item()
    return {
        "model": model,
        "val": val,
        "val_before": val_before,
        "val_after": val_after,
        "nf4_before": nf4_before,
        "adapter": {k: v.detach().clone() for k, v in model.state_dict().items() if lora_filter(k, v)},
    }


# --- the tensor -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_round_trip_error_is_that_of_4_bits(dtype: torch.dtype) -> None:
    weight = (torch.randn(384, 256, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    for double_quant in (False, True):
        restored = dequantize(quantize_nf4(weight, double_quant=double_quant), torch.float32)
        error = (restored - weight.float()).norm() / weight.float().norm()
        # NF4 of Gaussian weights in blocks of 64: ~9% relative RMS error (QLoRA paper's regime)
        assert 0.05 < error < 0.11, (double_quant, error)


def test_plain_nf4_keeps_exact_scalers_and_dq_quantizes_them_to_int8() -> None:
    weight = (torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    absmax = weight.flatten().view(-1, 64).abs().amax(dim=1)

    plain = quantize_nf4(weight, double_quant=False)
    assert plain.quantized_scalers.dtype == torch.bfloat16
    plain_scalers = plain.dequantize_scalers(
        plain.quantized_scalers, plain.quantization_factor, plain.scaler_block_size
    )
    assert torch.equal(plain_scalers, absmax)

    dq = quantize_nf4(weight, double_quant=True)
    assert dq.quantized_scalers.dtype == torch.int8 and dq.scaler_block_size == 256
    dq_scalers = dq.dequantize_scalers(dq.quantized_scalers, dq.quantization_factor, dq.scaler_block_size)
    assert not torch.equal(dq_scalers, absmax)
    # 8 bits over the scalers' range around their mean
    assert (dq_scalers.float() - absmax.float()).abs().max() < 0.02 * absmax.float().max()
    assert tensor_nbytes(dq) < tensor_nbytes(plain)


def test_block_sizes_fit_falcon_7b_shapes() -> None:
    # qkv (4672 x 4544): 331,712 blocks of 64 = 2^6 * 71 * 73 scalers, so DQ groups them by 146
    assert nf4_block_sizes(4672 * 4544, double_quant=True) == (64, 146)
    assert nf4_block_sizes(18176 * 4544, double_quant=True) == (64, 256)
    assert nf4_block_sizes(4672 * 4544, double_quant=False) == (64, 331712)
    assert nf4_block_sizes(3 * 5, double_quant=True) is None  # odd: cannot pack two codes a byte


@pytest.mark.parametrize(("mode", "at_least"), [("nf4", 3.7), ("nf4-dq", 3.85)])
def test_falcon_7b_qkv_matrix_takes_about_4x_less_memory_than_bf16(mode: str, at_least: float) -> None:
    weight = torch.randn(4672, 4544, dtype=torch.bfloat16) * 0.02
    qweight = quantize_nf4(weight, double_quant=mode == "nf4-dq")
    ratio = weight.numel() * 2 / tensor_nbytes(qweight)
    # 4 bits a weight, plus a bf16 scaler per 64 (nf4: 4.25 bits) or an int8 one (nf4-dq: ~4.13 bits)
    assert at_least < ratio < 4.0


# --- the model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nf4", "nf4-dq"])
def test_quantize_model_replaces_base_linears_and_keeps_lora(
    base_state: dict[str, torch.Tensor], mode: str
) -> None:
    model = make_model(base_state).bfloat16()
    bf16_bytes = parameter_memory(model).total_bytes
    report = quantize_model(model, mode)

    qkv = model.transformer.h[0].attn.qkv
    assert isinstance(qkv.linear, NF4Linear) and qkv.linear.double_quant == (mode == "nf4-dq")
    assert is_nf4(qkv.linear.weight) and not qkv.linear.weight.requires_grad
    assert qkv.lora_A.dtype == torch.bfloat16 and not is_nf4(qkv.lora_A) and qkv.lora_A.requires_grad
    assert report.kept == ["lm_head.linear"]  # the head stays in full precision by default
    assert len(report.layers) == 2 * 4  # qkv, proj, fc, proj per layer
    assert is_quantized(model)

    memory = parameter_memory(model)
    assert memory.quantized_bytes == report.quantized_bytes
    assert report.source_bytes / report.quantized_bytes > 3.6
    assert memory.bits_per_quantized_param < 4.4
    assert memory.total_bytes < bf16_bytes
    # state-dict keys unchanged, so base checkpoints and adapters keep loading
    assert set(model.state_dict()) == set(base_state)


def test_dtype_casts_keep_nf4_and_device_moves_keep_it_too(base_state: dict[str, torch.Tensor]) -> None:
    model = make_model(base_state)
    quantize_model(model, "nf4")
    weight = model.transformer.h[1].mlp.fc.linear.weight
    model.to(torch.bfloat16)  # what Fabric's bf16-true does; would dequantize a bare NF4Tensor
    model.to("cpu")
    after = model.transformer.h[1].mlp.fc.linear.weight
    assert is_nf4(after) and torch.equal(after.quantized_data, weight.quantized_data)
    assert model.transformer.h[1].norm_1.weight.dtype == torch.bfloat16
    x = torch.randint(0, VOCAB, (2, 16))
    assert model(x).dtype == torch.bfloat16


def test_forward_is_close_to_the_unquantized_model(base_state: dict[str, torch.Tensor]) -> None:
    reference = make_model(base_state)
    model = make_model(base_state)
    quantize_model(model, "nf4-dq")
    x = arithmetic_sequences(8, seed=3)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert (got - expected).norm() / expected.norm() < 0.1


def test_backward_reaches_lora_only(base_state: dict[str, torch.Tensor]) -> None:
    model = make_model(base_state, lora_mlp=True)
    quantize_model(model, "nf4")
    mark_only_lora_as_trainable(model)
    lm_loss(model, arithmetic_sequences(4, seed=4)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and trainable and all("lora_" in n for n in trainable)
    # the MLP's LoRA feeds an NF4 layer: its gradient came through that layer's dequantized backward
    assert model.transformer.h[0].mlp.fc.lora_B.grad.abs().sum() > 0


def test_training_on_an_nf4_base_lowers_val_loss(trained: dict) -> None:
    assert trained["val_after"] < trained["val_before"] - 1.0
    model = trained["model"]
    for name, p in model.named_parameters():
        if name in trained["nf4_before"]:
            assert not p.requires_grad and torch.equal(p.quantized_data, trained["nf4_before"][name])


def test_adapter_from_nf4_training_works_on_the_unquantized_base(
    trained: dict, base_state: dict[str, torch.Tensor]
) -> None:
    adapter = trained["adapter"]
    assert adapter and all("lora_" in k for k in adapter)
    model = make_model(base_state)
    result = model.load_state_dict(adapter, strict=False)
    assert not result.unexpected_keys
    val = trained["val"]
    with torch.no_grad():
        unquantized_loss = lm_loss(model, val).item()
        got, expected = trained["model"](val[:, :-1]), model(val[:, :-1])
    assert unquantized_loss < trained["val_before"] - 1.0
    assert abs(unquantized_loss - trained["val_after"]) < 0.15
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8


@pytest.mark.parametrize("mode", ["nf4", "nf4-dq"])
def test_loading_a_full_precision_checkpoint_quantizes_it_in_the_same_mode(
    base_state: dict[str, torch.Tensor], mode: str
) -> None:
    torch.manual_seed(5)
    model = GPT(tiny_config())  # other weights
    quantize_model(model, mode)
    model.load_state_dict(base_state)
    direct = make_model(base_state)
    quantize_model(direct, mode)
    for name, p in direct.named_parameters():
        loaded = model.get_parameter(name)
        if is_nf4(p):
            assert is_nf4(loaded)
            assert torch.equal(loaded.quantized_data, p.quantized_data)
            assert torch.equal(loaded.quantized_scalers, p.quantized_scalers)
        else:
            assert torch.equal(loaded, p), name


@pytest.mark.parametrize("mode", ["nf4", "nf4-dq"])
def test_deepcopy_and_saved_state_keep_the_quantized_weights(
    base_state: dict[str, torch.Tensor], mode: str, tmp_path: Path
) -> None:
    model = make_model(base_state)
    quantize_model(model, mode)
    x = arithmetic_sequences(2, seed=9)
    with torch.no_grad():
        expected = model(x)
        # torchao's own NF4Tensor.clone() would re-quantize (and fail on 384 scalers in blocks of 256)
        copied = copy.deepcopy(model)
        assert torch.equal(copied(x), expected)
        torch.save(model.state_dict(), tmp_path / "state.pth")
        state = torch.load(tmp_path / "state.pth", weights_only=True)
        restored = GPT(tiny_config())
        quantize_model(restored, mode)
        restored.load_state_dict(state)
        assert torch.equal(restored(x), expected)
    weight = copied.transformer.h[0].attn.qkv.linear.weight
    original = model.transformer.h[0].attn.qkv.linear.weight
    assert weight.quantized_scalers.dtype == original.quantized_scalers.dtype
    assert weight.quantized_data.data_ptr() != original.quantized_data.data_ptr()


def test_layer_by_layer_from_a_checkpoint_into_a_meta_model(base_state: dict[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        model = GPT(tiny_config())
    with pytest.raises(ValueError, match="meta device"):
        quantize_model(copy.deepcopy(model), "nf4")
    # a base checkpoint names the LoRA layers' `x.linear.weight` as `x.weight`
    checkpoint = {k.replace(".linear.", "."): v for k, v in base_state.items() if "lora_" not in k}
    quantize_model(model, "nf4", device="cpu", weights=checkpoint, skip=())
    assert not any(p.is_meta for p in model.transformer.h.parameters() if not p.requires_grad)
    model.load_state_dict(
        {k: v for k, v in base_state.items() if k.startswith(("transformer.wte", "transformer.ln_f"))}
        | {k: v for k, v in base_state.items() if "norm_" in k or "lora_" in k},
        strict=False,
        assign=True,
    )
    model.cos, model.sin = model.rope_cache(device=torch.device("cpu"))  # non-persistent buffers
    direct = make_model(base_state)
    quantize_model(direct, "nf4", skip=())
    x = arithmetic_sequences(4, seed=6)
    with torch.no_grad():
        assert torch.equal(model(x), direct(x))


def test_load_quantized_model_from_a_checkpoint_file(
    base_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    # a base checkpoint as litgpt writes it: no LoRA tensors; `x.weight` for LoRA layers' `x.linear.weight`
    path = tmp_path / "lit_model.pth"
    torch.save({k.replace(".linear.", "."): v for k, v in base_state.items() if "lora_" not in k}, path)
    torch.manual_seed(7)
    model = load_quantized_model(tiny_config(), path, "nf4-dq", "cpu", torch.float32)

    torch.manual_seed(7)
    direct = make_model(base_state)
    direct.transformer.h.apply(lambda m: m.reset_parameters() if hasattr(m, "lora_A") else None)
    quantize_model(direct, "nf4-dq")
    assert not any(p.is_meta for p in model.parameters()) and not model.cos.is_meta
    assert model.transformer.h[0].attn.qkv.lora_B.abs().sum() == 0  # a fresh adapter starts at zero
    assert is_nf4(model.transformer.h[0].mlp.proj.linear.weight)
    assert torch.equal(model.lm_head.linear.weight, base_state["lm_head.linear.weight"])
    x = arithmetic_sequences(2, seed=8)
    with torch.no_grad():
        assert torch.allclose(model(x), direct(x))
    with pytest.raises(ValueError, match="does not fit the model config"):
        load_quantized_model(tiny_config(n_layer=3), path, "nf4", "cpu", torch.float32)


def test_for_serving_unused_lora_wrappers_go_and_the_adapter_stays_unmerged(trained: dict) -> None:
    model = copy.deepcopy(trained["model"]).eval()
    val = trained["val"][:, :-1]
    with torch.no_grad():
        expected = model(val)
        strip_unused_lora(model)
        assert torch.equal(model(val), expected)
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight.shape[0] == VOCAB
    assert isinstance(model.transformer.h[0].mlp.fc, NF4Linear)  # r=0: the wrapper is gone
    qkv = model.transformer.h[0].attn.qkv
    assert isinstance(qkv.linear, NF4Linear) and qkv.lora_B.abs().sum() > 0 and not qkv.merged


# --- the finetune loop and its CLI ------------------------------------------------------------------------


def test_finetune_loop_trains_on_an_nf4_base(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, tiny_run_args
) -> None:
    from finetune.train import setup

    out = tmp_path / "qlora"
    args = tiny_run_args(tiny_checkpoint, prepared_dir, out, quantize="nf4-dq", eval_samples=0, max_steps=10)
    summary = setup(args)
    assert summary is not None
    assert summary.final_val_loss < 0.9 * summary.first_val_loss
    adapter = torch.load(summary.adapter, weights_only=True)
    assert adapter and all("lora_" in k for k in adapter)
    assert "quantize: nf4-dq" in (out / "hyperparameters.yaml").read_text()


def test_cli_quantize_flags() -> None:
    from finetune.args import parse_args
    from finetune.errors import UserError

    args = parse_args(["--quantize", "nf4", "--optimizer", "adamw8bit"])
    assert args.run.quantize == "nf4" and args.train.optimizer == "adamw8bit"
    assert parse_args([]).run.quantize == "none"
    with pytest.raises(UserError, match="drop --devices 2 or --quantize"):
        parse_args(["--quantize", "nf4-dq", "--devices", "2"])
    with pytest.raises(SystemExit):
        parse_args(["--quantize", "int4"])


# --- choices and errors ---------------------------------------------------------------------------------


def test_unknown_mode_names_the_valid_ones() -> None:
    assert parse_quantize_mode("nf4-dq") == "nf4-dq"
    with pytest.raises(ValueError, match="nf4, nf4-dq"):
        parse_quantize_mode("int4")


def test_unsupported_devices_say_what_to_drop() -> None:
    check_quantize_support("nf4", "cpu")
    with pytest.raises(QuantizationUnavailableError, match="drop --devices 2"):
        check_quantize_support("nf4", "cpu", devices=2)
    with pytest.raises(QuantizationUnavailableError, match="drop --quantize"):
        check_quantize_support("nf4-dq", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(QuantizationUnavailableError, match="CUDA build of torch"):
            check_quantize_support("nf4", "cuda")


def test_without_torchao_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['torchao'] = None\n"  # as if torchao were not installed
        "from common.quantize import check_quantize_support, QuantizationUnavailableError\n"
        "try:\n    check_quantize_support('nf4', 'cpu')\n"
        "except QuantizationUnavailableError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "pip install 'torchao>=" in out.stdout and "drop --quantize" in out.stdout


def test_8bit_optimizer_keeps_int8_states_and_steps() -> None:
    with pytest.raises(ValueError, match="adamw, adamw8bit, adamw4bit"):
        make_optimizer(torch.nn.Module(), 1.0, 0.0, torch.device("cpu"), "sgd")
    param = torch.nn.Parameter(torch.randn(64, 128))
    optimizer = make_optimizer(torch.nn.ParameterList([param]), 1e-2, 0.0, torch.device("cpu"), "adamw8bit")
    target = torch.randn(64, 128)
    before = F.mse_loss(param, target).item()
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(param, target).backward()
        optimizer.step()
    assert F.mse_loss(param, target).item() < before
    exp_avg = optimizer.state[param]["exp_avg"]
    assert tensor_nbytes(exp_avg) < param.numel() * 4 / 3  # 8-bit codes plus block scales, vs fp32


@pytest.mark.slow
def test_qlora_on_a_llama_family_base(
    smollm2_checkpoint: Path, prepared_dir: Path, tmp_path: Path, tiny_run_args
) -> None:
    """QLoRA on the Llama kind of block (sequential residual, grouped-query attention, SwiGLU MLP): the real
    SmolLM2-135M-Instruct in NF4 with double quantization, LoRA on every matrix, trained by the finetune
    loop in its own chat template. The held-out loss falls and the adapter holds LoRA weights only, for
    the attention and for all three MLP matrices."""
    from finetune.train import setup

    out = tmp_path / "qlora-smollm2"
    args = tiny_run_args(
        smollm2_checkpoint, prepared_dir, out, quantize="nf4-dq", global_batch_size=4, max_steps=6,
        learning_rate=2e-3, max_seq_length=96, lora_key=True, lora_projection=True, lora_mlp=True,
        eval_interval=100, save_interval=100, eval_samples=0,
    )  # fmt: skip
    summary = setup(args)  # on one torch thread: tests/finetune/conftest.py's autouse fixture
    assert summary is not None and summary.steps == 6
    assert summary.final_val_loss < summary.first_val_loss - 0.3
    adapter = torch.load(summary.adapter, weights_only=True)
    assert adapter and all("lora_" in k for k in adapter)
    for matrix in ("attn.qkv", "attn.proj", "mlp.fc_1", "mlp.fc_2", "mlp.proj"):
        assert f"transformer.h.0.{matrix}.lora_A" in adapter, matrix
    hparams = (out / "hyperparameters.yaml").read_text()
    assert "quantize: nf4-dq" in hparams and "chat-template" in hparams
