"""The quality report's PNG plots (matplotlib, Agg): perplexity, style, reply lengths, the quality metrics
per contestant and the training loss. Every contestant the findings name gets a bar or a line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.metrics import draw_losses, save_figure
from finetune.style import RATE_LABELS
from finetune.summary import ATTRIBUTION_GOAL, DISCRIMINATION_GOAL

if TYPE_CHECKING:
    from finetune.findings import Findings
    from finetune.quality import QualityRow

COLORS = {
    "real": "tab:green",
    "twin": "tab:blue",
    "base": "tab:gray",
    "prompted base": "tab:orange",
    "twin + memory": "tab:purple",
}
SPARE_COLORS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
DPI = 110


def color(who: str, order: Sequence[str]) -> str:
    """The contestant's colour; one not in COLORS takes a spare by its place in `order`."""
    if who in COLORS:
        return COLORS[who]
    spare = [w for w in order if w not in COLORS]
    return SPARE_COLORS[spare.index(who) % len(SPARE_COLORS)] if who in spare else "black"


def plot_all(f: Findings, out: Path) -> list[str]:
    """Write the report's PNGs into `out`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bars = ax.bar(["base", "twin"], [f.base.value, f.twin.value], color=[COLORS["base"], COLORS["twin"]])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"Held-out replies ({f.twin.tokens} tokens)")
    save_figure(fig, out / "perplexity.png", dpi=DPI)
    names.append("perplexity.png")

    who_all = list(f.style)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(who_all))
    keys = list(RATE_LABELS)
    for k, who in enumerate(who_all):
        values = [getattr(f.style[who], key) for key in keys]
        offset = (k - (len(who_all) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(keys))], values, width, label=who, color=color(who, who_all))
    ax.set_xticks(range(len(keys)), [RATE_LABELS[k] for k in keys], rotation=15)
    ax.set_ylabel("rate")
    ax.set_title("Style of the replies: the person (real) and each contestant")
    ax.legend()
    save_figure(fig, out / "style.png", dpi=DPI)
    names.append("style.png")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    sampled = [w for w in who_all if all(w in s for s in f.samples)]
    lengths = {who: [len(s[who]) for s in f.samples] for who in sampled}
    top = max([1, *(max(v, default=0) for v in lengths.values())])
    bins = list(range(0, top + 10, max(1, top // 25)))
    for who, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.8, label=who, color=color(who, who_all))
    ax.set_xlabel("reply length (characters)")
    ax.set_ylabel("replies")
    if lengths:
        ax.legend()
    save_figure(fig, out / "lengths.png", dpi=DPI)
    names.append("lengths.png")

    if f.quality:
        fig = plot_quality(plt, f.quality)
        save_figure(fig, out / "quality.png", dpi=DPI)
        names.append("quality.png")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    if f.loss_rows and draw_losses(ax, f.loss_rows, "Fine-tuning"):
        save_figure(fig, out / "loss.png", dpi=DPI)
        names.append("loss.png")
    else:
        plt.close(fig)
    return names


def plot_quality(plt: Any, rows: Sequence[QualityRow]) -> Any:
    """Attribution share (with its 95% interval) and discriminator accuracy (50% = chance, with the
    goal's line) per contestant, side by side."""
    from matplotlib.ticker import PercentFormatter

    who = [r.contestant for r in rows]
    colors = [color(w, who) for w in who]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, values, title in (
        (left, [(r.attribution.share, r.attribution.low, r.attribution.high) for r in rows],
         "Attributed to the person"),
        (right, [(r.discrimination.mean, r.discrimination.low, r.discrimination.high) for r in rows],
         "Told from the real replies"),
    ):  # fmt: skip
        mid = [v[0] for v in values]
        errors = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        ax.bar(range(len(who)), mid, color=colors, yerr=errors, capsize=4, ecolor="black")
        for i, (m, _, high) in enumerate(values):  # above the interval, where no error bar crosses it
            ax.text(i, high + 0.02, f"{m:.0%}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(who)), who, rotation=15)
        ax.set_ylim(0, 1.2)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(title)
    real = next((r.attribution.share for r in rows if r.contestant == "real"), None)
    if real is not None:
        goal = ATTRIBUTION_GOAL * real
        left.axhline(goal, color="tab:red", linestyle=":", linewidth=1.2, label="twin's goal")
        left.legend(loc="upper right", fontsize=8)
    right.axhline(0.5, color="black", linestyle="--", linewidth=1, label="50%: chance")
    right.axhline(DISCRIMINATION_GOAL, color="tab:red", linestyle=":", linewidth=1.2, label="twin's goal")
    right.legend(loc="upper left", fontsize=8)
    left.set_ylabel("share of replies (95% CI)")
    right.set_ylabel("accuracy (95% CI)")
    return fig
