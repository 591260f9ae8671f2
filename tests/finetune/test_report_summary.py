"""The report's one-table summary and report.html, on constructed findings whose verdicts are known."""

from __future__ import annotations

import base64
import json
import random
import stat
from dataclasses import asdict, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from finetune.evaluate import Perplexity
from finetune.forgetting import Forgetting
from finetune.quality import Accuracy, QualityRow, Share
from finetune.report import (
    Findings,
    ReportArgs,
    findings_json,
    measure_quality,
    render_markdown,
    write_report,
)
from finetune.report_html import HTML_FILE, render_html
from finetune.style import style_stats
from finetune.summary import MEMORY, MET, MISSED, NOT_MEASURED, REPORTED, Summary, build_summary, to_text
from prepare.records import Record

HOSTILE = "<script>alert('x')</script> \"><img src=x onerror=alert(1)> ![t](https://evil.example/t.png)"


def record(instruction: str, response: str) -> Record:
    return Record(instruction, "", response, 1, "2024-01-01T00:00:00+00:00", "Anna")


def person(rng: random.Random) -> str:
    return " ".join(rng.choice("ну да щас го ок лол мб кек норм".split()) for _ in range(2)) + "))"


def partner(rng: random.Random) -> str:
    return "Добрый день, " + " ".join(rng.choice("отчёт проект среда сроки".split()) for _ in range(4)) + "."


def findings(
    replies: dict[str, list[str]], twin_nll: float = 1.0, forgetting: Forgetting | None = None
) -> Findings:
    """Findings of `replies` (the quality rows really measured), base NLL 2.0, the twin's `twin_nll`."""
    rng = random.Random(0)
    train = [record(partner(rng), person(rng)) for _ in range(150)]
    rows, note = measure_quality(train, replies, seed=1)
    n = len(replies["real"])
    samples = [
        {
            "partner": "Anna",
            "context": "",
            "message": "как дела?",
            **{who: r[i] for who, r in replies.items()},
        }
        for i in range(n)
    ]
    style = {who: style_stats(r) for who, r in replies.items()}
    return Findings(
        Perplexity(2.0, 50), Perplexity(twin_nll, 50), style, samples, [], n, 1.0, rows, note, forgetting
    )


@pytest.fixture(scope="module")
def copied() -> Findings:
    """A "twin" that answers every prompt with the person's real reply; the baselines write like partners."""
    rng = random.Random(1)
    real = [person(rng) for _ in range(12)]
    return findings({"real": real, "twin": list(real), "base": [partner(rng) for _ in real],
                     "prompted base": [partner(rng) for _ in real]})  # fmt: skip


def test_a_twin_copying_the_real_replies_meets_every_goal(copied: Findings) -> None:
    ok = Forgetting(Perplexity(2.0, 100), Perplexity(2.05, 100), [])  # +5%
    summary = build_summary(findings_json(ReportArgs(data=Path("d")), replace(copied, forgetting=ok)))
    assert summary.columns == ["real", "twin", "base", "prompted base"]
    by = {r.metric: r for r in summary.rows}
    assert [r.status for r in summary.rows] == [MET] * 4
    assert by["attribution share"].values["twin"] == by["attribution share"].values["real"]
    assert by["attribution share"].verdict.startswith("twin 100% ≥ 80%")
    assert "above base 0%" in by["attribution share"].verdict
    assert by["discriminator accuracy"].values["twin"].startswith("50% ")  # a copy: chance, by construction
    assert "below prompted base" in by["discriminator accuracy"].verdict
    assert by["held-out perplexity"].values == {"twin": "2.72", "base": "7.39"}
    assert by["general-text perplexity"].verdict == "base 7.39 → twin 7.77 (+5.1%)"
    assert "real" not in by["general-text perplexity"].values


