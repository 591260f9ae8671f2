"""The first steps of `make demo` on the shipped sample export, through the real CLIs: collect keeps the
one-to-one chats only, prepare scrubs every planted secret and keeps the person's voice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "examples" / "sample_export"
SECRETS = {
    "EMAIL": "sasha.novak.demo@example.com",
    "PHONE": "+44 7700 900123",
    "CARD": "4242 4242 4242 4242",
    "PASSWORD": "mintcondition77",
    "API_KEY": "sk-proj-",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    run_cli("collect", "desktop", str(EXPORT), "--out", str(root / "raw"))
    run_cli("prepare", "--raw", str(root / "raw"), "--out", str(root / "prepared"), "--val-fraction", "0.1")
    return root


def test_collect_keeps_the_one_to_one_chats_only(demo_data: Path) -> None:
    export = json.loads((EXPORT / "result.json").read_text(encoding="utf-8"))
    personal = {c["id"]: c["name"] for c in export["chats"]["list"] if c["type"] == "personal_chat"}
    files = {int(p.stem) for p in (demo_data / "raw").glob("*.jsonl")}
    assert files == set(personal)  # no group, bot, Saved Messages or channel
    lines = [
        json.loads(line) for p in (demo_data / "raw").glob("*.jsonl") for line in p.open(encoding="utf-8")
    ]
    texts = {m["message"] for m in lines}
    assert (
        "Ten CSS tricks that will change how you build layouts" not in texts
    )  # forwarded: not Sasha's words
    assert "Look at this sunset from the bridge!" in texts  # a photo caption is text
    assert any("https://example.org/hikes/saxon-switzerland" in t for t in texts)  # entity lists flattened
    assert all(m["message"].strip() for m in lines)  # stickers, voice and a bare photo left out
    assert {m["dialog_name"] for m in lines} == set(personal.values())


def test_prepare_scrubs_every_planted_secret_and_keeps_the_voice(demo_data: Path) -> None:
    prepared = demo_data / "prepared"
    stats = json.loads((prepared / "stats.json").read_text(encoding="utf-8"))
    assert all(stats["scrubbed"][kind] >= 1 for kind in SECRETS), stats["scrubbed"]
    text = (prepared / "train.jsonl").read_text(encoding="utf-8") + (prepared / "val.jsonl").read_text(
        encoding="utf-8"
    )
    for kind, secret in SECRETS.items():
        assert secret not in text, kind
        assert f"<{kind}>" in text, kind
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) > 250 and stats["val_records"] >= 20
    replies = [r["response"] for r in records]
    assert sum(r == r.lower() for r in replies) / len(replies) > 0.9  # Sasha writes lowercase
    assert any("love that for us" in r for r in replies) and any("))" in r for r in replies)
