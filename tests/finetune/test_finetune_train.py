"""The training loop on the tiny checkpoint: learning, outputs, kill-and-resume, DDP on CPU."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from litgpt.lora import GPT, Config, merge_lora_weights
from litgpt.scripts.merge_lora import merge_lora

from finetune.args import to_argv
from finetune.metrics import COLUMNS, read_rows
from finetune.state import list_checkpoints
from finetune.train import setup
from finetune.twin import ADAPTER_FILE, HPARAMS_FILE

REPO = Path(__file__).resolve().parents[2]
MERGE_LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_query", "lora_key", "lora_value")
MERGE_LORA_KEYS += ("lora_projection", "lora_mlp", "lora_head")
MERGE_LORA_KEYS += ("checkpoint_dir", "precision", "max_seq_length")


def cli_env() -> dict[str, str]:
    """A subprocess that imports this checkout and runs torch on one thread (see tests/conftest.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    return env


def val_curve(out: Path) -> list[tuple[int, float]]:
    rows = read_rows(out / "metrics.csv")
    return [(int(r["step"]), r["val_loss"]) for r in rows if r["val_loss"] is not None]


def lora_model(checkpoint: Path, hparams: dict) -> GPT:
    lora = {k: v for k, v in hparams.items() if k.startswith("lora_")}
    model = GPT(Config.from_file(checkpoint / "model_config.yaml", **lora))
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True), strict=False)
    return model


def test_training_lowers_val_loss_clearly(tiny_adapter: Path) -> None:
    curve = val_curve(tiny_adapter)
    assert [step for step, _ in curve] == [0, 5, 10, 15]  # before the first step, every 5, at the end
    first, last = curve[0][1], curve[-1][1]
    assert last < 0.85 * first, curve
    train = [r["train_loss"] for r in read_rows(tiny_adapter / "metrics.csv") if r["train_loss"] is not None]
    assert len(train) == 15 and sum(train[-3:]) / 3 < 0.85 * sum(train[:3]) / 3


def test_adapter_holds_only_lora_tensors(tiny_adapter: Path, tiny_checkpoint: Path) -> None:
    adapter = torch.load(tiny_adapter / ADAPTER_FILE, weights_only=True)
    hparams = yaml.safe_load((tiny_adapter / HPARAMS_FILE).read_text())
    model = lora_model(tiny_checkpoint, hparams)
    lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert set(adapter) == set(lora_params)  # litgpt names, e.g. transformer.h.0.attn.qkv.lora_A
    assert all(adapter[n].shape == p.shape for n, p in lora_params.items())
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    assert not unexpected and not any("lora_" in k for k in missing)
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if n.endswith("lora_B"))  # it trained
    base_size = (tiny_checkpoint / "lit_model.pth").stat().st_size
    assert (tiny_adapter / ADAPTER_FILE).stat().st_size < base_size / 4


