"""Benchmark: import a synthetic 1M-message Telegram Desktop export (goal: <= 60 s, bounded memory).

    .venv/bin/python bench/collect_bench.py                 # 1M messages, prints one JSON object
    .venv/bin/python bench/collect_bench.py --messages 20000 # quick smoke run

The export is a full-account `result.json` in Telegram Desktop's current schema and layout (one-space
indent), written to a temp dir: ~400 personal chats of Zipf-like sizes (the largest ~15% of all messages),
plus a bot chat, Saved Messages, groups and channels that must be skipped; text as strings and as
entity lists, captions, stickers, voice notes, polls, service entries, forwards, and one chat imported
out of date order. Each import runs in a fresh subprocess so its peak RSS (`ru_maxrss`) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

ME = 100_000_001
WORDS = (
    "ok yes no maybe tomorrow today tonight coffee meeting call later sure thanks lol haha good night "
    "привет как дела спасибо завтра созвонимся хорошо 👍 😂 🙂 the a to and of is it you me we they"
).split()


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(2, 18)))


def _message(rng: random.Random, mid: int, ts: int, partner: int, partner_name: str) -> dict[str, Any]:
    mine = rng.random() < 0.5
    entry: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)),
        "date_unixtime": str(ts),
        "from": "Me" if mine else partner_name,
        "from_id": f"user{ME if mine else partner}",
    }
    kind = rng.random()
    if kind < 0.70:
        text: Any = _text(rng)
        entry["text"] = text
        entry["text_entities"] = [{"type": "plain", "text": text}]
    elif kind < 0.80:
        word = rng.choice(WORDS)
        text = [_text(rng) + " ", {"type": "bold", "text": word}, " " + _text(rng)]
        entry["text"] = text
        entry["text_entities"] = [
            {"type": "plain", "text": text[0]},
            text[1],
            {"type": "plain", "text": text[2]},
        ]
    elif kind < 0.85:
        entry |= {"photo": f"photos/photo_{mid}.jpg", "width": 1280, "height": 960, "text": _text(rng)}
    elif kind < 0.89:
        entry |= {"file": f"stickers/s{mid}.webp", "media_type": "sticker", "sticker_emoji": "🙂", "text": ""}
    elif kind < 0.92:
        entry |= {
            "file": f"voice/v{mid}.ogg",
            "media_type": "voice_message",
            "duration_seconds": 4,
            "text": "",
        }
    elif kind < 0.95:
        entry |= {"forwarded_from": "Some Channel", "text": _text(rng)}
    elif kind < 0.96:
        entry |= {
            "poll": {"question": "lunch?", "closed": False, "total_voters": 1, "answers": []},
            "text": "",
        }
    else:
        entry = {"id": mid, "type": "service", "date": entry["date"], "date_unixtime": str(ts),
                 "actor": partner_name, "actor_id": f"user{partner}", "action": "phone_call",
                 "duration_seconds": 60, "text": ""}  # fmt: skip
    if rng.random() < 0.1:
        entry["reply_to_message_id"] = max(1, mid - 3)
    if rng.random() < 0.05:
        entry["edited"] = entry["date"]
        entry["edited_unixtime"] = str(ts + 30)
    return entry


def _write_chat(f: TextIO, rng: random.Random, chat_id: int, kind: str, n: int, out_of_order: bool) -> None:
    name = f"Friend {chat_id}"
    f.write(f'"name": {json.dumps(name)},\n    "type": "{kind}",\n    "id": {chat_id},\n    "messages": [')
    ts = 1_500_000_000 + rng.randint(0, 10**7)
    for i in range(n):
        ts += rng.randint(1, 600)
        when = ts - 10**8 if out_of_order and i < n // 2 else ts  # an imported chat: old history last
        body = json.dumps(
            _message(rng, chat_id * 10 + i + 1, when, chat_id, name), ensure_ascii=False, indent=1
        )
        f.write(("\n     " if i == 0 else ",\n     ") + body.replace("\n", "\n     "))
    f.write("\n    ]\n   }")


def write_synthetic_export(path: Path, messages: int, seed: int = 0) -> dict[str, int]:
    """Stream a full-account export with about `messages` message entries to `path`."""
    rng = random.Random(seed)
    skipped_share = 0.08  # groups, channels, bots, Saved Messages
    personal = 400
    weights = [1 / (rank + 1) ** 0.9 for rank in range(personal)]
    scale = messages * (1 - skipped_share) / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    others = [("bot_chat", 2), ("saved_messages", 1), ("private_group", 12), ("public_supergroup", 6),
              ("public_channel", 4)]  # fmt: skip
    rest = messages - sum(sizes)
    n_other = sum(c for _, c in others)
    chats: list[tuple[str, int, bool]] = [("personal_chat", s, i == 7) for i, s in enumerate(sizes)]
    chats += [(kind, max(1, rest // n_other), False) for kind, count in others for _ in range(count)]
    rng.shuffle(chats)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{\n "about": "Here is the data you requested.",\n "personal_information": {\n')
        f.write(f'  "user_id": {ME},\n  "first_name": "Me",\n  "phone_number": "+00000000000"\n }},\n')
        f.write(' "chats": {\n  "about": "This page lists all chats from this export.",\n  "list": [')
        for index, (kind, n, out_of_order) in enumerate(chats):
            f.write("\n   {\n    " if index == 0 else ",\n   {\n    ")
            _write_chat(f, rng, 1_000_000 + index, kind, n, out_of_order)
        f.write("\n  ]\n }\n}\n")
    return {"messages": sum(n for _, n, _ in chats), "chats": len(chats), "personal_chats": personal}


def _import_once(export: Path, out: Path) -> None:
    """Child process: run the import, print its own timing and peak RSS as JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from collect.desktop import import_desktop_export

    start = time.perf_counter()
    summary = import_desktop_export(export, out, progress=False)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss
    print(json.dumps({"seconds": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "peak_rss_mib": round(peak_kib / 1024, 1),
                      "dialogs": summary.dialogs, "new_messages": summary.new_messages,
                      "total_messages": summary.total_messages}))  # fmt: skip


def _run_import(export: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_import", str(export), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000, help="message entries in the export")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_import", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._import:
        _import_once(Path(args._import[0]), Path(args._import[1]))
        return
    with tempfile.TemporaryDirectory(prefix="twin-collect-bench-") as tmp:
        export, out = Path(tmp) / "result.json", Path(tmp) / "raw"
        start = time.perf_counter()
        shape = write_synthetic_export(export, args.messages, args.seed)
        generate_s = time.perf_counter() - start
        first = _run_import(export, out)
        again = _run_import(export, out)  # the same export again: must add nothing
        print(json.dumps({
            "bench": "collect desktop import",
            "export_mb": round(export.stat().st_size / 1e6, 1),
            **shape,
            "generate_s": round(generate_s, 1),
            "import_s": first["seconds"],
            "import_cpu_s": first["cpu_s"],  # wall time depends on what else runs; CPU time much less
            "messages_per_s": round(shape["messages"] / first["seconds"]),
            "peak_rss_mib": first["peak_rss_mib"],
            "written": first["new_messages"],
            "reimport_s": again["seconds"],
            "reimport_cpu_s": again["cpu_s"],
            "reimport_written": again["new_messages"],
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        }))  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
