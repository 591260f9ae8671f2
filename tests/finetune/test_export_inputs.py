"""`python -m finetune.export` on what users really hand it: a run still training or killed, another
base's adapter, an --out that exists (with other files, with an earlier export), a full disk, a stopped
export, odd --base-model names. Each is one `error:` line and exit 2, or a whole export: never a folder
mixed from two exports or half written under its final name."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from finetune import export
from finetune.twin import ADAPTER_FILE, CHECKPOINTS_DIR, HPARAMS_FILE

REPO = Path(__file__).resolve().parents[2]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def argv(checkpoint: Path, lora: Path, out: Path, *more: str) -> list[str]:
    return ["--checkpoint-dir", str(checkpoint), "--lora-path", str(lora), "--out", str(out), *more]


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Hidden partial or moved-aside folders beside an output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_out_folder_of_other_files_is_refused_untouched(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text("mine")
    (notes / "todo.txt").write_text("keep")
    assert export.main(argv(tiny_checkpoint, tiny_adapter, notes)) == 2
    line = one_line_error(capsys)
    assert f"--out {notes} already holds files that are not an earlier export (todo.txt" in line
    assert contents(notes) == {"config.json": b"mine", "todo.txt": b"keep"}

    run = shutil.copytree(tiny_adapter, tmp_path / "run")  # the adapter's own out-dir
    before = contents(run)
    assert export.main(argv(tiny_checkpoint, run, run)) == 2
    assert "not an earlier export" in one_line_error(capsys)
    assert contents(run) == before

    empty = tmp_path / "empty"  # an empty folder made for it is fine
    empty.mkdir()
    assert export.main(argv(tiny_checkpoint, tiny_adapter, empty)) == 0
    assert (empty / "model.safetensors").is_file()
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700


def test_exporting_again_replaces_the_same_export_and_another_only_with_overwrite(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hf"
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 0
    first = contents(out)
    capsys.readouterr()
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 0  # the same twin again: idempotent
    assert "replacing the earlier export" in capsys.readouterr().out
    assert contents(out) == first

    # a PEFT adapter into the merged model's folder would leave a folder that is neither
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out, "--format", "peft")) == 2
    line = one_line_error(capsys)
    assert "already holds an export of another twin or format" in line and "--overwrite" in line
    assert contents(out) == first

    assert export.main(argv(tiny_checkpoint, tiny_adapter, out, "--format", "peft", "--overwrite")) == 0
    names = set(contents(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "base/model.safetensors"} <= names
    assert "model.safetensors" not in names and "config.json" not in names  # nothing of the merged one
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        (out / "base").resolve()
    )  # the base's final place, not the temp folder it was written in
    assert leftovers(tmp_path) == []

    (out / "README.md").write_text("my notes")  # a file export never writes is never deleted with it
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out, "--format", "peft", "--overwrite")) == 2
    assert "README.md, which the export does not write" in one_line_error(capsys)


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over an earlier export"])
def test_a_stopped_export_leaves_nothing_half_written(
    earlier: bool,
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "hf"
    if earlier:
        assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 0
    before = contents(out) if earlier else None
    import finetune.hf_export as hf_export

    write_weights = hf_export.save_sharded

    def write_then_stop(*args: object, **kwargs: object) -> list[Path]:
        write_weights(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # Ctrl-C after the weights, before the rest

    monkeypatch.setattr(hf_export, "save_sharded", write_then_stop)
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out, "--dtype", "bfloat16", "--overwrite")) == 130
    if earlier:
        assert contents(out) == before  # the earlier export as it was, not half float32, half bfloat16
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []


def test_what_a_killed_export_left_is_cleaned_up_by_the_next(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 0
    pid = dead_pid()
    partial = tmp_path / f".hf.partial-{pid}"  # killed while writing
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    out.rename(tmp_path / f".hf.previous-{pid}")  # killed between moving the earlier export aside and ...
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 0
    assert (out / "model.safetensors").stat().st_size > 4 and leftovers(tmp_path) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the weights' writer (safetensors, in Rust) meets a file-size limit: a disk that fills up mid-write
    out = tmp_path / "hf"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    code = "import sys; from finetune.export import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *argv(tiny_checkpoint, tiny_adapter, out)],
        preexec_fn=small_files,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines == [
        f"error: cannot write {out / 'model.safetensors'}: {os.strerror(errno.EFBIG)}; free some space or "
        "choose another --out"
    ]
    assert not out.exists() and leftovers(tmp_path) == []

    # a disk that cannot hold the export is refused before the minutes of merging
    nearly_full = SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    assert export.main(argv(tiny_checkpoint, tiny_adapter, out)) == 2
    line = one_line_error(capsys)
    assert "the export needs about 0.6 MiB" in line and "free some space" in line
    assert not out.exists()


def test_an_adapter_that_is_not_finished_or_not_an_adapter(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hf"
    running = shutil.copytree(tiny_adapter, tmp_path / "running")  # still training: no adapter yet
    (running / ADAPTER_FILE).rename(running / f".{ADAPTER_FILE}.tmp")  # (or killed while writing it)
    assert export.main(argv(tiny_checkpoint, running, out)) == 2
    newest = sorted((running / CHECKPOINTS_DIR).iterdir())[-1]
    line = one_line_error(capsys)
    assert "has not finished" in line and "--resume" in line and f"--lora-path {newest}" in line
    assert export.main(argv(tiny_checkpoint, newest, out)) == 0  # the twin as it stands, from the checkpoint
    assert (out / "model.safetensors").is_file()

    started = tmp_path / "started"  # only its settings so far
    started.mkdir()
    shutil.copy(tiny_adapter / HPARAMS_FILE, started)
    assert export.main(argv(tiny_checkpoint, started, tmp_path / "x")) == 2
    assert "has not finished and saved nothing yet" in one_line_error(capsys)

    assert export.main(argv(tiny_checkpoint, tiny_checkpoint, tmp_path / "x")) == 2
    assert f"{tiny_checkpoint} is a base checkpoint, not a LoRA adapter" in one_line_error(capsys)
    assert export.main(argv(tiny_checkpoint, out, tmp_path / "x")) == 2
    assert "is a Hugging Face model or PEFT folder (an export?)" in one_line_error(capsys)

    cut = shutil.copytree(tiny_adapter, tmp_path / "cut")  # a copy that stopped part-way
    (cut / HPARAMS_FILE).write_text("")
    assert export.main(argv(tiny_checkpoint, cut, tmp_path / "x")) == 2
    assert f"{cut / HPARAMS_FILE} is empty or cut short" in one_line_error(capsys)

    diverged = shutil.copytree(tiny_adapter, tmp_path / "diverged")  # a run whose loss went to NaN
    tensors = torch.load(diverged / ADAPTER_FILE, weights_only=True)
    torch.save({k: v * float("nan") for k, v in tensors.items()}, diverged / ADAPTER_FILE)
    assert export.main(argv(tiny_checkpoint, diverged, tmp_path / "x")) == 2
    assert "holds NaN or infinite values" in one_line_error(capsys)

    other = shutil.copytree(tiny_checkpoint, tmp_path / "other-base")  # another base: both named
    config = yaml.safe_load((other / "model_config.yaml").read_text())
    (other / "model_config.yaml").write_text(yaml.safe_dump(config | {"name": "other-falcon"}))
    assert export.main(argv(other, tiny_adapter, tmp_path / "x")) == 2
    line = one_line_error(capsys)
    assert "'tiny-falcon'" in line and "'other-falcon'" in line
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_base_model_names_an_adapter_can_be_loaded_with(
    tiny_checkpoint: Path, tiny_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peft = ["--format", "peft", "--base-model"]
    for name, why in [
        ("my base model", "neither a folder nor a Hugging Face repo id"),
        ("", "neither a folder nor a Hugging Face repo id"),
        ("../elsewhere", "neither a folder nor a Hugging Face repo id"),
        (str(tiny_checkpoint), "a litgpt checkpoint: leave --base-model out"),
    ]:
        assert export.main(argv(tiny_checkpoint, tiny_adapter, tmp_path / "a", *peft, name)) == 2
        assert why in one_line_error(capsys), name
    hf_base = tmp_path / "hf-base"  # a transformers folder given relative to here is recorded absolute
    assert export.main(argv(tiny_checkpoint, tiny_adapter, hf_base)) == 0
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert export.main(argv(tiny_checkpoint, tiny_adapter, tmp_path / "a", *peft, "hf-base")) == 0
    finally:
        os.chdir(cwd)
    recorded = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(hf_base.resolve())
    assert export.main(argv(tiny_checkpoint, tiny_adapter, tmp_path / "b", *peft, "tiiuae/falcon-7b")) == 0
