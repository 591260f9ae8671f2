"""prepare's scrubbing end to end: secrets split over two messages, counts by kind in stats.json and the
summary line, and `--scrub-report` (kind and position of each replaced span, never the value)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from prepare_helpers import msg, read_jsonl, write_raw

from prepare.__main__ import cli
from prepare.prompt import clean_text

CARD = ("4111 1111", "1111 1111")  # one card number typed over two messages
PASSPORT = "4508 123456"
SEED = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PHONE_NAME = "+7 912 345-67-89"


def chat() -> list[dict]:
    seed_words = SEED.split()
    return [
        msg(1, 0, False, "hi! can you send your card?"),
        msg(2, 1, True, f"sure: {CARD[0]}"),
        msg(3, 1.5, True, f"{CARD[1]} exp 12/27"),
        msg(4, 2, False, f"thanks. my passport is {PASSPORT}, for the tickets"),
        msg(5, 3, True, "ok, and the seed of my wallet: " + " ".join(seed_words[:6])),
        msg(6, 3.5, True, " ".join(seed_words[6:]) + " — keep it safe"),
        msg(7, 4, False, "password: see the doc"),
        msg(8, 5, True, "код домофона 4721#, заходи"),
        msg(10, 0, False, "hello", dialog_id=2, name=PHONE_NAME),
        msg(11, 1, True, "hi there", dialog_id=2, name=PHONE_NAME),
    ]


def run(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    raw = write_raw(tmp_path / "raw", chat())
    out = tmp_path / "prepared"
    assert cli(["--raw", str(raw), "--out", str(out), "--val-fraction", "0", *extra]) == 0
    return out, json.loads((out / "stats.json").read_text())


def test_split_secrets_are_caught_and_counted_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, stats = run(tmp_path)
    written = (out / "train.jsonl").read_text(encoding="utf-8")
    for value in (*CARD, PASSPORT, "winner thank", "yellow", "4721", "912 345"):
        assert value not in written
    assert "password: see the doc" in written  # a reference, not a password
    # the card split over two messages is one card; its expiry after it is card data too
    assert stats["scrubbed"]["CARD"] == 2 and "12/27" not in written
    assert stats["scrubbed"]["ID_NUMBER"] == 1 and stats["scrubbed"]["SEED_PHRASE"] == 1
    assert stats["scrubbed"]["ACCESS_CODE"] == 1 and stats["scrubbed"]["PHONE"] == 1
    assert stats["scrub_report"] is None
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Wrote ")][0]
    assert "scrubbed 6 secrets (" in line and "2 CARD" in line and "1 SEED_PHRASE" in line
    assert "where:" not in line


def test_scrub_report_gives_positions_never_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "audit" / "scrub_report.jsonl"
    _, stats = run(tmp_path, "--scrub-report", str(report))
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    text = report.read_text(encoding="utf-8")
    for value in (*CARD, PASSPORT, "winner", "4721", "912"):
        assert value not in text
    rows = read_jsonl(report)
    assert sum(stats["scrubbed"].values()) == len(rows)
    assert stats["scrub_report"] == str(report)
    assert f"where: {report}" in capsys.readouterr().out

    raw = {(m["dialog_id"], m["id"]): clean_text(m["message"]) for m in chat()}
    by_kind = {row["kind"]: row for row in reversed(rows)}  # the first row of each kind
    card = by_kind["CARD"]
    assert (card["file"], card["speaker"], card["message_id"], card["end_message_id"]) == (
        "1.jsonl",
        "me",
        2,
        3,
    )
    assert raw[1, 2][card["start"] :] == CARD[0] and raw[1, 3][: card["end"]] == CARD[1]
    expiry = [row for row in rows if row["kind"] == "CARD"][1]
    assert raw[1, 3][expiry["start"] : expiry["end"]] == "12/27"
    passport = by_kind["ID_NUMBER"]
    assert passport["speaker"] == "partner" and passport["message_id"] == passport["end_message_id"] == 4
    assert raw[1, 4][passport["start"] : passport["end"]] == PASSPORT
    seed = by_kind["SEED_PHRASE"]
    assert (seed["message_id"], seed["end_message_id"]) == (5, 6)
    assert raw[1, 6][: seed["end"]] == " ".join(SEED.split()[6:])
    code = by_kind["ACCESS_CODE"]
    assert raw[1, code["message_id"]][code["start"] : code["end"]] == "4721#"
    name = by_kind["PHONE"]
    assert name["field"] == "dialog_name" and name["file"] == "2.jsonl"
    assert PHONE_NAME[name["start"] : name["end"]] == PHONE_NAME


def test_scrub_report_inside_raw_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw", chat())
    args = ["--raw", str(raw), "--out", str(tmp_path / "out"), "--scrub-report", str(raw / "report.jsonl")]
    assert cli(args) == 2
    assert "--scrub-report must be outside --raw" in capsys.readouterr().err