def test_a_worse_twin_is_reported_missed_with_its_numbers() -> None:
    rng = random.Random(2)
    real = [person(rng) for _ in range(12)]
    formal = [
        partner(rng) for _ in real
    ]  # the twin writes like the partners, the prompted base like the person
    f = findings(
        {"real": real, "twin": formal, "base": [partner(rng) for _ in real], "prompted base": list(real)},
        twin_nll=2.5,
        forgetting=Forgetting(Perplexity(2.0, 100), Perplexity(2.3, 100), []),  # e^0.3: +35%
    )
    summary = build_summary(findings_json(ReportArgs(data=Path("d")), f))
    by = {r.metric: r for r in summary.rows}
    assert [r.status for r in summary.rows] == [MISSED] * 4
    assert by["attribution share"].verdict.startswith("twin 0% < 80% (80% of real's 100%)")
    assert "not above base 0%; not above prompted base 100%" in by["attribution share"].verdict
    assert by["discriminator accuracy"].verdict.startswith("twin 100% > 65%")
    assert "not below prompted base 50%" in by["discriminator accuracy"].verdict
    assert by["held-out perplexity"].verdict == "twin 12.18 vs base 7.39 (+65%)"
    assert "(+35.0%)" in by["general-text perplexity"].verdict
    text = to_text(summary)
    assert text.count("MISSED") == 4 + 4  # in the table and on each row's verdict line
    md = render_markdown(ReportArgs(data=Path("d")), f, [])
    assert md.index("## Summary") < md.index("## Held-out perplexity") < md.index("## Side by side")
    assert md.count("| **missed**: ") == 4


def constructed(share: float, told: float, name: str) -> QualityRow:
    return QualityRow(name, 12, Share(share, share, share, 12), Accuracy(told, told, told, 0.0, 5))


@pytest.mark.parametrize(
    ("twin", "prompted", "status"),
    [
        ((0.80, 0.65), (0.70, 0.70), MET),  # exactly on both goals, better than the prompted base
        ((0.79, 0.50), (0.10, 0.90), MISSED),  # attribution just under 80% of real's 100%
        ((0.90, 0.66), (0.10, 0.90), MISSED),  # told from real just over 65%
        ((0.90, 0.60), (0.90, 0.60), MISSED),  # no better than prompting
    ],
)
def test_the_goals_on_the_boundary(
    twin: tuple[float, float], prompted: tuple[float, float], status: str
) -> None:
    rows = [constructed(1.0, 0.5, "real"), constructed(*twin, "twin"), constructed(0.0, 1.0, "base")]
    rows.append(constructed(*prompted, "prompted base"))
    data = {"quality": {"rows": [asdict(r) for r in rows], "note": ""}}
    by = {r.metric: r for r in build_summary(data).rows}
    verdicts = {by["attribution share"].status, by["discriminator accuracy"].status}
    assert (MISSED in verdicts) == (status == MISSED)


def test_a_new_contestant_gets_a_column_and_memory_on_vs_off_a_row(copied: Findings) -> None:
    data = findings_json(ReportArgs(data=Path("d")), copied)
    memory = constructed(0.75, 0.40, MEMORY)
    twin = next(r for r in data["quality"]["rows"] if r["contestant"] == "twin")
    data["quality"]["rows"].append(asdict(memory))
    data["perplexity"][MEMORY] = 2.0
    summary = build_summary(data)
    assert summary.columns == ["real", "twin", "base", "prompted base", MEMORY]
    by = {r.metric: r for r in summary.rows}
    assert by["attribution share"].values[MEMORY] == "75% (75–75)"
    assert by["held-out perplexity"].values[MEMORY] == "2.00"
    mem = by["memory on vs off"]
    assert mem.status == REPORTED
    share, told = twin["attribution"]["share"], twin["discrimination"]["mean"]
    assert mem.verdict == (
        f"held-out perplexity 2.72 → 2.00; attribution {(0.75 - share) * 100:+.0f} pp; "
        f"told from real {(0.40 - told) * 100:+.0f} pp"
    )
    html = render_html(data, {})
    assert "<th>twin + memory</th>" in html and "memory on vs off" in html
    assert "twin + memory" in to_text(summary)


