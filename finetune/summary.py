"""The quality report's one-table summary: a row per metric, a column per contestant, the goal, a verdict.

Built from report.json's content (`finetune.report.findings_json`), so it needs no model and no torch:
`make demo` prints it from the report.json on disk. The columns are the contestants the findings name
(real, twin, base, prompted base, and any the report gains, such as "twin + memory"), in their order.
The goals are issue 15's (see docs/QUALITY.md); where one is missed the verdict says "missed" and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

REAL, TWIN, MEMORY = "real", "twin", "twin + memory"
BASELINES = ("base", "prompted base")
"""The contestants the twin must beat."""
ATTRIBUTION_GOAL = 0.8
"""The twin's attribution share must reach this fraction of the real replies' share."""
DISCRIMINATION_GOAL = 0.65
"""The discriminator may tell the twin's replies from the real ones at most this often."""

MET, MISSED, NOT_MEASURED, REPORTED = "met", "missed", "not measured", "reported"
"""A row's status: goal met or missed, the metric not measured, or (no pass mark) a difference reported."""
NO_VALUE = "—"
EPSILON = 1e-9
"""Shares are fractions of a few replies: 8/12 must reach 80% of 10/12 despite rounding."""


@dataclass(frozen=True, slots=True)
class SummaryRow:
    metric: str
    values: dict[str, str]
    """Contestant → the formatted measurement (contestants the metric does not apply to are missing)."""
    goal: str
    status: str
    """MET, MISSED, NOT_MEASURED or REPORTED."""
    verdict: str
    """The numbers behind the status, in words: what missed the goal, or what met it."""


@dataclass(frozen=True)
class Summary:
    columns: list[str]
    """The contestants, in the findings' order."""
    rows: list[SummaryRow]

    def as_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        return cls(list(d["columns"]), [SummaryRow(**r) for r in d["rows"]])

    def cell(self, row: SummaryRow, column: str) -> str:
        return row.values.get(column, NO_VALUE)


# ------------------------------------------------------------------------------------------- building
def pct(x: float) -> str:
    return f"{x:.0%}"


def points(x: float) -> str:
    """A difference of two shares in percentage points, signed."""
    return f"{x * 100:+.0f} pp"


def build_summary(found: Mapping[str, Any]) -> Summary:
    """The summary of report.json's findings (`found`)."""
    quality = {row["contestant"]: row for row in (found.get("quality") or {}).get("rows") or []}
    columns = contestants(found, quality)
    note = (found.get("quality") or {}).get("note") or "no quality rows in the findings"
    rows = [
        perplexity_row(found.get("perplexity") or {}, columns),
        attribution_row(quality, note),
        discrimination_row(quality, note),
        forgetting_row(found.get("forgetting")),
    ]
    if MEMORY in columns:
        rows.append(memory_row(found.get("perplexity") or {}, quality))
    return Summary(columns, rows)


def contestants(found: Mapping[str, Any], quality: Mapping[str, Any]) -> list[str]:
    """Every contestant the quality rows, the style table or the perplexities name, in that order
    (the perplexities' other keys, such as base_nll or reply_tokens, have an underscore)."""
    ppl = found.get("perplexity") or {}
    measured = [k for k, v in ppl.items() if isinstance(v, int | float) and "_" not in k]
    return list(dict.fromkeys([REAL, *quality, *(found.get("style") or {}), *measured]))


def perplexity_row(ppl: Mapping[str, Any], columns: Sequence[str]) -> SummaryRow:
    metric, goal = "held-out perplexity", "twin below base"
    values = {c: f"{ppl[c]:.2f}" for c in columns if isinstance(ppl.get(c), int | float)}
    if TWIN not in values or "base" not in values:
        return SummaryRow(metric, values, goal, NOT_MEASURED, "no perplexity of the twin and the base")
    twin, base = ppl[TWIN], ppl["base"]
    numbers = f"twin {twin:.2f} vs base {base:.2f} ({(twin / base - 1) * 100:+.0f}%)"
    return SummaryRow(metric, values, goal, MET if twin < base else MISSED, numbers)


def interval_value(share: float, low: float, high: float) -> str:
    """A share with its 95% interval in points: "83% (58–100)"."""
    return f"{share:.0%} ({low * 100:.0f}–{high * 100:.0f})"


def attribution_row(quality: Mapping[str, Any], note: str) -> SummaryRow:
    metric = "attribution share"
    goal = f"twin ≥ {ATTRIBUTION_GOAL:.0%} of real's share, above base and prompted base"
    values = {
        name: interval_value(a["share"], a["low"], a["high"])
        for name, a in ((n, r["attribution"]) for n, r in quality.items())
    }
    if TWIN not in quality or REAL not in quality:
        return SummaryRow(metric, values, goal, NOT_MEASURED, note)
    share = {name: r["attribution"]["share"] for name, r in quality.items()}
    if share[REAL] <= EPSILON:  # the goal would be 0%: any twin "meets" it, which says nothing
        return SummaryRow(
            metric,
            values,
            goal,
            NOT_MEASURED,
            "the classifier attributes none of the person's own held-out replies to them (real 0%), so a "
            "twin's share cannot be judged against them",
        )
    target = ATTRIBUTION_GOAL * share[REAL]
    twin = share[TWIN]
    passed: list[str] = []
    failed: list[str] = []
    ok = twin >= target - EPSILON
    (passed if ok else failed).append(
        f"twin {pct(twin)} {'≥' if ok else '<'} {pct(target)} "
        f"({ATTRIBUTION_GOAL:.0%} of real's {pct(share[REAL])})"
    )
    for name in (b for b in BASELINES if b in share):
        if twin > share[name]:
            passed.append(f"above {name} {pct(share[name])}")
        else:
            failed.append(f"not above {name} {pct(share[name])}")
    return SummaryRow(metric, values, goal, MISSED if failed else MET, "; ".join(failed or passed))


