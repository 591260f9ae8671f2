"""The model on its device and one decode step for every slot at once: the device side of `serve.engine`.

A `Runner` holds the model (fused blocks, a static slot KV cache) and the buffers its decode step reads
and writes in place, one row per slot. The decode step — model, sampler and the update of the
token/position buffers — is `torch.compile`d and, on GPU, recorded as CUDA graphs per batch bucket (1, 2,
4, ... up to the slot count) during warm-up, before the engine says it is ready. The graphs are recorded
by hand (`torch.cuda.graph`), reading and writing the runner's own buffers: a step is one graph launch,
with no input copies. Each bucket has two graphs that take turns, so step k+1 is never a relaunch of the
executable still running step k (a precaution for the engine's one-step lookahead; not measured apart
from the rest of the change).

Compiling falls back rather than failing: one graph with `serve.kernels`' Triton kernels (if the model
was built with them); if that fails, one graph without them; then a graph dynamo may split; last, eager.
`compile_error` says why. Which kernels the model runs is the model's own setting
(`serve.generate.select_kernels`), switched only between these attempts, never while one is traced.

`launch` enqueues a step and returns at once; `prefill_chunk` writes the next pieces of several prompts
into their slots in one forward pass (`serve.prefill`) and waits for the first tokens of those it
finishes (`prefill`: one whole prompt, the reference it must match). Warm-up logs its progress per
bucket, and keeps the compile artifacts in `config.compile_cache_dir` for the next start
(`serve.compile_cache`). With `config.twin_slots` the model holds several twins' adapters unmerged
(`serve.multi_lora`): each slot decodes with its request's twin (`reserve`), and `write_twin` loads an
adapter into a twin slot between two steps. Only one thread (the engine's worker) calls a runner.
Imports only torch and litgpt (the GPU benchmarks drive it without the web stack).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from litgpt.model import GPT

from serve.compile_cache import CompileCache, cache_counters, use_compile_cache
from serve.engine_config import EngineConfig
from serve.generate import (
    decode_step,
    fuse_blocks,
    prefill,
    sample,
    select_kernels,
    setup_caches,
    uses_kernels,
)
from serve.multi_lora import AdapterSlots, AdapterUpdates
from serve.prefill import ChunkRow, chunk_logits, pad_chunk

log = logging.getLogger(__name__)


def decode_buckets(max_batch: int) -> list[int]:
    """Batch sizes the decode step runs at: powers of two below max_batch, and max_batch."""
    return sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})


@dataclass
class LaunchedStep:
    """A decode step enqueued on the device; `tokens()` waits for it."""

    host: torch.Tensor  # (b,) int64 on the host, filled asynchronously
    event: torch.cuda.Event | None  # recorded after the copy to the host (CUDA only)

    def tokens(self) -> list[int]:
        """The step's new token of each slot [0, b); waits for the device."""
        if self.event is not None:
            self.event.synchronize()  # waits without holding the GIL: the HTTP side keeps running
        return self.host.tolist()


