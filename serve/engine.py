"""The serve engine's scheduler: one worker thread owns the model and decodes every live request together.

Requests wait in a bounded queue; the worker admits them into free *slots* of the runner's static KV
cache and prefills them together: between two decode steps, one prefill chunk of at most
`runner.prefill_tokens` (padded) prompt tokens — the next pieces of the prompts in prefill, oldest
first, then of newly admitted ones (`serve.prefill.plan_chunk`) — each prompt into its own slot, a long
prompt over several chunks. A prompt's first token is sampled as its last piece is written. Then one
decode step runs for all generating slots at once (continuous batching: a request joins or leaves
between any two steps). The device side — model, compile, CUDA graphs, the step itself
— is `serve.runner`; this module is the queue, the slots, admission, deliveries and stats.

While the device runs step k, the worker turns step k-1's tokens into deliveries (one step of
lookahead); a slot that finished at step k-1 just wastes its row of step k. Tokens reach each request's
asyncio side in one `call_soon_threadsafe` per step; text, stop strings and HTTP live there, not here.

Imports only torch and litgpt (the GPU benchmarks drive this without the web stack).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from litgpt.model import GPT

from serve.engine_config import EngineConfig
from serve.multi_lora import AdapterUpdates
from serve.prefill import ChunkRow, plan_chunk
from serve.runner import LaunchedStep, Runner, decode_buckets

__all__ = [
    "EndReason",
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EngineError",
    "EngineNotReady",
    "EngineStopped",
    "GenerationRequest",
    "Sequence",
    "SequenceState",
    "decode_buckets",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

EndReason = Literal["stop", "stop_string", "length", "timeout", "cancelled", "queue_timeout", "error"]
"""Why a sequence ended (also the keys of `Engine.stats()["finished"]`): "stop", the end-of-sequence
token; "stop_string", the consumer found a stop string in the text and cancelled; "length",
max_new_tokens generated; "timeout", the request's timeout passed while generating; "cancelled", the
consumer went away; "queue_timeout", the timeout passed before a slot was free (`tokens()` raises
EngineBusy); "error", generation failed (`tokens()` raises EngineError) or the engine stopped (EngineStopped).
"""


class EngineBusy(Exception):
    """The queue is full (or a request waited longer than its timeout for a slot): retry later."""


class EngineNotReady(Exception):
    """The model is still loading / warming up, or failed to load."""


class EngineError(RuntimeError):
    """Generation failed on the server's side."""


class EngineStopped(EngineError):
    """The engine stopped (the server is shutting down) before the reply was done: retry the request."""


SHUTTING_DOWN = "the server is shutting down"


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    timeout_s: float | None = None
    """Seconds from submission until the request ends: waiting in the queue, it fails as busy;
    generating, it ends with the end reason "timeout"."""
    ignore_eos: bool = False
    """Benchmarks only: keep generating past the end-of-sequence token."""
    twin: int = 0
    """The twin slot whose adapter generates (several twins on one base, `EngineConfig.twin_slots`);
    0: the base, or with one twin the adapter merged into it."""
    eos_ids: frozenset[int] | None = None
    """Tokens that end the reply (that twin's prompt format); None: the engine's."""


