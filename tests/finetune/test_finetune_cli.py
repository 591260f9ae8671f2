"""`python -m finetune`: flags, bad input as one actionable line, warnings, the summary."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from finetune.__main__ import main
from finetune.args import FinetuneArgs, build_parser, parse_args, to_argv
from finetune.metrics import read_rows
from finetune.twin import HPARAMS_FILE


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_defaults_are_the_recipe() -> None:
    args = parse_args([])
    assert (args.lora.lora_r, args.lora.lora_alpha, args.lora.lora_dropout) == (16, 32, 0.05)
    targets = {k for k, v in vars(args.lora).items() if v is True}
    assert targets == {"lora_query", "lora_value"}
    assert args.run.precision == "bf16-true" and args.train.global_batch_size == 128
    assert args.train.weight_decay > 0 and args.train.grad_clip > 0 and args.train.warmup_steps > 0
    assert args == FinetuneArgs()  # the CLI adds no defaults of its own


def test_flags_round_trip_and_have_help(tiny_run_args) -> None:
    args = tiny_run_args(Path("ck"), Path("data"), Path("out"), lora_mlp=True, max_steps=7, compile=True)
    assert parse_args(to_argv(args)) == args
    help_text = " ".join(build_parser().format_help().split())  # unwrapped
    for flag in ("--max-steps", "--epochs", "--devices", "--precision", "--resume", "--no-lora-value"):
        assert flag in help_text
    assert "Most padded tokens in one forward pass" in help_text  # field docstrings are the help


def test_bad_values_are_collected_into_one_line(capsys) -> None:
    code, _, err = run_cli(["--global-batch-size", "0", "--lora-dropout", "1.5", "--no-lora-query"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert "--global-batch-size must be at least 1" in line and "--lora-dropout must be in [0, 1)" in line
    code, _, err = run_cli(["--no-lora-query", "--no-lora-value"], capsys)
    assert "no LoRA target" in one_line_error(err)


def test_missing_checkpoint_says_how_to_get_one(prepared_dir: Path, tmp_path: Path, capsys) -> None:
    argv = ["--data", str(prepared_dir), "--checkpoint-dir", str(tmp_path / "none")]
    argv += ["--out-dir", str(tmp_path)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    line = one_line_error(err)
    assert "make download" in line and "python -m finetune.tiny" in line


@pytest.mark.parametrize("content", [None, ""])
def test_missing_or_empty_data_says_to_run_prepare(
    tiny_checkpoint: Path, tmp_path: Path, capsys, content: str | None
) -> None:
    data = tmp_path / "prepared"
    if content is not None:
        data.mkdir()
        (data / "train.jsonl").write_text(content)
        (data / "val.jsonl").write_text(content)
    argv = ["--data", str(data), "--checkpoint-dir", str(tiny_checkpoint), "--out-dir", str(tmp_path / "o")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "make prepare" in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_existing_run_needs_resume_and_same_settings(
    tiny_adapter: Path, tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, tiny_run_args
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_adapter, out)
    before = (out / HPARAMS_FILE).read_text(), (out / "metrics.csv").read_text()
    args = tiny_run_args(tiny_checkpoint, prepared_dir, out)
    code, _, err = run_cli(to_argv(args), capsys)
    assert code == 2 and "pass --resume" in one_line_error(err)

    args = tiny_run_args(tiny_checkpoint, prepared_dir, out, resume=True, learning_rate=0.5, seed=3)
    code, _, err = run_cli(to_argv(args), capsys)
    line = one_line_error(err)
    assert code == 2 and "settings differ" in line and "learning_rate" in line and "seed" in line
    assert ((out / HPARAMS_FILE).read_text(), (out / "metrics.csv").read_text()) == before  # untouched


def test_cpu_run_truncates_long_records_warns_and_summarises(
    tiny_checkpoint: Path, prepared_dir: Path, tmp_path: Path, capsys, caplog, tiny_run_args
) -> None:
    args = tiny_run_args(tiny_checkpoint, prepared_dir, tmp_path / "o", max_steps=1, max_seq_length=60)
    args.run.precision = "bf16-true"  # the default: a CPU must fall back
    args.run.accelerator = "auto"
    args.eval.eval_samples = 0
    with caplog.at_level(logging.WARNING, logger="finetune"):
        code, out, err = run_cli(to_argv(args), capsys)
    assert code == 0, err
    assert "falling back to 32-true" in caplog.text
    assert "train and" in caplog.text and "records are longer than 60 tokens: truncated" in caplog.text
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"adapter: {tmp_path / 'o' / 'lit_model_lora_finetuned.pth'} | val loss ")
    assert "non-pad tokens/s" in summary and "padding" in summary
    assert yaml.safe_load((tmp_path / "o" / HPARAMS_FILE).read_text())["precision"] == "32-true"
    assert [r["step"] for r in read_rows(tmp_path / "o" / "metrics.csv")] == [0, 1, 1]


def test_help_lists_every_flag_with_its_default(capsys) -> None:
    assert main(["-h"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for group in (FinetuneArgs().run, FinetuneArgs().train, FinetuneArgs().lora, FinetuneArgs().eval):
        for name, value in vars(group).items():
            flag = "--" + name.replace("_", "-")
            assert f"{flag} " in help_text or f"{flag}," in help_text, flag
            shown = "none" if value is None else str(value)
            assert f"default: {shown})" in help_text, (flag, shown)
    assert "--no-lora-value" in help_text and "--max_steps" not in help_text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max-stepz", "3"], "unrecognized arguments: --max-stepz 3"),
        (["--epochs", "two"], "--epochs: 'two' is not an integer"),
        (["--precision", "fp8"], "--precision: expected one of bf16-true"),
        (["--compile=yes"], "--compile"),
    ],
)
def test_bad_flags_and_values_are_one_line_and_exit_2(argv: list[str], expected: str, capsys) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and expected in one_line_error(err)


def test_kebab_and_underscore_flags_parse() -> None:
    argv = ["--max-steps", "7", "--micro_batch_tokens", "512", "--lora-mlp", "--no-lora-value", "--compile"]
    args = parse_args([*argv, "--max-seq-length", "null", "--out-dir=o"])
    assert (args.train.max_steps, args.train.micro_batch_tokens, args.train.compile) == (7, 512, True)
    assert args.lora.lora_mlp and not args.lora.lora_value and args.train.max_seq_length is None
    assert args.run.out_dir == Path("o")
