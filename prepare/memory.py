"""Memory: the person's own past exchanges, retrieved into the prompt (the IMPersona recipe: fine-tuning
plus a retrieved memory of the person).

An `Exchange` is one past exchange of the train split — what a partner said (a record's `instruction`)
and what the person replied (its `response`). A `Memory` holds them and ranks them against a query with
BM25 (the `bm25s` library; nothing is sent anywhere). The query (`memory_query`) is the partner's new
message plus the last turns before it; the best exchanges go into the prompt through `prepare.prompt`
(`Prompter.render(..., memories=...)`), the same code at training and at serving time.

Training never shows a record its own exchange (`exclude`); only the train split is ever remembered.

The file (`MEMORY_FILE`, written beside the adapter by finetune, read by serve): one JSON object a line,
`{"message": str, "reply": str}`, both non-empty; owner-only like every file of the person's chats.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from common.files import write_private_atomic
from prepare.jsonl import read_jsonl
from prepare.prompt import MAX_TURN_CHARS, Prompter, clip_text, record_turns
from prepare.records import Exchange, Record, Turn, is_blank

if TYPE_CHECKING:
    import bm25s

MEMORY_FILE = "memory.jsonl"
QUERY_TURNS = 2
"""Earlier turns that join the partner's new message in the query: what the chat is about right now."""
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""Words of two or more Unicode word characters (Cyrillic included; bm25s' default pattern, made explicit
so a change of the library's default cannot silently drop a script)."""


@lru_cache(maxsize=1)
def _bm25s() -> ModuleType:
    """bm25s, imported when a memory is first used (the server imports this module on start-up); its
    logger, which it sets to DEBUG itself, back to warnings."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@lru_cache(maxsize=1)
def _stopwords() -> tuple[str, ...]:
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_RUSSIAN

    return (*STOPWORDS_EN, *STOPWORDS_RUSSIAN)


def memory_query(context: Sequence[Turn], instruction: str) -> str:
    """What to search the memory with: the partner's new message plus the last `QUERY_TURNS` turns before
    it (each clipped as a prompt clips it)."""
    parts = [instruction, *(t.text for t in context[-QUERY_TURNS:])]
    return "\n".join(clip_text(p, MAX_TURN_CHARS) for p in parts)


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased words, English and Russian stopwords out (bm25s' tokenizer, no stemming)."""
    tokens = _bm25s().tokenize(
        list(texts),
        lower=True,
        token_pattern=TOKEN_PATTERN,
        stopwords=list(_stopwords()),
        return_ids=False,
        show_progress=False,
    )
    return [list(t) for t in tokens]


class Memory:
    """The person's past exchanges (train split), ranked against a query by BM25 over message + reply."""

    def __init__(self, exchanges: Iterable[Exchange]) -> None:
        # exact duplicates once, in first-seen order; an exchange with an empty side says nothing
        unique = dict.fromkeys(e for e in exchanges if e.message.strip() and e.reply.strip())
        self._exchanges: tuple[Exchange, ...] = tuple(unique)
        self._position = {e: i for i, e in enumerate(self._exchanges)}
        self._index: bm25s.BM25 | None = None
        self._vocabulary: frozenset[str] = frozenset()
        if self._exchanges:
            corpus = _tokenize([f"{e.message}\n{e.reply}" for e in self._exchanges])
            self._vocabulary = frozenset(word for doc in corpus for word in doc)
            self._index = _bm25s().BM25()
            self._index.index(corpus, show_progress=False)

    @classmethod
    def from_records(cls, records: Sequence[Record]) -> Memory:
        """The memory of train-split `records`: one exchange per record (instruction, response)."""
        return cls(Exchange(r.instruction, r.response) for r in records)

    def __len__(self) -> int:
        return len(self._exchanges)

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        return self._exchanges

    def retrieve(self, query: str, k: int, exclude: Exchange | None = None) -> list[Exchange]:
        """The `k` exchanges most relevant to `query`, best first; never `exclude` (a training record's
        own exchange), never one sharing no word with the query. [] for k <= 0, an empty memory or a
        query with no searchable words."""
        return self.retrieve_many([query], k, [exclude])[0]

    def retrieve_many(
        self, queries: Sequence[str], k: int, exclude: Sequence[Exchange | None] | None = None
    ) -> list[list[Exchange]]:
        """`retrieve` for many queries (training retrieves for every record)."""
        excluded = list(exclude) if exclude is not None else [None] * len(queries)
        if len(excluded) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(excluded)} exclusions")
        if k <= 0 or self._index is None:
            return [[] for _ in queries]
        index = self._index
        return [
            self._best(index, words, k, own) for words, own in zip(_tokenize(queries), excluded, strict=True)
        ]

    def _best(self, index: bm25s.BM25, words: list[str], k: int, exclude: Exchange | None) -> list[Exchange]:
        """The `k` best of bm25s' BM25 scores for `words`, ties in memory order. (bm25s' own `retrieve`
        selects with `np.argpartition`, which takes ~10 ms on 50,000 exchanges when, as here, nearly all
        scores tie at zero; only the exchanges sharing a word are sorted here.)"""
        words = [w for w in words if w in self._vocabulary]
        if not words:
            return []
        scores = index.get_scores(words)  # (exchanges,) float32; 0 = no word in common
        if exclude is not None and (own := self._position.get(exclude)) is not None:
            scores[own] = 0.0
        hits = np.flatnonzero(scores > 0)
        best = hits[np.argsort(-scores[hits], kind="stable")[:k]]
        return [self._exchanges[int(i)] for i in best]

    def save(self, path: Path) -> None:
        """Write the exchanges as JSONL (`MEMORY_FILE`), owner-only and atomically."""
        lines = (orjson.dumps({"message": e.message, "reply": e.reply}) + b"\n" for e in self._exchanges)
        write_private_atomic(path, b"".join(lines))

    @classmethod
    def load(cls, path: Path) -> Memory:
        """The memory saved at `path`; a bad line (or a file re-saved in another encoding) is a `ValueError`
        naming the file and the line (never its text: it is private)."""
        lines = read_jsonl(Path(path), fix=RETRAIN, redo=RETRAIN)
        return cls([_parse_exchange(obj, f"{path}:{number}") for number, obj in lines])


RETRAIN = f"train again with --memory-k to rewrite {MEMORY_FILE}, or turn memory off (--memory-k 0)"


def _parse_exchange(obj: Any, where: str) -> Exchange:
    if not isinstance(obj, dict):
        raise ValueError(f'{where}: expected a JSON object {{"message": str, "reply": str}}; {RETRAIN}')
    problems = [
        f"field {name!r} must be a non-empty string"
        for name in ("message", "reply")
        if not isinstance(obj.get(name), str) or is_blank(obj[name])
    ]
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}; {RETRAIN}")
    return Exchange(obj["message"], obj["reply"])


def record_memories(memory: Memory, records: Sequence[Record], k: int) -> list[list[Exchange]]:
    """The `k` exchanges retrieved for each record (its own exchange excluded): what its prompt shows."""
    queries = [memory_query(record_turns(r) or (), r.instruction) for r in records]
    return memory.retrieve_many(queries, k, [Exchange(r.instruction, r.response) for r in records])


def memory_prompts(prompter: Prompter, memory: Memory, records: Sequence[Record], k: int) -> list[str]:
    """Each record's prompt with its `k` retrieved memories (k = 0: the plain prompt), in `prompter`'s
    format: what the twin sees for a held-out record with memory on (the report measures on and off)."""
    memories = record_memories(memory, records, k)
    return [prompter.render_record(r, m)[0] for r, m in zip(records, memories, strict=True)]
