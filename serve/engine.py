"""The model worker: one thread owns the model and decodes every live request together.

Requests wait in a bounded queue; the worker admits them into free *slots* of a static KV cache
(prefilling each prompt into its slot), then runs one decode step for all busy slots at once
(continuous batching: a request joins or leaves between any two steps). The decode step — model,
sampler and the update of the engine's token/position buffers — is `torch.compile`d and recorded as
CUDA graphs on GPU, per batch bucket (1, 2, 4, ... up to the slot count), during warm-up, before the
engine says it is ready. The graphs are recorded by hand (`torch.cuda.graph`), reading and writing the
engine's own buffers: a step is one graph launch, with no input copies. Each bucket has two graphs
that take turns, so step k+1 is never a relaunch of the executable still running step k (a
precaution for the one-step lookahead below; not measured apart from the rest of the change).

While the GPU runs step k, the worker turns step k-1's tokens into deliveries (one step of lookahead);
a slot that finished at step k-1 just wastes its row of step k. Tokens reach each request's asyncio
side in one `call_soon_threadsafe` per step; text, stop strings and HTTP live there, not here.

Imports only torch and litgpt (the GPU benchmark drives this without the web stack).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from litgpt.model import GPT

from serve import kernels
from serve.generate import decode_step, fuse_parallel_blocks, prefill, setup_caches

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "error"]


class EngineBusy(Exception):
    """The queue is full (or a request waited longer than its timeout for a slot): retry later."""


class EngineNotReady(Exception):
    """The model is still loading / warming up, or failed to load."""


class EngineError(RuntimeError):
    """Generation failed on the server's side."""


@dataclass
class EngineConfig:
    """How the worker sizes its batch and cache. Each field is checked by `Engine.__init__`."""

    max_batch_size: int = 16
    """Slots decoded together (requests generating at once); the KV cache holds this many sequences."""
    max_seq_length: int = 2048
    """Tokens per slot (prompt + reply); at most the model's context length."""
    max_queue: int = 64
    """Requests that may wait for a slot; one more is answered EngineBusy (HTTP 503)."""
    compile: bool | None = None
    """torch.compile the decode step (and record CUDA graphs on GPU). None: on for CUDA, off on CPU."""
    compile_tuning: bool = False
    """Let inductor benchmark its kernels' launch configs while compiling (coordinate descent, as
    gpt-fast and `litgpt generate --compile` do). Off: on an H100 at Falcon-7B's shape it made the
    compile 2.3x longer (82 s vs 35 s for batch 1) and the step 5% slower (7.12 vs 6.80 ms)."""
    fuse_blocks: bool = True
    """Fuse each Falcon-style parallel block's four matmuls into two (`serve.generate.ParallelBlock`):
    same results, fewer and larger GEMVs. Off: litgpt's blocks as they are (for comparisons)."""
    prefill_token_budget: int = 4096
    """Prompt tokens prefilled between two decode steps (at least one request), bounding the stall
    a burst of new prompts causes for streams that are already generating."""
    warmup_prompt_tokens: int = 512
    """Length of the warm-up prompt (capped by max_seq_length - 1)."""

    def problems(self) -> list[str]:
        out = []
        if self.max_batch_size < 1:
            out.append("max_batch_size must be at least 1")
        if self.max_seq_length < 2:
            out.append("max_seq_length must be at least 2")
        if self.max_queue < 0:
            out.append("max_queue must be 0 or more")
        if self.prefill_token_budget < 1:
            out.append("prefill_token_budget must be at least 1")
        return out


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    timeout_s: float | None = None
    """Seconds from submission until the request ends: waiting in the queue, it fails as busy;
    generating, it ends with finish reason "length"."""
    ignore_eos: bool = False
    """Benchmarks only: keep generating past the end-of-sequence token."""


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request's life in the engine; its tokens come out of `tokens()` on the submitting event loop."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    id: int = field(default_factory=lambda: next(_ids))
    slot: int = -1
    n_generated: int = 0
    finish_reason: FinishReason | None = None
    timed_out: bool = False
    error: str | None = None
    busy: bool = False
    """The error is "waited too long for a slot" (EngineBusy on the asyncio side)."""
    cancelled: bool = False
    stop_string: bool = False
    done: bool = False  # worker side: slot released / dropped
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _buffer: list[int] = field(default_factory=list)
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False  # asyncio side: finish seen

    def cancel(self, stop_string: bool = False) -> None:
        """Stop generating (the client went away, or its reply hit a stop string): the worker frees the
        slot before its next step."""
        if not self.cancelled:
            self.stop_string = stop_string
            self.cancelled = True

    def _receive(self, tokens: list[int], finish: FinishReason | None) -> None:  # on the event loop
        self._buffer.extend(tokens)
        if finish is not None:
            self._closed = True
        self._event.set()

    async def tokens(self) -> AsyncIterator[list[int]]:
        """New token ids as they come (several per item when the consumer lags); raises on failure."""
        while True:
            await self._event.wait()
            self._event.clear()
            chunk, self._buffer = self._buffer, []
            if chunk:
                yield chunk
            if self._closed:
                if self.finish_reason == "error":
                    raise (EngineBusy if self.busy else EngineError)(self.error or "generation failed")
                return


