"""`python -m finetune.report` on what users really have: a val.jsonl of one or two records, replies all
alike, in Arabic, Chinese or only emoji, hostile chat text, a run's metrics.csv cut mid-row, a diverged
adapter, an --out that exists, a full disk. Each gives a report whose verdicts mean what they say, or one
`error:` line and exit 2; never a traceback, a page that loads or runs anything, or a half-written report.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from finetune import report
from finetune.quality import Accuracy, QualityRow, Share
from finetune.summary import NOT_MEASURED, build_summary
from finetune.twin import ADAPTER_FILE, METRICS_FILE
from prepare.records import Record

FAST = ["--max-new-tokens", "4", "--no-forgetting", "--prompted-examples", "0", "--memory-k", "0"]
FAST += ["--feedback", "none"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def data_with(val: list[Record], prepared_dir: Path, folder: Path) -> Path:
    """A prepared folder: the corpus' train split and `val` as val.jsonl."""
    folder.mkdir()
    shutil.copy(prepared_dir / "train.jsonl", folder / "train.jsonl")
    lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in val)
    (folder / "val.jsonl").write_text(lines, encoding="utf-8")
    return folder


def run_report(checkpoint: Path, lora: Path, data: Path, out: Path, *more: str) -> int:
    argv = ["--checkpoint-dir", str(checkpoint), "--lora-path", str(lora), "--data", str(data)]
    return report.main([*argv, "--out", str(out), *FAST, *more])


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


@pytest.mark.parametrize("n", [1, 2])
def test_a_val_set_of_one_or_two_records(
    n: int, tiny_checkpoint: Path, tiny_adapter: Path, prepared_dir: Path, chat_records, tmp_path: Path
) -> None:
    data = data_with(chat_records["val"][:n], prepared_dir, tmp_path / "data")
    out = tmp_path / "report"
    assert run_report(tiny_checkpoint, tiny_adapter, data, out, "--samples", "12") == 0
    found = json.loads((out / "report.json").read_text(encoding="utf-8"))
    # the classifiers need 4 prompts: the fix is more held-out records, not --samples (12 were asked)
    assert found["quality"]["note"].startswith(f"only {n} held-out record")
    assert "--val-fraction" in found["quality"]["note"] and "--samples" not in found["quality"]["note"]
    by = {r["metric"]: r for r in found["summary"]["rows"]}
    assert by["attribution share"]["status"] == NOT_MEASURED
    assert by["held-out perplexity"]["status"] in ("met", "missed")
    page = (out / "report.html").read_text(encoding="utf-8")
    for png in ("perplexity.png", "style.png", "lengths.png", "loss.png"):  # plots of one or two points
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert page.count("src='data:image/png;base64,") == 4


def test_non_latin_identical_and_hostile_replies(
    tiny_checkpoint: Path, tiny_adapter: Path, prepared_dir: Path, chat_records, tmp_path: Path
) -> None:
    replies = [
        "مرحبا! أنا بخير، شكرا",  # Arabic, right to left
        "我很好，谢谢！明天见",
        "😂😂",
        "👍",
        "<script>alert(1)</script>",
        "\\[click\\](https://evil.example/a) \\![x\\](https://evil.example/p.png)",
        "![x](https://evil.example/q.png) <img src=https://evil.example/r.png>",
        "ok",
        "ok",
        "x" * 3000,  # a paste without a space
    ]
    val = [replace(r, response=text) for r, text in zip(chat_records["val"], replies, strict=False)]
    val[0] = replace(val[0], partner="أحمد", instruction="كيف حالك؟")
    data = data_with(val, prepared_dir, tmp_path / "data")
    out = tmp_path / "report"
    assert run_report(tiny_checkpoint, tiny_adapter, data, out, "--samples", "10") == 0

    page = (out / "report.html").read_text(encoding="utf-8")
    tags = tags_of(page)
    assert not {"script", "a", "iframe", "link", "object", "embed"} & {t for t, _ in tags}
    for tag, attrs in tags:
        assert all(not (v or "").startswith(("http", "//")) for v in attrs.values()), (tag, attrs)
        if tag == "img":
            assert (attrs["src"] or "").startswith("data:image/png;base64,")
    # chat text in its own direction: an Arabic reply reads right to left inside a left-to-right page
    assert "<bdi dir='auto'>مرحبا! أنا بخير، شكرا</bdi>" in page and "<bdi dir='auto'>أحمد</bdi>" in page
    assert "overflow-wrap: anywhere" in page  # a 3,000-character word wraps instead of widening the page

    markdown_it = pytest.importorskip("markdown_it")
    rendered = (
        markdown_it.MarkdownIt("commonmark")
        .enable("table")
        .render((out / "report.md").read_text(encoding="utf-8"))
    )
    rendered_tags = tags_of(rendered)
    assert [a.get("src") for t, a in rendered_tags if t == "img"] == [
        "perplexity.png", "style.png", "lengths.png", "quality.png", "loss.png",
    ]  # fmt: skip
    assert not {"script", "a"} & {t for t, _ in rendered_tags}  # no link a reader could be sent to either