def discrimination_row(quality: Mapping[str, Any], note: str) -> SummaryRow:
    metric = "discriminator accuracy"
    goal = f"twin ≤ {DISCRIMINATION_GOAL:.0%} (50% = chance), below base and prompted base"
    values = {
        name: interval_value(d["mean"], d["low"], d["high"])
        for name, d in ((n, r["discrimination"]) for n, r in quality.items())
    }
    if TWIN not in quality:
        return SummaryRow(metric, values, goal, NOT_MEASURED, note)
    told = {name: r["discrimination"]["mean"] for name, r in quality.items()}
    twin = told[TWIN]
    ok = twin <= DISCRIMINATION_GOAL + EPSILON
    passed: list[str] = []
    failed: list[str] = []
    (passed if ok else failed).append(f"twin {pct(twin)} {'≤' if ok else '>'} {pct(DISCRIMINATION_GOAL)}")
    for name in (b for b in BASELINES if b in told):
        if twin < told[name]:
            passed.append(f"below {name} {pct(told[name])}")
        else:
            failed.append(f"not below {name} {pct(told[name])}")
    return SummaryRow(metric, values, goal, MISSED if failed else MET, "; ".join(failed or passed))


def forgetting_row(forgetting: Mapping[str, Any] | None) -> SummaryRow:
    metric = "general-text perplexity"
    if not forgetting:
        return SummaryRow(metric, {}, "twin ≤ base +10%", NOT_MEASURED, "skipped (--no-forgetting)")
    ppl, ratio, goal_ratio = forgetting["perplexity"], forgetting["ratio"], forgetting["goal_ratio"]
    goal = f"twin ≤ base {(goal_ratio - 1) * 100:+.0f}%"
    values = {name: f"{ppl[name]:.2f}" for name in ("base", TWIN)}
    right = forgetting.get("right") or {}
    numbers = f"base {ppl['base']:.2f} → twin {ppl[TWIN]:.2f} ({(ratio - 1) * 100:+.1f}%)"
    if right.get("questions"):
        n = right["questions"]
        numbers += f"; general questions right: base {right['base']}/{n}, twin {right[TWIN]}/{n}"
    return SummaryRow(metric, values, goal, MET if ratio <= goal_ratio else MISSED, numbers)


def memory_row(ppl: Mapping[str, Any], quality: Mapping[str, Any]) -> SummaryRow:
    """Memory on ("twin + memory") against off ("twin"): the differences, with no pass mark."""
    values: dict[str, list[str]] = {TWIN: [], MEMORY: []}
    changes = []
    if isinstance(ppl.get(MEMORY), int | float) and isinstance(ppl.get(TWIN), int | float):
        for name in values:
            values[name].append(f"ppl {ppl[name]:.2f}")
        changes.append(f"held-out perplexity {ppl[TWIN]:.2f} → {ppl[MEMORY]:.2f}")
    if MEMORY in quality and TWIN in quality:
        for key, label in (("attribution", "attributed"), ("discrimination", "told")):
            field = "share" if key == "attribution" else "mean"
            on, off = quality[MEMORY][key][field], quality[TWIN][key][field]
            for name, x in ((TWIN, off), (MEMORY, on)):
                values[name].append(f"{label} {pct(x)}")
            what = "attribution" if key == "attribution" else "told from real"
            changes.append(f"{what} {points(on - off)}")
    cells = {name: ", ".join(v) for name, v in values.items() if v}
    if not changes:
        return SummaryRow("memory on vs off", cells, "difference measured", NOT_MEASURED, "no memory numbers")
    return SummaryRow("memory on vs off", cells, "difference measured", REPORTED, "; ".join(changes))


# ------------------------------------------------------------------------------------------- rendering
def md_escape(text: str) -> str:
    """Markdown-table-safe and HTML-safe text (`<` `>` `&` escaped, `|` and newlines kept out)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(summary: Summary) -> str:
    """The summary as one Markdown table: metric, a column per contestant, goal, verdict."""
    head = ["metric", *summary.columns, "goal", "verdict"]
    lines = [
        "| " + " | ".join(md_escape(h) for h in head) + " |",
        "|---|" + "---:|" * len(summary.columns) + "---|---|",
    ]
    for row in summary.rows:
        status = f"**{row.status}**" if row.status == MISSED else row.status
        cells = [row.metric, *(summary.cell(row, c) for c in summary.columns), row.goal]
        cells.append(f"{status}: {row.verdict}")
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def shout(status: str) -> str:
    """A missed goal in capitals, so a terminal reader cannot overlook it."""
    return status.upper() if status == MISSED else status


def to_text(summary: Summary) -> str:
    """The summary as a plain-text table for a terminal, each row's goal and verdict on lines below it."""
    head = ["metric", *summary.columns, "verdict"]
    table = [head] + [
        [r.metric, *(summary.cell(r, c) for c in summary.columns), shout(r.status)] for r in summary.rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for r in summary.rows:
        lines += [f"{r.metric} — goal: {r.goal}", f"  {shout(r.status)}: {r.verdict}"]
    return "\n".join(lines) + "\n"