class SequenceState(enum.Enum):
    """Where a sequence is, as the worker thread sees it: QUEUED → PREFILLING → RUNNING → FINISHED, or
    FINISHED from any of them (cancelled, timed out or shut down before it got a slot or its reply)."""

    QUEUED = "queued"
    """Waiting for a free slot."""
    PREFILLING = "prefilling"
    """Has a slot; its prompt is being written into it, chunk by chunk (`Sequence.prefilled` so far)."""
    RUNNING = "running"
    """Prefilled into a slot, generating."""
    FINISHED = "finished"
    """Ended (see `Sequence.end_reason`); its slot, if it had one, is free."""


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request's life in the engine; its tokens come out of `tokens()` on the submitting event loop."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    id: int = field(default_factory=lambda: next(_ids))
    state: SequenceState = SequenceState.QUEUED  # written by the worker thread only
    end_reason: EndReason | None = None  # set as the state turns FINISHED
    error: str | None = None  # what went wrong, with the end reasons "error" and "queue_timeout"
    shut_down: bool = False  # ended by `Engine.stop` (end reason "error"): `tokens()` raises EngineStopped
    cancel_reason: Literal["cancelled", "stop_string"] | None = None
    """Set by the consumer (`cancel`); the worker ends the sequence with it before its next step."""
    slot: int = -1
    prefilled: int = 0  # prompt tokens in the slot's cache so far
    n_generated: int = 0
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _buffer: list[int] = field(default_factory=list)  # event-loop side from here on
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _end_delivered: bool = False

    def cancel(self, stop_string: bool = False) -> None:
        """Stop generating (the client went away, or its reply hit a stop string): the worker frees the
        slot before its next step."""
        if self.cancel_reason is None:
            self.cancel_reason = "stop_string" if stop_string else "cancelled"

    def _receive(self, tokens: list[int], end: EndReason | None) -> None:  # on the event loop
        self._buffer.extend(tokens)
        if end is not None:
            self._end_delivered = True
        self._event.set()

    async def tokens(self) -> AsyncIterator[list[int]]:
        """New token ids as they come (several per item when the consumer lags); raises on failure."""
        while True:
            await self._event.wait()
            self._event.clear()
            # the end is read with the tokens it came with: the last tokens and the end may arrive while
            # the consumer is busy with this chunk (a stream sending it), and come out on the next round
            ended, chunk, self._buffer = self._end_delivered, self._buffer, []
            if chunk:
                yield chunk
            if ended:
                if self.end_reason == "queue_timeout":
                    raise EngineBusy(self.error or "timed out waiting for a free generation slot")
                if self.end_reason == "error":
                    failure = EngineStopped if self.shut_down else EngineError
                    raise failure(self.error or "generation failed")
                return


Delivery = tuple[Sequence, list[int], EndReason | None]
"""New tokens for a sequence, and its end reason if they are its last."""


@dataclass
class _Step:
    """A launched decode step whose tokens are not yet delivered."""

    seqs: list[Sequence | None]  # slot → sequence generating there at launch time
    launched: LaunchedStep


