"""The shipped sample export: reproducible, in Telegram Desktop's current schema, and useful for a demo."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "examples" / "sample_export" / "result.json"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_sample_export", ROOT / "examples" / "make_sample_export.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def export() -> dict[str, Any]:
    return json.loads(EXPORT.read_text(encoding="utf-8"))


def flatten(text: str | list) -> str:
    if isinstance(text, str):
        return text
    return "".join(part if isinstance(part, str) else part["text"] for part in text)


def text_messages(chat: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in chat["messages"] if m["type"] == "message" and flatten(m["text"])]


def test_committed_file_is_what_the_generator_writes(gen: ModuleType, tmp_path: Path) -> None:
    assert gen.main(["--check", "--out", str(EXPORT)]) == 0
    # and a different seed gives a different export (the generator is not a constant)
    other = tmp_path / "result.json"
    assert gen.main(["--out", str(other), "--seed", "7"]) == 0
    assert other.read_text(encoding="utf-8") != EXPORT.read_text(encoding="utf-8")
    assert gen.main(["--check", "--out", str(other)]) == 1


def test_current_desktop_schema(export: dict[str, Any]) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert isinstance(export["personal_information"]["user_id"], int)
    for chat in export["chats"]["list"]:
        ids = [m["id"] for m in chat["messages"]]
        assert ids == sorted(set(ids)), chat.get("name")
        for m in chat["messages"]:
            assert m["type"] in {"message", "service"}
            local = datetime.fromisoformat(m["date"]).replace(tzinfo=berlin)
            assert int(m["date_unixtime"]) == int(local.timestamp())
            assert flatten(m["text"]) == "".join(e["text"] for e in m["text_entities"])
            if m["type"] == "message":
                assert re.fullmatch(r"(user|channel)\d+", m["from_id"])


def test_what_collect_must_keep_and_drop(export: dict[str, Any]) -> None:
    chats = export["chats"]["list"]
    kinds = Counter(c["type"] for c in chats)
    assert 5 <= kinds["personal_chat"] <= 8
    assert {"private_group", "bot_chat", "saved_messages", "public_channel"} <= set(kinds)
    personal = [c for c in chats if c["type"] == "personal_chat"]
    n_text = sum(len(text_messages(c)) for c in personal)
    assert 300 <= n_text <= 1500
    entries = [m for c in personal for m in c["messages"]]
    assert any(m["type"] == "service" for m in entries)
    assert any(m.get("media_type") == "sticker" for m in entries)
    assert any("photo" in m and flatten(m["text"]) for m in entries)  # a captioned photo
    assert any("photo" in m and not flatten(m["text"]) for m in entries)  # and one without caption
    assert any("forwarded_from" in m for m in entries)
    assert any(isinstance(m["text"], list) for m in entries)
    assert any(re.search("[а-я]", flatten(m["text"])) for m in entries)


def test_planted_secrets_are_there_for_the_scrubber(gen: ModuleType, export: dict[str, Any]) -> None:
    texts = [flatten(m["text"]) for c in export["chats"]["list"] for m in c["messages"]]
    blob = "\n".join(texts)
    for secret in (gen.FAKE_EMAIL, gen.FAKE_PHONE, gen.FAKE_CARD, gen.FAKE_PASSWORD):
        assert secret in blob
    assert re.search(r"sk-proj-[A-Za-z0-9]{40}", blob)
    digits = [int(d) for d in gen.FAKE_CARD.replace(" ", "")]
    checksum = sum(
        d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits[::-1])
    )
    assert checksum % 10 == 0  # Luhn-valid, so a card scrubber has to catch it


def test_me_has_one_consistent_voice(export: dict[str, Any]) -> None:
    me = f"user{export['personal_information']['user_id']}"
    mine = [
        flatten(m["text"])
        for c in export["chats"]["list"]
        if c["type"] == "personal_chat"
        for m in text_messages(c)
        if m["from_id"] == me
    ]
    theirs = [
        flatten(m["text"])
        for c in export["chats"]["list"]
        if c["type"] == "personal_chat"
        for m in text_messages(c)
        if m["from_id"] != me
    ]
    assert len(mine) > 200 and len(theirs) > 200
    lowercase = sum(t == t.lower() for t in mine) / len(mine)
    assert lowercase > 0.97
    assert sum(t == t.lower() for t in theirs) / len(theirs) < 0.3
    assert not any(t.endswith(".") for t in mine)
    assert sum("🙃" in t for t in mine) >= 20 and not any("🙃" in t for t in theirs)
    assert sum("love that for us" in t for t in mine) >= 5
    # varied, not copy-paste: most of my messages are not repeats
    assert len(set(mine)) / len(mine) > 0.4
