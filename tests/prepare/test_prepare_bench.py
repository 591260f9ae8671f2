"""The benchmark script runs end to end on a small corpus (its timing is never asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "prepare_bench.py"


def test_bench_runs_on_a_small_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("prepare_bench", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(messages=4000, dialogs=40, seed=3)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    assert result["raw_lines"] >= 4000 and result["dialogs"] == 40
    assert 0 < result["records"] < result["raw_lines"]
    assert result["scrubbed"] > 0
