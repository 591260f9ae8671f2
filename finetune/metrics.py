"""metrics.csv (one row per log interval and per validation), the loss-curve PNG, peak memory."""

from __future__ import annotations

import csv
import io
import math
import resource
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.files import open_private, write_private_atomic

COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "val_loss",
    "lr",
    "tokens_per_s",
    "nonpad_tokens_per_s",
    "peak_memory_gib",
)


@dataclass(frozen=True, slots=True)
class Row:
    """One metrics.csv row; training rows leave val_loss empty and validation rows the rest."""

    step: int
    epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    nonpad_tokens_per_s: float | None = None
    peak_memory_gib: float | None = None

    def cells(self) -> list[str]:
        out = []
        for name in COLUMNS:
            value = getattr(self, name)
            if value is None:
                out.append("")
            elif isinstance(value, int):
                out.append(str(value))
            else:
                out.append(f"{value:.6g}")
        return out


def read_rows(path: Path) -> list[dict[str, float | None]]:
    """metrics.csv as dicts of floats (None for empty cells)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]


class MetricsFile:
    """Appends rows to metrics.csv. On resume, rows after the resumed step (written by the killed run
    after its last checkpoint) are dropped first, so the file reads like one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        kept: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.reader(f)
                next(reader, None)
                kept = [row for row in reader if row and int(row[0]) <= resume_step]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(kept)
        write_private_atomic(path, buffer.getvalue())

    def write(self, row: Row) -> None:
        with open_private(self.path, "a") as f:
            csv.writer(f, lineterminator="\n").writerow(row.cells())


def draw_losses(ax: Any, rows: Iterable[Mapping[str, Any]], title: str) -> bool:
    """Draw train and validation loss against step on `ax`; False when there is nothing to draw."""
    rows = list(rows)
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per reply token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return bool(train or val)


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as a PNG (0600, atomically) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_private_atomic(path, buffer.getvalue())


def plot_losses(csv_path: Path, png_path: Path, title: str = "LoRA fine-tuning") -> None:
    """Train and validation loss against step, written as a PNG (0600)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    draw_losses(ax, read_rows(csv_path), title)
    save_figure(fig, png_path)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory of this process, or its peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
