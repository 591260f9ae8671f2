"""What the twin-quality report measured (`finetune.report` fills it; its plots and pages read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.evaluate import Perplexity
from finetune.forgetting import Forgetting
from finetune.quality import QualityRow
from finetune.style import StyleStats


@dataclass
class Findings:
    """Everything measured; report.json is this as JSON."""

    base: Perplexity
    twin: Perplexity
    style: dict[str, StyleStats]
    samples: list[dict[str, str]]
    loss_rows: list[dict[str, float | None]]
    val_records: int
    seconds: float
    quality: list[QualityRow] = field(default_factory=list)
    """Attribution and discrimination of the real, twin and base replies (finetune.quality)."""
    quality_note: str = ""
    """Why `quality` is empty, when it is."""
    forgetting: Forgetting | None = None
    """General-text perplexity and answers of the base and the twin (None: `--no-forgetting`)."""
    twin_memory: Perplexity | None = None
    """Held-out perplexity of the twin with retrieved memories in its prompts (None: memory left out)."""
    memory_k: int = 0
    """Memories shown per prompt to "twin + memory" (0: not measured)."""
    drafts: dict[str, Any] | None = None
    """`prepare.feedback.draft_stats` of the feedback file (None: no file)."""