def test_an_out_folder_is_replaced_only_when_it_holds_an_earlier_report(
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    chat_records,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = shutil.copytree(tiny_adapter, tmp_path / "run")  # --out the adapter's own folder
    loss_png = (run / "loss.png").read_bytes()
    assert run_report(tiny_checkpoint, run, prepared_dir, run, "--samples", "2") == 2
    assert "already holds files that are not an earlier report" in one_line_error(capsys)
    assert (run / "loss.png").read_bytes() == loss_png  # training's own plot, not the report's

    out = tmp_path / "report"
    assert run_report(tiny_checkpoint, tiny_adapter, prepared_dir, out, "--samples", "4") == 0
    assert (out / "quality.png").is_file()
    one = data_with(chat_records["val"][:1], prepared_dir, tmp_path / "one")
    assert run_report(tiny_checkpoint, tiny_adapter, one, out, "--samples", "4") == 0
    assert not (out / "quality.png").exists()  # no stale plot of the earlier report beside the new one
    assert json.loads((out / "report.json").read_text())["perplexity"]["val_records"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    (out / "my notes.txt").write_text("keep")
    assert run_report(tiny_checkpoint, tiny_adapter, one, out, "--samples", "4") == 2
    assert "my notes.txt, which the report does not write" in one_line_error(capsys)


def test_a_metrics_csv_cut_mid_row_and_a_diverged_adapter(
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cut = shutil.copytree(tiny_adapter, tmp_path / "cut")  # a run killed while appending a row
    with open(cut / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write("16,1.06667,5.4e")
    out = tmp_path / "report"
    assert run_report(tiny_checkpoint, cut, prepared_dir, out, "--samples", "2") == 0
    assert "1 row(s) cannot be read" in caplog.text
    assert "Validation loss" in (out / "report.md").read_text(encoding="utf-8")

    diverged = shutil.copytree(tiny_adapter, tmp_path / "diverged")
    tensors = torch.load(diverged / ADAPTER_FILE, weights_only=True)
    torch.save({k: v * float("nan") for k, v in tensors.items()}, diverged / ADAPTER_FILE)
    with open(diverged / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write("16,1.06667,,nan,,,,\n")
    assert run_report(tiny_checkpoint, diverged, prepared_dir, tmp_path / "r2", "--samples", "2") == 2
    line = one_line_error(capsys)
    assert "holds NaN or infinite values" in line and "--learning-rate" in line
    assert report.loss_sentence([{"val_loss": 6.7}, {"val_loss": float("nan")}]) == [
        "Validation loss 6.700 before the first step → nan at the end (not a number: the run diverged).",
        "",
    ]
    assert report.loss_sentence([{"val_loss": 6.7}]) == ["Validation loss 6.700 (validated once).", ""]


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over an earlier report"])
def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_nothing_half_written(
    earlier: bool,
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "report"
    if earlier:
        assert run_report(tiny_checkpoint, tiny_adapter, prepared_dir, out, "--samples", "2") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()} if earlier else {}
    import finetune.report_plots as plots

    save = plots.save_figure
    calls = []

    def fills_up(fig: object, path: Path, dpi: int = 100) -> None:
        calls.append(path)
        if len(calls) > 1:  # the second plot: a write(2) that fails names no file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", fills_up)
    assert run_report(tiny_checkpoint, tiny_adapter, prepared_dir, out, "--samples", "2") == 2
    assert one_line_error(capsys) == (
        f"error: cannot write {out}: No space left on device; free some space or choose another --out"
    )
    if earlier:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_classifier_that_does_not_recognise_the_real_replies_judges_nothing() -> None:
    """Long pastes or replies unlike the train split: real 0% attributed would make any twin "meet" a
    goal of 80% of 0%."""

    def row(name: str, share: float) -> dict:
        from dataclasses import asdict

        quality = QualityRow(name, 6, Share(share, 0.0, share, 6), Accuracy(0.5, 0.4, 0.6, 0.0, 3))
        return asdict(quality)

    found = {"quality": {"rows": [row("real", 0.0), row("twin", 0.5), row("base", 0.0)], "note": ""}}
    attribution = next(r for r in build_summary(found).rows if r.metric == "attribution share")
    assert attribution.status == NOT_MEASURED
    assert "none of the person's own held-out replies" in attribution.verdict