@dataclass
class _Step:
    """A launched decode step whose tokens are not yet delivered."""

    seqs: list[Sequence | None]  # slot → sequence at launch time
    host: torch.Tensor  # (max_batch,) int64, filled asynchronously
    event: torch.cuda.Event | None


def decode_buckets(max_batch: int) -> list[int]:
    """Batch sizes the decode step runs at: powers of two below max_batch, and max_batch."""
    return sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})


class Engine:
    """Owns the model in one worker thread; `submit` from any event loop, `tokens()` there."""

    def __init__(
        self,
        build_model: Callable[[], GPT],
        config: EngineConfig,
        eos_ids: tuple[int, ...] = (),
    ) -> None:
        problems = config.problems()
        if problems:
            raise ValueError("engine settings: " + "; ".join(problems))
        self.config = config
        self.eos_ids = frozenset(eos_ids)
        self._build_model = build_model
        self.state: Literal["created", "loading", "ready", "failed", "stopped"] = "created"
        self.load_error: str | None = None
        self.compile_error: str | None = None
        self.compiled = False
        self.fused_blocks = 0
        self.startup_seconds: float | None = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.model: GPT | None = None
        self.buckets = decode_buckets(config.max_batch_size)
        self._lock = threading.Condition(threading.RLock())
        self._queue: collections.deque[Sequence] = collections.deque()
        self._live = 0  # queued + generating, under _lock
        self._slots: list[Sequence | None] = [None] * config.max_batch_size
        self._stopping = False
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: dict[
            asyncio.AbstractEventLoop, list[tuple[Sequence, list[int], FinishReason | None]]
        ] = {}
        self.steps = 0  # decode steps run (a step decodes every busy slot)
        self.tokens_generated = 0
        self.finished: collections.Counter[str] = collections.Counter()  # by finish reason

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
        return {
            "state": self.state,
            "device": self.device_name(),
            "dtype": str(self.dtype).removeprefix("torch.") if self.dtype else None,
            "compiled": self.compiled,
            "fused_blocks": self.fused_blocks,
            "triton_kernels": kernels.enabled and kernels.available() and self.device_is_cuda(),
            "compile_error": self.compile_error,
            "load_error": self.load_error,
            "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 3),
            "max_batch_size": self.config.max_batch_size,
            "max_seq_length": self.config.max_seq_length,
            "active": sum(s is not None for s in self._slots),
            "queued": queued,
            "decode_steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "finished": dict(self.finished),
        }

    def device_is_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def device_name(self) -> str | None:
        if self.device is None:
            return None
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    # ---- asyncio side ----------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Sequence:
        """Queue `request` (from a running event loop). Raises EngineNotReady, EngineBusy or ValueError."""
        if self.state != "ready":
            raise EngineNotReady(self.load_error or "the model is still loading")
        n = len(request.prompt_ids)
        if n < 1:
            raise ValueError("the prompt is empty")
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if n + request.max_new_tokens > self.config.max_seq_length:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds the "
                f"{self.config.max_seq_length}-token cache"
            )
        deadline = None if request.timeout_s is None else time.perf_counter() + request.timeout_s
        seq = Sequence(request=request, loop=asyncio.get_running_loop(), deadline=deadline)
        with self._lock:
            if self._live >= self.config.max_batch_size + self.config.max_queue:
                raise EngineBusy(
                    f"all {self.config.max_batch_size} generation slots are busy and "
                    f"{self.config.max_queue} requests are waiting"
                )
            self._live += 1
            self._queue.append(seq)
            self._lock.notify()
        return seq

    # ---- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.no_grad():  # grad mode is per thread
            try:
                self._load()
            except Exception as e:  # reported through /health; the server keeps answering 503
                log.exception("loading the model failed")
                self.load_error = f"{type(e).__name__}: {e}"
                self.state = "failed"
                self._ready.set()
                return
            self.startup_seconds = time.perf_counter() - self._started_at
            self.state = "ready"
            self._ready.set()
            log.info(
                "model ready in %.1f s (%s, compiled: %s)",
                self.startup_seconds,
                self.device_name(),
                self.compiled,
            )
            self._serve()

    def _load(self) -> None:
        cfg = self.config
        model = self._build_model()
        if cfg.fuse_blocks:
            self.fused_blocks = fuse_parallel_blocks(model)
        setup_caches(model, cfg.max_batch_size, cfg.max_seq_length)
        self.model = model
        self.device = model.transformer.wte.weight.device  # the head may be a LoRA layer (NF4 base)
        self.dtype = model.transformer.wte.weight.dtype
        self.vocab_size = model.config.vocab_size
        B, dev = cfg.max_batch_size, self.device
        self._tokens = torch.zeros(B, dtype=torch.int64, device=dev)  # last token of each slot
        self._pos = torch.zeros(B, dtype=torch.int64, device=dev)  # where that token goes in the cache
        self._temperature = torch.zeros(B, dtype=torch.float32, device=dev)
        self._top_p = torch.ones(B, dtype=torch.float32, device=dev)
        pin = dev.type == "cuda"
        # two buffers for decode steps (one in flight, one being launched), one for prefills
        self._host = [torch.zeros(B, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._host_prefill = torch.zeros(1, dtype=torch.int64, pin_memory=pin)
        self._flip = 0
        self._decode: Callable[..., torch.Tensor] = decode_step
        self._graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self._turn = 0
        want_compile = cfg.compile if cfg.compile is not None else dev.type == "cuda"
        # one graph with our Triton kernels; if that fails, without them; then let dynamo split the
        # graph; last, eager (serve.kernels.enabled stays as the last attempt left it)
        attempts = [(True, True)] if kernels.enabled and kernels.available() else []
        attempts += [(True, False), (False, False)]
        for fullgraph, with_kernels in attempts if want_compile else ():
            kernels.enabled = with_kernels
            try:
                self._decode = torch.compile(decode_step, fullgraph=fullgraph)
                self.compiled = True
                with torch._inductor.config.patch(coordinate_descent_tuning=cfg.compile_tuning):
                    self._warm_up()  # compiles here, on the first calls, then records the graphs
                return
            except Exception as e:  # serve rather than not at all; /health says why
                attempt = f"fullgraph={fullgraph}, kernels={with_kernels}"
                log.exception("compiling the decode step (%s) failed", attempt)
                self.compile_error = f"{attempt}: {type(e).__name__}: {e}"[:500]
                self.compiled = False
                self._graphs = {}
                torch._dynamo.reset()
        self._decode = decode_step
        self._warm_up()

    def _warm_up(self) -> None:
        """Run every code path once (and compile / record CUDA graphs) before serving."""
        assert self.model is not None
        n = max(1, min(self.config.warmup_prompt_tokens, self.config.max_seq_length - 1))
        for length in sorted({min(16, n), n}):
            prompt = torch.arange(length, device=self.device) % self.vocab_size
            prefill(self.model, prompt, 0, self._temperature[:1], self._top_p[:1])
        self._pos.fill_(min(n, self.config.max_seq_length - 1))
        self._temperature.fill_(1.0)  # sampling, not only argmax (eager: each branch runs once)
        if self.compiled:
            side = torch.cuda.Stream(self.device) if self.device_is_cuda() else None
            if side is not None:  # warm-up and capture off the default stream, as torch.cuda.graph wants
                side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for b in self.buckets:
                    for _ in range(2):  # compiles (first bucket, then once more with a dynamic batch size)
                        self._step(b)
                if side is not None:
                    self._graphs = self._record_graphs(side)
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
        for b in self.buckets:
            for _ in range(2):  # every path once; replays each graph once (the first launch uploads it)
                self._launch(b, [None] * b)
        self._sync()
        self._tokens.zero_()
        self._pos.zero_()
        self._temperature.zero_()
        self.steps = 0  # count served steps only

    def _step(self, b: int) -> None:
        """One decode step for slots [0, b), in place on the engine's buffers (what a graph records)."""
        tokens = self._decode(
            self.model,
            self._tokens[:b].view(b, 1),
            self._pos[:b].view(b, 1),
            self._temperature[:b],
            self._top_p[:b],
        )  # (b,)
        self._tokens[:b].copy_(tokens)
        # idle slots keep stepping; the clamp keeps their (ignored) writes inside the cache
        self._pos[:b].add_(1).clamp_(max=self.config.max_seq_length - 1)

    def _record_graphs(self, stream: torch.cuda.Stream) -> dict[int, list[torch.cuda.CUDAGraph]]:
        """Two CUDA graphs of `_step` per bucket, sharing one memory pool (they never run at once, and
        nothing a graph allocates outlives its replay: results land in the engine's buffers)."""
        pool = torch.cuda.graph_pool_handle()
        graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        for b in self.buckets:
            graphs[b] = []
            for _ in range(2):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self._step(b)
                graphs[b].append(graph)
        return graphs

    def _sync(self) -> None:
        if self.device_is_cuda():
            torch.cuda.synchronize(self.device)

    def _serve(self) -> None:
        in_flight: _Step | None = None
        while True:
            try:
                busy = any(s is not None for s in self._slots)
                if not self._admit(wait=in_flight is None and not busy):
                    break  # stopping
                self._flush()
                step = None
                active = [i for i, s in enumerate(self._slots) if s is not None]
                if active:
                    b = next(b for b in self.buckets if b > active[-1])
                    step = self._launch(b, self._slots[:b])
                if in_flight is not None:
                    self._process(in_flight)
                in_flight = step
                self._flush()
            except Exception as e:
                log.exception("a generation step failed; failing the requests in flight")
                self._fail_active(f"generation failed on the server ({type(e).__name__})")
                in_flight = None
                self._flush()
        self._shutdown()

    def _admit(self, wait: bool) -> bool:
        """Prefill queued requests into free slots; returns False when the engine is stopping."""
        budget = self.config.prefill_token_budget
        admitted = 0
        while True:
            with self._lock:
                if wait and not self._queue and not self._stopping:
                    self._lock.wait(timeout=0.5)
                if self._stopping:
                    return False
                self._drop_stale_queued()
                if not self._queue or None not in self._slots:
                    return True
                seq = self._queue[0]
                cost = len(seq.request.prompt_ids)
                if admitted and cost > budget:
                    return True
                self._queue.popleft()
            slot = self._slots.index(None)
            self._prefill(seq, slot)
            self._flush()  # its first token goes out now, not after the other prefills
            budget -= cost
            admitted += 1
            wait = False

    def _drop_stale_queued(self) -> None:  # under _lock
        now = time.perf_counter()
        keep: collections.deque[Sequence] = collections.deque()
        for seq in self._queue:
            if seq.cancelled:
                self._finish(seq, "cancelled")
            elif seq.deadline is not None and now > seq.deadline:
                seq.busy = True
                seq.error = "timed out waiting for a free generation slot"
                self._finish(seq, "error")
            else:
                keep.append(seq)
        self._queue = keep

    def _prefill(self, seq: Sequence, slot: int) -> None:
        assert self.model is not None
        req = seq.request
        self._temperature[slot] = req.temperature
        self._top_p[slot] = req.top_p
        prompt = torch.tensor(req.prompt_ids, dtype=torch.int64, device=self.device)  # (T,)
        first = prefill(
            self.model, prompt, slot, self._temperature[slot : slot + 1], self._top_p[slot : slot + 1]
        )
        self._tokens[slot : slot + 1].copy_(first)
        self._pos[slot] = len(req.prompt_ids)
        seq.slot = slot
        self._slots[slot] = seq
        (token,) = self._to_host(first)
        seq.first_token_at = time.perf_counter()
        self._accept(seq, token)

    def _launch(self, b: int, seqs: list[Sequence | None]) -> _Step:
        """Enqueue one decode step for slots [0, b) and the copy of its tokens to the host."""
        if self._graphs:
            self._graphs[b][self._turn].replay()
            self._turn ^= 1
        else:
            self._step(b)
        tokens = self._tokens[:b]  # the new tokens
        host = self._host[self._flip]
        self._flip ^= 1
        host[:b].copy_(tokens, non_blocking=True)
        event = None
        if self.device_is_cuda():
            event = torch.cuda.Event()
            event.record()
        self.steps += 1
        return _Step(seqs=list(seqs), host=host, event=event)

    def _to_host(self, token: torch.Tensor) -> list[int]:
        self._host_prefill.copy_(token, non_blocking=True)
        if self.device_is_cuda():
            event = torch.cuda.Event()
            event.record()
            event.synchronize()  # waits without holding the GIL: the HTTP side keeps running
        return self._host_prefill.tolist()

    def _process(self, step: _Step) -> None:
        if step.event is not None:
            step.event.synchronize()
        tokens = step.host[: len(step.seqs)].tolist()
        for slot, seq in enumerate(step.seqs):
            if seq is not None and not seq.done and seq.slot == slot:
                self._accept(seq, tokens[slot])

    def _accept(self, seq: Sequence, token: int) -> None:
        """A new token for a generating sequence: deliver it, or end the sequence."""
        req = seq.request
        if seq.cancelled:
            self._finish(seq, "cancelled")
            return
        if token in self.eos_ids and not req.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        self.tokens_generated += 1
        if seq.n_generated >= req.max_new_tokens:
            self._finish(seq, "length", token)
        elif seq.deadline is not None and time.perf_counter() > seq.deadline:
            seq.timed_out = True
            self._finish(seq, "length", token)
        else:
            self._outbox.setdefault(seq.loop, []).append((seq, [token], None))

    def _finish(self, seq: Sequence, reason: FinishReason, token: int | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        seq.finish_reason = reason
        if seq.timed_out:
            self.finished["timeout"] += 1
        elif seq.busy:
            self.finished["queue_timeout"] += 1
        else:
            self.finished["stop_string" if reason == "cancelled" and seq.stop_string else reason] += 1
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

    def _shutdown(self) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
        for seq in queued + [s for s in self._slots if s is not None]:
            seq.error = "the server is shutting down"
            self._finish(seq, "error")
        self._flush()

    def _flush(self) -> None:
        """Hand this step's tokens to each event loop in one call."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[Sequence, list[int], FinishReason | None]]) -> None:
    for seq, tokens, finish in items:
        seq._receive(tokens, finish)