class Runner:
    """The model and its decode-step buffers on one device (B = config.max_batch_size slots)."""

    def __init__(self, model: GPT, config: EngineConfig) -> None:
        """Fuse `model`'s blocks (if `config.fuse_blocks`), give it the slot KV cache, allocate the step
        buffers. Compiling and recording are `warm_up`'s."""
        self.config = config
        self.fused_blocks = fuse_blocks(model) if config.fuse_blocks else 0
        setup_caches(model, config.max_batch_size, config.max_seq_length)
        self.model = model
        weight = model.transformer.wte.weight  # not lm_head: it may be a LoRA layer (NF4 base)
        self.device, self.dtype = weight.device, weight.dtype
        self.vocab_size = model.config.vocab_size
        self.buckets = decode_buckets(config.max_batch_size)
        B, dev = config.max_batch_size, self.device
        # several twins on one base: each slot's twin (0: the base), which the banks read per batch row
        self.twins: AdapterSlots | None = None
        if config.twin_slots:
            self.twins = AdapterSlots.attach(
                model, config.twin_slots + 1, config.max_lora_rank, B, config.lora_layers
            )
        self.slot_twin = torch.zeros(B, dtype=torch.int64, device=dev)  # (B,) slot → twin slot
        # What a decode step reads and writes, one row per slot, in place (the CUDA graphs record these
        # addresses): each slot's last token and the cache position it goes to, and its sampling
        self.tokens = torch.zeros(B, dtype=torch.int64, device=dev)  # (B,)
        self.positions = torch.zeros(B, dtype=torch.int64, device=dev)  # (B,)
        self.temperature = torch.zeros(B, dtype=torch.float32, device=dev)  # (B,) 0: greedy
        self.top_p = torch.ones(B, dtype=torch.float32, device=dev)  # (B,)
        pin = dev.type == "cuda"
        # A step's tokens are copied to one of two host buffers that take turns: the step in flight
        # fills one while the next step is launched into the other
        self.host_tokens = [torch.zeros(B, dtype=torch.int64, pin_memory=pin) for _ in range(2)]  # 2 x (B,)
        self.host_turn = 0  # which of host_tokens the next launch fills
        self.host_first_token = torch.zeros(1, dtype=torch.int64, pin_memory=pin)  # (1,) a prefill's
        self.step_fn: Callable[..., torch.Tensor] = decode_step  # torch.compile'd by warm_up
        # Each bucket's two CUDA graphs of `_step`, taking turns (see the module docstring); {}: no graphs
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.graph_turn = 0  # which graph of a bucket's pair the next launch replays
        self.compiled = False
        self.compile_error: str | None = None
        self.prefill_tokens = config.prefill_token_budget or (4096 if dev.type == "cuda" else 512)
        self.compile_cache = CompileCache(None, False)
        self.compile_seconds: float | None = None  # warm-up's compiling and recording, when compiled
        self.cache_counters: dict[str, int] = {}  # this warm-up's compile-cache hits and misses
        self.warmup_marks: dict[str, float] = {}
        """Seconds from the start of the last warm-up's run of every path to the end of each stage ("prefill
        paths", "bucket B" compiled, "CUDA graphs" recorded, "first launches"): where a start-up goes."""

    # ---- start-up --------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile the decode step (config.compile; None: on CUDA only), falling back as the module says,
        then run every path once (compiling, and recording the CUDA graphs on a GPU)."""
        cfg = self.config
        want_compile = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        # one graph with our Triton kernels (the model as built); if that fails, without them; then let
        # dynamo split the graph; last, eager (the model keeps the kernels the last attempt chose)
        attempts = [(True, True)] if uses_kernels(self.model) else []
        attempts += [(True, False), (False, False)]
        if want_compile:
            self.compile_cache = use_compile_cache(cfg.compile_cache_dir)
        for fullgraph, with_kernels in attempts if want_compile else ():
            if not with_kernels:
                select_kernels(self.model, gemv=False, attention=False)
            try:
                self.step_fn = torch.compile(decode_step, fullgraph=fullgraph)
                self.compiled = True
                before = cache_counters()
                with torch._inductor.config.patch(coordinate_descent_tuning=cfg.compile_tuning):
                    self._run_every_path()  # compiles here, on the first calls, then records the graphs
                after = cache_counters()
                self.cache_counters = {k: after[k] - before[k] for k in after}
                return
            except Exception as e:  # serve rather than not at all; /health says why
                attempt = f"fullgraph={fullgraph}, kernels={with_kernels}"
                log.exception("compiling the decode step (%s) failed", attempt)
                self.compile_error = f"{attempt}: {type(e).__name__}: {e}"[:500]
                self.compiled = False
                self.graphs = {}
                torch._dynamo.reset()
        self.step_fn = decode_step
        self._run_every_path()

    def _run_every_path(self) -> None:
        """Run every code path once (and compile / record CUDA graphs) before serving."""
        begun = time.perf_counter()
        self.warmup_marks = {}

        def mark(stage: str) -> None:
            self.sync()
            self.warmup_marks[stage] = round(time.perf_counter() - begun, 3)

        n = max(1, min(self.config.warmup_prompt_tokens, self.config.max_seq_length - 1))
        for length in sorted({min(16, n), n}):
            prompt = torch.arange(length, device=self.device) % self.vocab_size  # (T,)
            prefill(self.model, prompt, 0, self.temperature[:1], self.top_p[:1])
        # a chunk of two prompts (slots 0 and 1), then one token continuing the first (one-token rows)
        first = list(range(min(16, n)))
        rows = [ChunkRow(0, 0, first, last=False)]
        if self.config.max_batch_size > 1:
            rows.append(ChunkRow(1, 0, list(range(min(8, n))), last=True))
        self.prefill_chunk(rows)
        self.prefill_chunk([ChunkRow(0, len(first), [1], last=True)])
        mark("prefill paths")
        self.positions.fill_(min(n, self.config.max_seq_length - 1))
        self.temperature.fill_(1.0)  # sampling, not only argmax (eager: each branch runs once)
        if self.compiled:
            started = time.perf_counter()
            side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            if side is not None:  # warm-up and capture off the default stream, as torch.cuda.graph wants
                side.wait_stream(torch.cuda.current_stream(self.device))
            log.info(
                "compiling the decode step for batch buckets %s (%s)",
                self.buckets,
                "compile cache warm: loading the earlier start's kernels"
                if self.compile_cache.warm
                else "first start: minutes on a GPU; the next start reuses the compile cache",
            )
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for i, b in enumerate(self.buckets):
                    for _ in range(2):  # compiles (first bucket, then once more with a dynamic batch size)
                        self._step(b)
                    mark(f"bucket {b}")
                    log.info(
                        "compiling the decode step: bucket %d (%d of %d) ... %.1f s",
                        b, i + 1, len(self.buckets), time.perf_counter() - started,
                    )  # fmt: skip
                if side is not None:
                    self.graphs = self._record_graphs(side, started)
                    mark("CUDA graphs")
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
            self.compile_seconds = time.perf_counter() - started
        for b in self.buckets:
            for _ in range(2):  # every path once; replays each graph once (the first launch uploads it)
                self.launch(b)
        mark("first launches")
        self.tokens.zero_()
        self.positions.zero_()
        self.temperature.zero_()

    def _step(self, b: int) -> None:
        """One decode step for slots [0, b), in place on the runner's buffers (what a graph records)."""
        tokens = self.step_fn(
            self.model,
            self.tokens[:b].view(b, 1),
            self.positions[:b].view(b, 1),
            self.temperature[:b],
            self.top_p[:b],
        )  # (b,)
        self.tokens[:b].copy_(tokens)
        # idle slots keep stepping; the clamp keeps their (ignored) writes inside the cache
        self.positions[:b].add_(1).clamp_(max=self.config.max_seq_length - 1)

    def _record_graphs(
        self, stream: torch.cuda.Stream, started: float
    ) -> dict[int, list[torch.cuda.CUDAGraph]]:
        """Two CUDA graphs of `_step` per bucket, sharing one memory pool (they never run at once, and
        nothing a graph allocates outlives its replay: results land in the runner's buffers)."""
        pool = torch.cuda.graph_pool_handle()
        graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        for i, b in enumerate(self.buckets):
            graphs[b] = []
            for _ in range(2):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self._step(b)
                graphs[b].append(graph)
            log.info(
                "recording CUDA graphs: bucket %d (%d of %d) ... %.1f s",
                b, i + 1, len(self.buckets), time.perf_counter() - started,
            )  # fmt: skip
        return graphs

    # ---- serving ---------------------------------------------------------------------------------

    def prefill(self, slot: int, prompt_ids: list[int], temperature: float, top_p: float) -> int:
        """Write a prompt into `slot`, set the slot's sampling, and return its first new token (waits for
        it); the next decode steps continue the slot from there."""
        self.temperature[slot] = temperature
        self.top_p[slot] = top_p
        prompt = torch.tensor(prompt_ids, dtype=torch.int64, device=self.device)  # (T,)
        with self._rows_of(torch.tensor([slot], device=self.device)):
            first = prefill(
                self.model, prompt, slot, self.temperature[slot : slot + 1], self.top_p[slot : slot + 1]
            )  # (1,)
        self.tokens[slot : slot + 1].copy_(first)
        self.positions[slot] = len(prompt_ids)
        self.host_first_token.copy_(first, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            event.synchronize()  # waits without holding the GIL: the HTTP side keeps running
        (token,) = self.host_first_token.tolist()
        return int(token)

    def reserve(self, slot: int, temperature: float, top_p: float, twin: int = 0) -> None:
        """Give `slot` to a new prompt: its sampling, and its position parked at the cache's last one
        while the prompt is prefilled over several chunks. A slot in prefill still rides along in decode
        steps (inside the bucket); parked, it writes only there, where no prompt token is (a prompt ends
        at least one position before the cache does) and where its own decoding later writes first."""
        self.temperature[slot] = temperature
        self.top_p[slot] = top_p
        self.positions[slot] = self.config.max_seq_length - 1
        self.set_twin(slot, twin)

    def set_twin(self, slot: int, twin: int) -> None:
        """Decode `slot` with twin slot `twin`'s adapter (0: the base, or the one merged into it)."""
        if self.twins is None:
            if twin:
                raise ValueError(f"twin slot {twin} on a runner that holds one twin (twin_slots 0)")
            return
        self.slot_twin[slot] = twin
        self.twins.rows[slot] = twin

    def write_twin(self, twin: int, updates: AdapterUpdates) -> None:
        """Load a twin's adapter into twin slot `twin` (no slot may be decoding with it)."""
        if self.twins is None:
            raise ValueError("this runner holds one twin (twin_slots 0)")
        self.twins.write(twin, updates)

    @contextlib.contextmanager
    def _rows_of(self, slots: torch.Tensor) -> Iterator[None]:
        """While a prefill runs batch rows of `slots` (not 0, 1, ...): the banks read those slots' twins."""
        if self.twins is None:
            yield
            return
        rows = self.twins.rows
        rows[: slots.numel()] = self.slot_twin[slots]
        try:
            yield
        finally:
            rows.copy_(self.slot_twin)

    def prefill_chunk(self, rows: Sequence[ChunkRow]) -> list[int]:
        """Write one chunk (`serve.prefill`: each row the next piece of a prompt, into its own slot) and
        return the first new token of each row whose prompt it finishes, in row order (waits for them;
        returns at once when none finishes). Those slots continue from there in the next decode steps;
        their sampling comes from `reserve`."""
        tokens, positions, span = pad_chunk(rows, self.config.max_seq_length)  # (R, T) each
        dev = self.device
        done = [i for i, row in enumerate(rows) if row.last]
        slots = torch.tensor([row.slot for row in rows], dtype=torch.int64)  # (R,)
        pick_cols = torch.tensor([len(rows[i].tokens) - 1 for i in done], dtype=torch.int64)  # (D,)
        ends = torch.tensor([rows[i].start + len(rows[i].tokens) for i in done], dtype=torch.int64)  # (D,)
        tokens, positions, slots, pick_cols, ends = (
            t.to(dev, non_blocking=True) for t in (tokens, positions, slots, pick_cols, ends)
        )
        pick_rows = torch.tensor(done, dtype=torch.int64, device=dev)  # (D,)
        with self._rows_of(slots):
            logits = chunk_logits(self.model, tokens, positions, slots, span, pick_rows, pick_cols)  # (D, V)
        if not done:
            return []
        finished = slots[pick_rows]  # (D,)
        first = sample(logits, self.temperature[finished], self.top_p[finished])  # (D,)
        self.tokens[finished] = first
        self.positions[finished] = ends
        host = first.to("cpu", non_blocking=True)
        if dev.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            event.synchronize()  # waits without holding the GIL: the HTTP side keeps running
        return [int(t) for t in host.tolist()]

    def launch(self, b: int) -> LaunchedStep:
        """Enqueue one decode step for slots [0, b) (`b` a bucket) and the copy of its tokens to the host."""
        if self.graphs:
            self.graphs[b][self.graph_turn].replay()
            self.graph_turn ^= 1
        else:
            self._step(b)
        host = self.host_tokens[self.host_turn]
        self.host_turn ^= 1
        host[:b].copy_(self.tokens[:b], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return LaunchedStep(host=host[:b], event=event)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- what it runs on -------------------------------------------------------------------------

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def triton_kernels(self) -> bool:
        """Whether decode steps run `serve.kernels`' Triton kernels (they run on GPUs only)."""
        return self.device.type == "cuda" and uses_kernels(self.model)
