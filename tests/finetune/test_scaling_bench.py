"""bench/scaling_bench.py --smoke runs end to end: 1 and 2 gloo processes on a CPU (timing not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaling_bench.py"


@pytest.mark.slow
def test_smoke_measures_one_and_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by = {(r["strategy"], r["devices"]): r for r in rows}
    single, ddp = by[("single", 1)], by[("ddp", 2)]  # one device: make_strategy wraps nothing
    for row in (single, ddp):
        assert row.get("nonpad_tokens_per_s", 0) > 0, row
        assert row["nonpad_tokens_per_s_per_device"] > 0
    assert ddp["world_size"] == 2 and ddp["strategy_class"] == "DDPStrategy"
    assert ddp["scaling_efficiency"] == pytest.approx(
        ddp["nonpad_tokens_per_s"] / (2 * single["nonpad_tokens_per_s"]), abs=1e-3
    )
    fsdp = by[("fsdp", 2)]  # Lightning runs FSDP on GPUs only: a CPU gets a skipped row with the reason
    assert fsdp.get("nonpad_tokens_per_s", 0) > 0 or "FSDP" in fsdp["skipped"], fsdp
    assert "tok/s/dev" in done.stdout  # the summary table
