"""Broken inputs to the finetune CLIs: one actionable `error:` line, exit 2, nothing half-written.

A base checkpoint that is cut short or does not fit its config, an out-dir that cannot be made, a full
disk, a finished run or a broken resumable checkpoint in the out-dir: each is refused before training.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from finetune import export, report, tiny
from finetune.__main__ import main
from finetune.args import to_argv
from finetune.errors import UserError, write_errors
from finetune.state import list_checkpoints
from finetune.twin import ADAPTER_FILE, HPARAMS_FILE, METRICS_FILE


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def retype_config(folder: Path, **changes: object) -> None:
    config = folder / "model_config.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | changes))


BROKEN_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated weights": (lambda d: truncate(d / "lit_model.pth"), "truncated or not a torch checkpoint"),
    "empty weights": (
        lambda d: (d / "lit_model.pth").write_bytes(b""),
        "truncated or not a torch checkpoint",
    ),
    "a list, not weights": (lambda d: torch.save([1, 2], d / "lit_model.pth"), "is not a litgpt state dict"),
    "weights of another model": (
        lambda d: torch.save({"w": torch.zeros(2)}, d / "lit_model.pth"),
        "tensors are missing (e.g. lm_head.weight)",
    ),
    "config with more layers": (lambda d: retype_config(d, n_layer=3), "tensors are missing"),
    "config of another width": (
        lambda d: retype_config(d, n_embd=128, head_size=32),
        "have another shape",
    ),
    "config not a mapping": (
        lambda d: (d / "model_config.yaml").write_text("[1, 2]\n"),
        "is not a litgpt model config",
    ),
    "corrupt tokenizer.json": (lambda d: (d / "tokenizer.json").write_text("{"), "cannot read the tokenizer"),
    "corrupt generation_config.json": (
        lambda d: (d / "generation_config.json").write_text("["),
        "cannot read the tokenizer",
    ),
}


@pytest.mark.parametrize("problem", list(BROKEN_CHECKPOINTS))
def test_broken_base_checkpoint_is_refused_before_training(
    problem: str, tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, tiny_run_args
) -> None:
    broken = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, broken)
    breaks, expected = BROKEN_CHECKPOINTS[problem]
    breaks(broken)
    out = tmp_path / "out"
    assert main(to_argv(tiny_run_args(broken, prepared_dir, out))) == 2
    line = one_line_error(capsys)
    assert expected in line and str(broken) in line, line
    assert not out.exists()  # refused before anything was written


def test_export_and_report_refuse_a_truncated_base(
    tiny_checkpoint: Path, tiny_adapter: Path, prepared_dir: Path, tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, broken)
    truncate(broken / "lit_model.pth")
    argv = ["--checkpoint-dir", str(broken), "--lora-path", str(tiny_adapter)]
    assert export.main([*argv, "--out", str(tmp_path / "hf")]) == 2
    assert "truncated or not a torch checkpoint" in one_line_error(capsys)
    assert (
        report.main([*argv, "--data", str(prepared_dir), "--out", str(tmp_path / "r"), "--samples", "1"]) == 2
    )
    assert "truncated or not a torch checkpoint" in one_line_error(capsys)
    # a truncated adapter, too
    adapter = tmp_path / "run"
    shutil.copytree(tiny_adapter, adapter)
    truncate(adapter / ADAPTER_FILE)
    argv = [
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--lora-path",
        str(adapter),
        "--out",
        str(tmp_path / "hf"),
    ]
    assert export.main(argv) == 2
    assert "cannot read the adapter" in one_line_error(capsys)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_output_folder_that_cannot_be_made(
    where: str,
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys,
    tiny_run_args,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = blocker if where == "a file" else blocker / "sub"
    assert main(to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, out))) == 2
    assert "--out-dir" in one_line_error(capsys)
    lora = ["--checkpoint-dir", str(tiny_checkpoint), "--lora-path", str(tiny_adapter), "--out", str(out)]
    assert export.main(lora) == 2
    assert "--out" in one_line_error(capsys)
    assert report.main([*lora, "--data", str(prepared_dir)]) == 2
    assert "--out" in one_line_error(capsys)
    assert tiny.main(["--data", str(prepared_dir), "--out", str(out), "--pretrain-steps", "0"]) == 2
    assert "--out" in one_line_error(capsys)
    assert blocker.read_text() == "keep me"


def test_data_path_that_is_a_file_or_a_folder_of_the_wrong_kind(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, tiny_run_args
) -> None:
    args = tiny_run_args(tiny_checkpoint, prepared_dir / "train.jsonl", tmp_path / "o")
    assert main(to_argv(args)) == 2
    assert f"pass the folder that holds train.jsonl and val.jsonl (here: {prepared_dir})" in one_line_error(
        capsys
    )
    data = tmp_path / "data"
    (data / "train.jsonl").mkdir(parents=True)
    shutil.copy(prepared_dir / "val.jsonl", data)
    assert main(to_argv(tiny_run_args(tiny_checkpoint, data, tmp_path / "o"))) == 2
    assert "train.jsonl is a folder" in one_line_error(capsys)


def test_finished_run_is_not_overwritten_without_resume(
    tiny_adapter: Path, tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, tiny_run_args
) -> None:
    out = tmp_path / "done"
    shutil.copytree(tiny_adapter, out)
    shutil.rmtree(out / "checkpoints")  # a short run: fewer steps than --save-interval leave none
    before = {name: (out / name).read_bytes() for name in (ADAPTER_FILE, HPARAMS_FILE, METRICS_FILE)}
    assert main(to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, out))) == 2
    line = one_line_error(capsys)
    assert "pass --resume" in line and ADAPTER_FILE in line
    assert {name: (out / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_resume_from_a_broken_checkpoint_says_which_file_to_delete(
    damage: str,
    tiny_adapter: Path,
    tiny_checkpoint: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys,
    tiny_run_args,
) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_adapter, out)
    *older, newest = list_checkpoints(out)
    if damage == "truncated":  # a copy or a disk that stopped part-way
        truncate(newest)
    else:
        torch.save({"weights": torch.zeros(2)}, newest)
    before = (out / METRICS_FILE).read_bytes()
    assert main([*to_argv(tiny_run_args(tiny_checkpoint, prepared_dir, out)), "--resume"]) == 2
    line = one_line_error(capsys)
    assert f"cannot resume from {newest}" in line and f"delete it to resume from {older[-1].name}" in line
    assert (out / METRICS_FILE).read_bytes() == before


def test_flags_that_cannot_work_here(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys
) -> None:
    assert main(["--lora-alpha", "-4"]) == 2
    assert "--lora-alpha must be at least 1" in one_line_error(capsys)
    cores = os.cpu_count() or 1
    argv = ["--data", str(prepared_dir), "--checkpoint-dir", str(tiny_checkpoint), "--out-dir", str(tmp_path)]
    argv += ["--accelerator", "cpu", "--devices", str(cores + 1), "--global-batch-size", str(cores + 1)]
    assert main(argv) == 2  # not cores + 1 processes started on a machine that has `cores`
    assert f"use --devices {cores} or fewer" in one_line_error(capsys)


def test_a_full_disk_is_one_line_naming_the_file(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, tiny_run_args, monkeypatch
) -> None:
    def full(out_dir: Path, hparams: dict) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / HPARAMS_FILE))

    monkeypatch.setattr("finetune.train.save_hyperparameters", full)
    args = tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "o", max_steps=1)
    assert main(to_argv(args)) == 2
    line = one_line_error(capsys)
    assert f"cannot write {tmp_path / 'o' / HPARAMS_FILE}: No space left on device" in line
    with pytest.raises(OSError), write_errors("--out"):  # not a disk problem: a bug, kept as it is
        raise OSError(errno.EBADF, "bad file descriptor")
    with pytest.raises(UserError, match="read-only"), write_errors("--out"):
        raise OSError(errno.EROFS, "read-only file system")