def test_what_was_not_measured_says_why() -> None:
    rng = random.Random(3)
    few = {"real": [person(rng) for _ in range(3)], "twin": [person(rng) for _ in range(3)]}
    summary = build_summary(findings_json(ReportArgs(data=Path("d")), findings(few)))
    by = {r.metric: r for r in summary.rows}
    assert by["attribution share"].status == by["discriminator accuracy"].status == NOT_MEASURED
    assert by["attribution share"].verdict == "only 3 sampled prompts; use --samples 4 or more"
    assert by["general-text perplexity"].status == NOT_MEASURED
    assert "memory on vs off" not in by  # no memory contestant, no row
    assert Summary.from_dict(json.loads(json.dumps(summary.as_dict()))) == summary


class Tags(HTMLParser):
    """Every start tag and its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_the_html_page_is_self_contained_and_owner_only(copied: Findings, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(ReportArgs(data=Path("d"), out=out), copied)
    page = (out / HTML_FILE).read_text(encoding="utf-8")
    tags = parse(page)
    names = [t for t, _ in tags.tags]
    assert not {"script", "link", "iframe", "object", "embed", "base", "form", "svg"} & set(names)
    images = [a["src"] for t, a in tags.tags if t == "img"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["lengths.png", "perplexity.png", "quality.png", "style.png"]  # no metrics.csv: no loss
    assert len(images) == len(pngs)
    embedded = {base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in images if src}
    assert embedded == {(out / p).read_bytes() for p in pngs}  # the plots themselves, inside the page
    for _, attrs in tags.tags:  # nothing to fetch: no URL in any attribute but the images' data URIs
        for key, value in attrs.items():
            assert key not in ("href", "action", "srcset", "background", "poster")
            if key == "src":
                assert (value or "").startswith("data:image/png;base64,")
    assert "http://" not in page and "https://" not in page and "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the browser is told so
    assert (
        page.index("<h2>Summary</h2>") < page.index("Held-out perplexity</h2>") < page.index("Side by side")
    )
    for path in [out, *out.iterdir()]:  # it quotes private chats: owner-only like the rest
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)


def test_chat_text_is_escaped_in_the_page_and_the_markdown(tmp_path: Path) -> None:
    rng = random.Random(4)
    real = [person(rng) for _ in range(6)]
    twin = [HOSTILE, *real[1:]]
    f = findings({"real": real, "twin": twin, "base": [partner(rng) for _ in real]})
    f.samples[0]["partner"] = "<u onmouseover=alert(2)>Eve</u>"
    f.samples[0]["context"] = "Eve: </td></table><script>alert(3)</script>"
    out = tmp_path / "report"
    write_report(ReportArgs(data=Path("d"), out=out), f)
    page = (out / HTML_FILE).read_text(encoding="utf-8")
    tags = parse(page)
    assert not any(t in ("script", "u") or "onmouseover" in a or "onerror" in a for t, a in tags.tags)
    assert len([t for t, _ in tags.tags if t == "img"]) == 4  # only the plots, not the reply's <img>
    text = "".join(tags.text)
    assert HOSTILE in text  # shown to the reader as the characters it is
    assert "Eve: </td></table><script>alert(3)</script>" in text and "<u onmouseover=alert(2)>Eve</u>" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and "&lt;script&gt;alert('x')&lt;/script&gt;" in md
    assert (
        "![t](" not in md and "!\\[t\\](https://evil.example/t.png)" in md
    )  # no image for a viewer to fetch


def test_shares_of_a_few_replies_meet_the_goal_exactly() -> None:
    """8 of 12 replies attributed is exactly 80% of 10 of 12, whatever the floating-point rounding."""
    rows = [constructed(10 / 12, 0.5, "real"), constructed(8 / 12, 7.8 / 12, "twin")]
    by = {r.metric: r for r in build_summary({"quality": {"rows": [asdict(r) for r in rows]}}).rows}
    assert by["attribution share"].status == MET
    assert by["attribution share"].verdict == "twin 67% ≥ 67% (80% of real's 83%)"
    assert by["discriminator accuracy"].status == MET  # 7.8 / 12 = 65%
