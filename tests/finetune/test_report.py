"""`python -m finetune.report` on the tiny checkpoint and adapter, and the pieces it is built from."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT as BaseGPT

from finetune.data import load_records
from finetune.evaluate import load_lora_model, lora_off, merge
from finetune.metrics import read_rows
from finetune.report import main
from finetune.style import style_stats
from prepare.feedback import Feedback, append_feedback


def test_style_stats_counts_what_it_says() -> None:
    s = style_stats(["hi 🙃", "Hello.", "ok ok?", "Привет!"])
    assert s.replies == 4
    assert s.mean_chars == pytest.approx((4 + 6 + 6 + 7) / 4)
    assert s.emoji_rate == pytest.approx(1 / 4)
    assert s.full_stop_rate == pytest.approx(1 / 4)
    assert s.question_rate == pytest.approx(1 / 4)
    assert s.capitalised_rate == pytest.approx(2 / 4)  # "Hello." and "Привет!"
    assert s.uppercase_share == pytest.approx(2 / (2 + 5 + 4 + 6))
    assert s.punctuation_per_char == pytest.approx(3 / (4 + 6 + 6 + 7))
    assert style_stats([]).replies == 0


def test_lora_off_is_exactly_the_base_and_merge_keeps_the_twin(
    tiny_checkpoint: Path, tiny_adapter: Path
) -> None:
    model, _ = load_lora_model(tiny_checkpoint, tiny_adapter, torch.device("cpu"), torch.float32)
    base = BaseGPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
    base.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        twin_unmerged = model(idx)
        with lora_off(model):
            torch.testing.assert_close(model(idx), base.eval()(idx))
        assert (twin_unmerged - base(idx)).abs().max() > 1e-3  # the adapter does something
        merge(model)
        torch.testing.assert_close(model(idx), twin_unmerged, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="already merged"), lora_off(model):
        pass


def test_report_on_the_tiny_twin(
    tiny_checkpoint: Path, tiny_adapter: Path, prepared_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    argv = [
        "--data",
        str(prepared_dir),
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--lora-path",
        str(tiny_adapter),
    ]
    feedback = tmp_path / "feedback.jsonl"  # make reply's drafts: 2 sent as drafted, 1 edited, 1 discarded
    for outcome, sent in (
        ("unchanged", "ok"),
        ("unchanged", "sure"),
        ("edited", "fine!"),
        ("discarded", None),
    ):
        append_feedback(
            feedback, Feedback(outcome, 1, "Anna", "2024-01-01T10:00:00+00:00", "hi", (), "ok", sent)
        )
    argv += ["--feedback", str(feedback)]
    assert main([*argv, "--out", str(out), "--samples", "12", "--max-new-tokens", "12"]) == 0
    found = json.loads((out / "report.json").read_text(encoding="utf-8"))
    ppl = found["perplexity"]
    assert ppl["twin"] < ppl["base"]  # the fine-tune taught the base the person's replies
    # two independent implementations agree: the training loop's validation loss before the first step
    # (the base) and at the end (the twin) is the report's reply NLL, token-weighted over all of val.jsonl
    val_losses = [
        row["val_loss"] for row in read_rows(tiny_adapter / "metrics.csv") if row["val_loss"] is not None
    ]
    assert ppl["base_nll"] == pytest.approx(val_losses[0], rel=1e-3)
    assert ppl["twin_nll"] == pytest.approx(val_losses[-1], rel=1e-3)
    assert ppl["base"] == pytest.approx(math.exp(ppl["base_nll"]))

    val = {(r.instruction, r.response) for r in load_records(prepared_dir / "val.jsonl")}
    assert len(found["samples"]) == 10
    assert all((s["message"], s["real"]) in val for s in found["samples"])
    assert found["style"]["real"]["replies"] == 12

    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.count("| **twin** |") == 10 and "The twin beats its base" in text
    quality = {row["contestant"]: row for row in found["quality"]["rows"]}
    assert list(quality) == ["real", "twin", "base", "prompted base", "twin + memory"]
    assert found["quality"]["note"] == ""
    assert all(s["prompted base"] for s in found["samples"])  # the base shown 8 real exchanges
    assert all(s["twin + memory"] for s in found["samples"])  # the twin shown 3 retrieved exchanges
    assert all(row["replies"] == 12 and 0 <= row["attribution"]["share"] <= 1 for row in quality.values())
    # memory on vs off: the same held-out reply tokens scored under longer prompts, so a different number
    assert ppl["memory_k"] == 3 and ppl["twin + memory"] != ppl["twin"]
    assert "| twin + memory (3 past exchanges) |" in text
    assert found["drafts"]["drafts"] == 4 and found["drafts"]["unchanged_share"] == 0.5
    assert "drafted 4 replies: 2 sent unchanged (50%), 1 edited" in text
    assert quality["real"]["discrimination"]["mean"] == pytest.approx(0.5)  # real against itself
    assert "## Does it write like the person?" in text and "| twin | 12 | " in text
    for png in ("perplexity.png", "style.png", "lengths.png", "quality.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    summary = found["summary"]  # the one table, first in report.md and in report.html
    assert summary["columns"] == ["real", "twin", "base", "prompted base", "twin + memory"]
    assert [r["metric"] for r in summary["rows"]] == [
        "held-out perplexity", "attribution share", "discriminator accuracy", "general-text perplexity",
        "memory on vs off",
    ]  # fmt: skip
    assert all(r["status"] in ("met", "missed") for r in summary["rows"][:4])
    assert summary["rows"][4]["status"] == "reported"
    assert text.index("## Summary") < text.index("## Held-out perplexity")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("src='data:image/png;base64,") == 5 and "http://" not in page
    for path in [out, *out.iterdir()]:  # the report quotes private chats
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)


def test_report_user_errors(
    tiny_checkpoint: Path,
    tiny_adapter: Path,
    prepared_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--lora-path",
        str(tiny_adapter),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*argv, "--data", str(tmp_path / "missing")]) == 2
    assert "make prepare" in capsys.readouterr().err
    assert main([*argv, "--top-p", "0", "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--top-p" in err and "--samples" in err and "Traceback" not in err
    assert (
        main(
            ["--data", str(prepared_dir), "--checkpoint-dir", str(tmp_path), "--lora-path", str(tiny_adapter)]
        )
        == 2
    )
    assert "not a litgpt checkpoint" in capsys.readouterr().err


def test_report_memory_left_out(
    tiny_checkpoint: Path, tiny_adapter: Path, prepared_dir: Path, tmp_path: Path
) -> None:
    """--memory-k 0: no "twin + memory" contestant, no memory row; no feedback file: no drafts section."""
    out = tmp_path / "report"
    argv = [
        "--data",
        str(prepared_dir),
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--lora-path",
        str(tiny_adapter),
    ]
    argv += ["--out", str(out), "--samples", "4", "--max-new-tokens", "4", "--memory-k", "0"]
    argv += ["--prompted-examples", "0", "--no-forgetting", "--feedback", str(tmp_path / "none.jsonl")]
    assert main(argv) == 0
    found = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert "twin + memory" not in found["perplexity"] and found["drafts"] is None
    assert "memory on vs off" not in [r["metric"] for r in found["summary"]["rows"]]
    assert all("twin + memory" not in s for s in found["samples"])
    assert "## Drafts in Telegram" not in (out / "report.md").read_text(encoding="utf-8")
