"""Benchmark of `prepare`: N synthetic raw messages → train/val records, timed end to end.

    .venv/bin/python bench/prepare_bench.py                     # 1M messages, ~4,000 dialogs
    .venv/bin/python bench/prepare_bench.py --messages 100000   # a quick look

The synthetic chats are shaped like real ones: dialog sizes from a heavy-tailed distribution, bursts of
messages minutes apart separated by silences of hours to weeks (some right at the 24 h boundary),
runs of one speaker, mixed English/Russian text with emoji, UTC offsets that change mid-dialog (DST,
travel), equal timestamps, lines out of order, re-exported duplicates, blank messages, long pastes,
dialogs where the person never replies, and ~1% messages carrying a secret. Generating the data is not
timed; reading, building, scrubbing, splitting and writing are, in a fresh process (wall and CPU time,
peak memory). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

WORDS = (
    "ok yes no sure thanks lol haha hey hi hello see you tomorrow today tonight later maybe really what why "
    "how when where who good great nice cool fine sorry wait call me back later now soon work home office "
    "meeting lunch dinner coffee movie game train bus taxi weekend friday monday ready done busy free love "
    "miss you too same here agreed let's go at the in on for with about just think know want need can't "
    "don't won't i'll you're it's that's this that there then because so but and or if "
    "привет пока да нет ок спасибо давай завтра сегодня вечером потом может что как где когда почему "
    "хорошо отлично круто норм понял поняла слушай смотри кстати короче ладно работа дом встреча кофе "
    "обед ужин кино выходные пятница понедельник занят свободен скучаю тоже согласен пошли буду уже ещё "
    "😂 🙂 👍 ❤️ 🔥 😅 🙏 ))) ..."
).split()
NAMES = [
    "Anna",
    "Иван Петров",
    "Mike",
    "Маша 🌸",
    "  Dr.  Who ",
    "+7 912 345-67-89",
    "Alex K",
    "Оля",
    "Sam",
    "",
]
OFFSETS_MIN = np.array([180, 0, -300, -240, 60, 120, 330, 540])


def _secret(rng: np.random.Generator) -> str:
    n = int(rng.integers(100, 999))
    options = [
        f"my email is user{n}@example.com",
        f"звони +7 (9{n // 10:02d}) {n}-{n % 90 + 10:02d}-{n % 89 + 10:02d}",
        f"call me 8 912 {n} 45 67 tonight",
        "карта 4111 1111 1111 1111, срок 12/27",
        f"пароль от вайфая: Qwerty{n}!",
        f"my password is hunter{n}",
        "IBAN DE89 3704 0044 0532 0130 00",
        f"token: ghp_{'aB3dE5fG7h' * 3}{n}xyz",
        "api key sk-proj-9f8e7d6c5b4a39281706f5e4d3c2b1a0ZZ",
        f"db at postgres://app:S3cret{n}@10.0.0.5:5432/prod",
        "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "-----END OPENSSH PRIVATE KEY-----",
        f"bot {n}456789:AAH4kG9z8mQ2wX7vB3nC5dE6fR1tY0uI-oP",
    ]
    return options[int(rng.integers(0, len(options)))]


def make_raw(folder: Path, n_messages: int, n_dialogs: int, seed: int = 0) -> int:
    """Write `n_messages` synthetic raw messages over about `n_dialogs` dialog files into `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = rng.lognormal(mean=0.0, sigma=1.2, size=n_dialogs)
    sizes = np.maximum(1, np.round(sizes / sizes.sum() * n_messages)).astype(np.int64)
    sizes[0] += n_messages - sizes.sum()  # exact total
    if sizes[0] < 1:
        sizes = np.maximum(1, sizes)
    words = np.array(WORDS, dtype=object)
    written = 0
    for d, size in enumerate(sizes.tolist()):
        dialog_id = 10_000_000 + d * 7919
        name = NAMES[d % len(NAMES)]
        # Timeline: bursts (seconds–minutes apart) separated by silences (hours–weeks).
        new_burst = rng.random(size) < 0.08
        gaps = np.where(
            new_burst,
            rng.choice([86_400, 86_520, 3 * 3600, 30 * 3600, 7 * 86_400], size) * rng.uniform(0.5, 1.5, size),
            rng.exponential(90, size),
        )
        gaps[rng.random(size) < 0.02] = 0  # same-second messages
        gaps[rng.random(size) < 0.005] = 86_400 + 120  # 1 day and 2 minutes: a gap
        t0 = 1_577_836_800 + int(rng.integers(0, 4 * 365 * 86_400))
        instants = (t0 + np.cumsum(gaps)).astype(np.int64)
        # UTC offset changes mid-dialog (DST, travel): compare instants, not wall clock.
        off_a, off_b = rng.choice(OFFSETS_MIN, 2)
        offsets = np.where(np.arange(size) < size // 2, off_a, off_b).astype(np.int64)
        local = (instants + offsets * 60).astype("datetime64[s]")
        stamps = np.datetime_as_string(local, unit="s")
        # Speakers in runs; some dialogs never hear back from the person.
        switch = rng.random(size) < 0.55
        out = (np.cumsum(switch) + d) % 2 == 1
        if d % 20 == 7:
            out[:] = False
        n_words = np.clip(rng.lognormal(1.6, 0.8, size).astype(np.int64), 1, 60)
        picks = words[rng.integers(0, len(words), int(n_words.sum()))]
        bounds = np.concatenate([[0], np.cumsum(n_words)])
        roll = rng.random(size)
        lines = []
        for i in range(size):
            if roll[i] < 0.01:
                text = _secret(rng)
            elif roll[i] < 0.02:
                text = " \n\t "
            elif roll[i] < 0.023:
                text = " ".join(picks[bounds[i] : bounds[i + 1]]) * 80  # a long paste
            else:
                text = " ".join(picks[bounds[i] : bounds[i + 1]])
            off = int(offsets[i])
            sign = "+" if off >= 0 else "-"
            date = f"{stamps[i]}{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
            lines.append(
                orjson.dumps(
                    {
                        "id": i + 1,
                        "date": date,
                        "out": bool(out[i]),
                        "message": text,
                        "dialog_id": dialog_id,
                        "dialog_name": name,
                    }  # fmt: skip
                )
            )
        if size > 10:  # a few lines out of order, and a re-exported duplicate
            j = int(rng.integers(0, size - 2))
            lines[j], lines[j + 1] = lines[j + 1], lines[j]
            lines.append(lines[int(rng.integers(0, size))])
        (folder / f"{dialog_id}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        written += len(lines)
    return written


_TIMED = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from prepare.config import PrepareConfig
from prepare.pipeline import prepare
wall, cpu = time.perf_counter(), time.process_time()
stats = prepare(PrepareConfig(raw=Path({raw!r}), out=Path({out!r})))
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "stats": stats}}))
"""


def main(messages: int = 1_000_000, dialogs: int = 4000, seed: int = 0, keep: Path | None = None) -> dict:
    """Generate a corpus, then time one `prepare` run on it in a fresh process (imports not timed).

    Args:
        messages: How many raw messages to generate.
        dialogs: Roughly how many dialog files to spread them over.
        seed: Seed of the generator.
        keep: Write raw/ and prepared/ here and keep them (default: a temp dir, removed after).
    """
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        root = Path(keep or tmp)
        raw, out = root / "raw", root / "prepared"
        t = time.perf_counter()
        lines = make_raw(raw, messages, dialogs, seed)
        generate_s = time.perf_counter() - t
        load_before = os.getloadavg()[0]
        code = _TIMED.format(root=str(Path(__file__).resolve().parents[1]), raw=str(raw), out=str(out))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        timed = json.loads(run.stdout.strip().splitlines()[-1])
        stats = timed["stats"]
        result = {
            "bench": "prepare raw->records",
            "raw_lines": lines,
            "dialogs": stats["dialogs"],
            "records": stats["records"],
            "scrubbed": sum(stats["scrubbed"].values()),
            "seconds": round(timed["wall"], 2),
            "cpu_seconds": round(timed["cpu"], 2),
            "messages_per_s": round(lines / timed["wall"]),
            "peak_rss_mib": round(timed["rss_mib"]),
            "generate_seconds": round(generate_s, 1),
            "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "cpus": os.cpu_count(),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