def test_litgpt_merge_lora_reads_the_out_dir(
    tiny_adapter: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    hparams = yaml.safe_load((tiny_adapter / HPARAMS_FILE).read_text())
    assert all(k in hparams for k in MERGE_LORA_KEYS)
    assert Path(hparams["checkpoint_dir"]) == tiny_checkpoint and hparams["precision"] == "32-true"
    # lay the out-dir out the way litgpt's merge_lora expects a LoRA finetune folder
    folder = tmp_path / "merge"
    folder.mkdir()
    shutil.copy(tiny_adapter / ADAPTER_FILE, folder / "lit_model.pth.lora")
    shutil.copy(tiny_adapter / HPARAMS_FILE, folder / HPARAMS_FILE)
    for name in ("model_config.yaml", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    merge_lora(folder, pretrained_checkpoint_dir=tiny_checkpoint)

    model = lora_model(tiny_checkpoint, hparams).eval()
    model.load_state_dict(torch.load(tiny_adapter / ADAPTER_FILE, weights_only=True), strict=False)
    merged = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml")).eval()
    merged.load_state_dict(torch.load(folder / "lit_model.pth", weights_only=True))
    x = torch.randint(0, 500, (2, 30))
    with torch.no_grad():
        expected = model(x)
        merge_lora_weights(model)
        assert torch.allclose(merged(x), expected, atol=1e-4)


def test_outputs_metrics_and_plot(tiny_adapter: Path) -> None:
    names = {p.name for p in tiny_adapter.iterdir()}
    assert {ADAPTER_FILE, HPARAMS_FILE, "metrics.csv", "loss.png", "checkpoints"} <= names
    header = (tiny_adapter / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == list(COLUMNS)
    rows = [r for r in read_rows(tiny_adapter / "metrics.csv") if r["train_loss"] is not None]
    for row in rows:
        assert row["lr"] > 0 and row["peak_memory_gib"] > 0
        assert 0 < row["nonpad_tokens_per_s"] <= row["tokens_per_s"]
    assert (tiny_adapter / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in list_checkpoints(tiny_adapter)] == ["step-000005.pth", "step-000010.pth"]
    for path in [tiny_adapter, *tiny_adapter.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_kill_and_resume_gives_the_same_curve(
    tiny_adapter: Path, tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, caplog, tiny_run_args
) -> None:
    out = tmp_path / "killed"
    argv = to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, out))
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune", *argv],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 300
    while not list_checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, like a crashed node
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not (out / ADAPTER_FILE).exists()
    killed_at = int(list_checkpoints(out)[-1].name[5:11])
    assert killed_at < 15

    with caplog.at_level(logging.INFO, logger="finetune"):
        summary = setup(tiny_run_args(tiny_checkpoint, prepared_dir, out, resume=True))
    assert summary is not None
    checkpoint = out / "checkpoints" / f"step-{killed_at:06d}.pth"
    assert f"resumed from {checkpoint} (step {killed_at} of 15)" in caplog.text

    resumed, uninterrupted = read_rows(out / "metrics.csv"), read_rows(tiny_adapter / "metrics.csv")
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    adapter_a = torch.load(out / ADAPTER_FILE, weights_only=True)
    adapter_b = torch.load(tiny_adapter / ADAPTER_FILE, weights_only=True)
    assert all(torch.allclose(adapter_a[k], adapter_b[k], atol=1e-6) for k in adapter_b)


def test_two_process_ddp_on_cpu_matches_one_process(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, tiny_run_args
) -> None:
    # no dropout: then a step's gradient is the same however its 32 sequences are split over ranks
    settings = dict(max_steps=2, lora_dropout=0.0, eval_samples=1, eval_interval=100, save_interval=100)
    single = setup(tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "one", **settings))
    assert single is not None

    argv = to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "two", devices=2, **settings))
    done = subprocess.run(
        [sys.executable, "-m", "finetune", *argv], env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "adapter:" in done.stdout
    assert done.stderr.count("sample | ") == 2  # sample replies at steps 0 and 2, logged by rank 0 only
    one, two = read_rows(tmp_path / "one" / "metrics.csv"), read_rows(tmp_path / "two" / "metrics.csv")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 2]
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_loss"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    # the second step's loss depends on the first update: the all-reduced gradient was the same
    adapter_one = torch.load(tmp_path / "one" / ADAPTER_FILE, weights_only=True)
    adapter_two = torch.load(tmp_path / "two" / ADAPTER_FILE, weights_only=True)
    assert all(torch.allclose(adapter_one[k], adapter_two[k], atol=1e-5) for k in adapter_one)


def test_compiled_checkpointed_blocks_give_the_eager_loss_and_gradients(tiny_checkpoint: Path) -> None:
    """--compile --activation-checkpointing: the block compiles inside the checkpoint (compiling through
    it crashed Inductor's partitioner on torch 2.11). The backend here runs AOTAutograd's decompositions
    and min-cut partitioner, what Inductor runs before code generation, in a fraction of its CPU time."""
    from finetune.model import (
        CheckpointedBlock,
        compile_blocks,
        compiled_block_forward,
        enable_activation_checkpointing,
        prepare_lora_layers,
    )

    def model_and_grads(checkpointed_and_compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        lora = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_query=True, lora_value=True, lora_mlp=True)
        model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml", **lora))
        model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True), strict=False)
        for name, p in model.named_parameters():
            p.requires_grad = "lora_" in name
            if name.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.05)
        prepare_lora_layers(model)
        if checkpointed_and_compiled:
            enable_activation_checkpointing(model)
            compile_blocks(model, backend="aot_eager_decomp_partition")
            assert all(isinstance(b, CheckpointedBlock) for b in model.transformer.h)
        x = torch.randint(0, 500, (3, 40), generator=torch.Generator().manual_seed(1))
        loss = model(x).logsumexp(-1).mean()
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    compiled_block_forward.cache_clear()  # other tests compile blocks with other backends
    loss_eager, grads_eager = model_and_grads(False)
    loss_ac, grads_ac = model_and_grads(True)
    assert compiled_block_forward.cache_info().currsize == 1  # one compiled function for every block
    assert loss_ac == pytest.approx(loss_eager, rel=1e-5)
    assert set(grads_ac) == set(grads_eager) and grads_eager
    for name, grad in grads_eager.items():
        torch.testing.assert_close(grads_ac[name], grad, rtol=1e-4, atol=1e-6, msg=name)
