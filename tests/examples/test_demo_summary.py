"""`make demo` ends with the report's one-table summary, read back from the report it wrote."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from finetune.evaluate import Perplexity
from finetune.forgetting import Forgetting
from finetune.quality import Accuracy, QualityRow, Share
from finetune.report import Findings, ReportArgs, write_report
from finetune.style import style_stats


def row(name: str, share: float, told: float) -> QualityRow:
    return QualityRow(
        name, 12, Share(share, share - 0.1, share, 12), Accuracy(told, told - 0.1, told, 0.1, 5)
    )


def test_the_demo_prints_the_summary_and_where_the_report_is(
    demo: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Figures like an earlier demo twin's: attribution and discrimination met, forgetting missed."""
    replies = {"real": ["ок))"], "twin": ["да"], "base": ["Hello."], "prompted base": ["ок"]}
    quality = [row("real", 1.0, 0.5), row("twin", 1.0, 0.17), row("base", 0.0, 0.96)]
    quality.append(row("prompted base", 0.92, 0.71))
    forgetting = Forgetting(Perplexity(2.9096, 900), Perplexity(3.1190, 900), [])  # 18.35 → 22.62
    f = Findings(
        Perplexity(5.41, 300), Perplexity(2.35, 300), {w: style_stats(r) for w, r in replies.items()},
        [], [], 22, 175.0, quality, "", forgetting,
    )  # fmt: skip
    paths = demo.Paths.under(tmp_path / "data", tmp_path / "base", tmp_path / "out")
    write_report(ReportArgs(data=paths.prepared, out=paths.report), f)
    demo.show_summary(paths.report)
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("metric "))
    assert header.split()[:6] == ["metric", "real", "twin", "base", "prompted", "base"]
    table = {line.split("  ")[0]: line for line in lines[lines.index(header) + 2 :][:4]}
    assert table["held-out perplexity"].split()[-1] == "met"
    assert table["attribution share"].split()[-1] == "met"
    assert table["discriminator accuracy"].split()[-1] == "met"
    assert table["general-text perplexity"].split()[-1] == "MISSED"
    assert "  MISSED: base 18.35 → twin 22.62 (+23.3%)" in out
    assert "  met: twin 17% ≤ 65%; below base 96%; below prompted base 71%" in out
    assert f"The full report: {paths.report / 'report.md'}" in out
    assert f"and: {paths.report / 'report.html'}" in out
    assert all(len(line) <= 120 for line in lines[lines.index(header) : lines.index(header) + 6])