class Engine:
    """Owns the model in one worker thread; `submit` from any event loop, `tokens()` there."""

    def __init__(
        self,
        build_model: Callable[[], GPT],
        config: EngineConfig,
        eos_ids: tuple[int, ...] = (),
        twins: Mapping[int, AdapterUpdates] | None = None,
    ) -> None:
        """`twins`: the adapters loaded into twin slots (1 .. config.twin_slots) before warm-up."""
        self.config = config
        self.eos_ids = frozenset(eos_ids)
        self._build_model = build_model
        self._initial_twins = dict(twins or {})
        self._controls: collections.deque[tuple[Callable[[Runner], Any], Future[Any]]] = collections.deque()
        self.state: Literal["created", "loading", "ready", "failed", "stopped"] = "created"
        self.load_error: str | None = None
        self.startup_seconds: float | None = None
        self.runner: Runner | None = None  # built by the worker thread
        self.buckets = decode_buckets(config.max_batch_size)
        self._lock = threading.Condition(threading.RLock())
        self._queue: collections.deque[Sequence] = collections.deque()
        self._live = 0  # queued + generating, under _lock
        self._slots: list[Sequence | None] = [None] * config.max_batch_size
        self._stopping = False
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
        self.steps = 0  # decode steps run while serving (a step decodes every busy slot)
        self.prefill_chunks = 0  # prefill chunks run while serving
        self.prefill_tokens = 0  # prompt tokens prefilled while serving
        self.tokens_generated = 0
        self.finished: collections.Counter[EndReason] = collections.Counter()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm up in the worker thread; `ready` turns true when requests can be served."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self.state = "loading"
        self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="twin-model-worker", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.state == "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def compiled(self) -> bool:
        return self.runner is not None and self.runner.compiled

    @property
    def compile_error(self) -> str | None:
        return None if self.runner is None else self.runner.compile_error

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        runner = self.runner
        return {
            "state": self.state,
            "device": None if runner is None else runner.device_name(),
            "dtype": None if runner is None else str(runner.dtype).removeprefix("torch."),
            "compiled": self.compiled,
            "fused_blocks": 0 if runner is None else runner.fused_blocks,
            "triton_kernels": runner is not None and runner.triton_kernels(),
            "compile_error": self.compile_error,
            "load_error": self.load_error,
            "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 3),
            "compile_seconds": None
            if runner is None or runner.compile_seconds is None
            else round(runner.compile_seconds, 3),
            "compile_cache_dir": None if runner is None else runner.compile_cache.dir,
            "compile_cache_warm": runner is not None and runner.compile_cache.warm,
            "compile_cache_counters": {} if runner is None else dict(runner.cache_counters),
            "warmup_marks": {} if runner is None else dict(runner.warmup_marks),
            "prefill_chunk_tokens": None if runner is None else runner.prefill_tokens,
            "max_batch_size": self.config.max_batch_size,
            "max_seq_length": self.config.max_seq_length,
            "active": sum(s is not None for s in self._slots),
            "prefilling": sum(s is not None and s.state is SequenceState.PREFILLING for s in self._slots),
            "queued": queued,
            "decode_steps": self.steps,
            "prefill_chunks": self.prefill_chunks,
            "prefill_tokens": self.prefill_tokens,
            "tokens_generated": self.tokens_generated,
            "finished": dict(self.finished),
        }

    # ---- asyncio side ----------------------------------------------------------------------------

    def _not_ready(self) -> EngineNotReady:
        """Why no work is taken: loading, failed to load, or stopping."""
        if self._stopping or self.state == "stopped":
            return EngineNotReady(SHUTTING_DOWN)
        return EngineNotReady(self.load_error or "the model is still loading")

    def submit(self, request: GenerationRequest) -> Sequence:
        """Queue `request` (from a running event loop). Raises EngineNotReady, EngineBusy or ValueError."""
        if self.state != "ready":
            raise self._not_ready()
        n = len(request.prompt_ids)
        if n < 1:
            raise ValueError("the prompt is empty")
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= request.twin <= self.config.twin_slots:
            raise ValueError(f"twin slot {request.twin} outside 0 .. {self.config.twin_slots}")
        if n + request.max_new_tokens > self.config.max_seq_length:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds the "
                f"{self.config.max_seq_length}-token cache"
            )
        deadline = None if request.timeout_s is None else time.perf_counter() + request.timeout_s
        seq = Sequence(request=request, loop=asyncio.get_running_loop(), deadline=deadline)
        with self._lock:
            if self._stopping:  # the worker may have emptied the queue for the last time already
                raise self._not_ready()
            if self._live >= self.config.max_batch_size + self.config.max_queue:
                raise EngineBusy(
                    f"all {self.config.max_batch_size} generation slots are busy and "
                    f"{self.config.max_queue} requests are waiting"
                )
            self._live += 1
            self._queue.append(seq)
            self._lock.notify()
        return seq

    def run_in_worker(self, fn: Callable[[Runner], T]) -> Future[T]:
        """Run `fn(runner)` in the worker thread between two decode steps (e.g. load a twin's adapter);
        its result or exception comes through the future (EngineStopped: the engine stopped first). Raises
        EngineNotReady before the model is up and once the engine is stopping."""
        if self.state != "ready":
            raise self._not_ready()
        future: Future[T] = Future()
        with self._lock:
            if self._stopping:
                raise self._not_ready()
            self._controls.append((fn, future))
            self._lock.notify()
        return future

    # ---- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.no_grad():  # grad mode is per thread
            try:
                runner = Runner(self._build_model(), self.config)
                self.runner = runner
                for twin, updates in self._initial_twins.items():
                    runner.write_twin(twin, updates)
                self._initial_twins = {}  # the runner's copy is the one kept
                runner.warm_up()
            except Exception as e:  # reported through /health; the server keeps answering 503
                log.exception("loading the model failed")
                self.load_error = f"{type(e).__name__}: {e}"
                self.state = "failed"
                self._ready.set()
                return
            self.startup_seconds = time.perf_counter() - self._started_at
            self.state = "ready"
            self._ready.set()
            cache = runner.compile_cache
            log.info(
                "model ready in %.1f s (%s, compiled: %s%s)",
                self.startup_seconds,
                runner.device_name(),
                runner.compiled,
                ""
                if cache.dir is None
                else f", compile cache {'warm' if cache.warm else 'cold'}: {runner.cache_counters}",
            )
            self._serve(runner)

    def _serve(self, runner: Runner) -> None:
        in_flight: _Step | None = None
        while True:
            try:
                busy = any(s is not None for s in self._slots)
                if not self._admit(runner, wait=in_flight is None and not busy):
                    break  # stopping
                self._run_controls(runner)
                self._flush()
                step = None
                running = [
                    s if s is not None and s.state is SequenceState.RUNNING else None for s in self._slots
                ]
                active = [i for i, s in enumerate(running) if s is not None]
                if active:
                    b = next(b for b in self.buckets if b > active[-1])
                    step = _Step(seqs=running[:b], launched=runner.launch(b))
                    self.steps += 1
                if in_flight is not None:
                    self._deliver_step(in_flight)
                in_flight = step
                self._flush()
            except Exception as e:
                log.exception("a generation step failed; failing the requests in flight")
                self._fail_active(f"generation failed on the server ({type(e).__name__})")
                in_flight = None
                self._flush()
        self._shutdown()

    def _admit(self, runner: Runner, wait: bool) -> bool:
        """Give free slots to queued requests and run one prefill chunk (the prompts in prefill first,
        then the new ones; `serve.prefill.plan_chunk`); returns False when the engine is stopping."""
        with self._lock:
            if wait and not self._queue and not self._controls and not self._stopping:
                self._lock.wait(timeout=0.5)
            if self._stopping:
                return False
            self._drop_stale_queued()
            self._drop_stale_prefilling()
            prefilling = sorted(
                (s for s in self._slots if s is not None and s.state is SequenceState.PREFILLING),
                key=lambda s: s.id,
            )
            candidates = prefilling + list(itertools.islice(self._queue, self._slots.count(None)))
            if not candidates:
                return True
            lengths = plan_chunk(
                [len(s.request.prompt_ids) - s.prefilled for s in candidates], runner.prefill_tokens
            )
            chosen = candidates[: len(lengths)]
            for seq in chosen[len(prefilling) :]:  # the queue's first ones, in order
                self._queue.popleft()
                seq.slot = self._slots.index(None)
                seq.state = SequenceState.PREFILLING
                self._slots[seq.slot] = seq  # before the prefill: if that fails, it fails with the slot
                runner.reserve(seq.slot, seq.request.temperature, seq.request.top_p, seq.request.twin)
        rows = []
        for seq, n in zip(chosen, lengths, strict=True):
            prompt = seq.request.prompt_ids
            rows.append(ChunkRow(seq.slot, seq.prefilled, prompt[seq.prefilled : seq.prefilled + n], False))
            seq.prefilled += n
            rows[-1].last = seq.prefilled == len(prompt)
        firsts = runner.prefill_chunk(rows)
        self.prefill_chunks += 1
        self.prefill_tokens += sum(lengths)
        now = time.perf_counter()
        finished = [seq for seq, row in zip(chosen, rows, strict=True) if row.last]
        for seq, token in zip(finished, firsts, strict=True):
            seq.state = SequenceState.RUNNING
            seq.first_token_at = now
            self._accept(seq, token)
        self._flush()  # first tokens go out now, not after the next decode step
        return True

    def _drop_stale_prefilling(self) -> None:
        """End the sequences in prefill that were cancelled or ran out of time (frees their slots)."""
        now = time.perf_counter()
        for seq in self._slots:
            if seq is None or seq.state is not SequenceState.PREFILLING:
                continue
            if seq.cancel_reason is not None:
                self._finish(seq, seq.cancel_reason)
            elif seq.deadline is not None and now > seq.deadline:
                self._finish(seq, "timeout")

    def _drop_stale_queued(self) -> None:  # under _lock
        now = time.perf_counter()
        keep: collections.deque[Sequence] = collections.deque()
        for seq in self._queue:
            if seq.cancel_reason is not None:
                self._finish(seq, seq.cancel_reason)
            elif seq.deadline is not None and now > seq.deadline:
                seq.error = "timed out waiting for a free generation slot"
                self._finish(seq, "queue_timeout")
            else:
                keep.append(seq)
        self._queue = keep

    def _deliver_step(self, step: _Step) -> None:
        """Wait for a launched step and hand each slot's new token to its sequence."""
        tokens = step.launched.tokens()
        for slot, seq in enumerate(step.seqs):
            if seq is not None and seq.state is SequenceState.RUNNING and seq.slot == slot:
                self._accept(seq, tokens[slot])

    def _accept(self, seq: Sequence, token: int) -> None:
        """A new token for a generating sequence: deliver it, or end the sequence."""
        req = seq.request
        if seq.cancel_reason is not None:
            self._finish(seq, seq.cancel_reason)
            return
        if token in (self.eos_ids if req.eos_ids is None else req.eos_ids) and not req.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        self.tokens_generated += 1
        if seq.n_generated >= req.max_new_tokens:
            self._finish(seq, "length", token)
        elif seq.deadline is not None and time.perf_counter() > seq.deadline:
            self._finish(seq, "timeout", token)
        else:
            self._outbox.setdefault(seq.loop, []).append((seq, [token], None))

    def _finish(self, seq: Sequence, reason: EndReason, token: int | None = None) -> None:
        if seq.state is SequenceState.FINISHED:
            return
        seq.state = SequenceState.FINISHED
        seq.end_reason = reason
        self.finished[reason] += 1
        if 0 <= seq.slot < len(self._slots) and self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None
        with self._lock:  # re-entrant: also called under it
            self._live -= 1
        self._outbox.setdefault(seq.loop, []).append((seq, [] if token is None else [token], reason))

    def _fail_active(self, message: str) -> None:
        for seq in self._slots:
            if seq is not None:
                seq.error = message
                self._finish(seq, "error")

    def _run_controls(self, runner: Runner) -> None:
        """Run the callables `run_in_worker` queued, between two decode steps."""
        while True:
            with self._lock:
                if not self._controls:
                    return
                fn, future = self._controls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(runner))
            except Exception as e:  # the caller's to report
                future.set_exception(e)

    def twin_in_use(self, twin: int) -> bool:
        """Whether a queued or live request generates with twin slot `twin` (call in the worker)."""
        with self._lock:
            queued = any(s.request.twin == twin for s in self._queue)
        return queued or any(s is not None and s.request.twin == twin for s in self._slots)

    def _shutdown(self) -> None:
        with self._lock:
            controls, self._controls = list(self._controls), collections.deque()
        for _, future in controls:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineStopped(SHUTTING_DOWN))
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
        for seq in queued + [s for s in self._slots if s is not None]:
            seq.error, seq.shut_down = SHUTTING_DOWN, True
            self._finish(seq, "error")
        self._flush()

    def _flush(self) -> None:
        """Hand this step's tokens to each event loop in one call."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[Delivery]) -> None:
    for seq, tokens, end in items:
        seq._receive(tokens, end)
