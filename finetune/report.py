"""The twin-quality report: does the fine-tuned twin sound like the person, and more than its base does?

    python -m finetune.report --data data/prepared --checkpoint-dir CKPT --lora-path ADAPTER --out out/report

Writes `report.md` (+ `report.json` with every number, PNG plots): perplexity of the person's held-out
replies (val.jsonl, reply tokens only, exactly as training scores them) under the base and the twin;
reply length, emoji, punctuation and letter-case rates of replies sampled from the twin and the base next
to the person's real ones; whether a stylometric classifier attributes those replies to the person and
whether a second one can tell them from the real ones (finetune.quality); whether the twin has forgotten
the world (finetune.forgetting: perplexity of general English and Russian text and answers to general
questions, base vs twin); ten side-by-side samples; and the training loss curve from the adapter's
metrics.csv. The report quotes private messages, so its folder is owner-only like the data. It is written
whole (`finetune.outdir`): an earlier report in --out is replaced once the new one is complete, a folder of
other files is refused.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.cli import parse_dataclasses, run
from common.device import DeviceUnavailableError, resolve_device, resolve_dtype
from common.files import write_private_atomic
from finetune.data import VAL_FILE, encode_records, load_records
from finetune.errors import UserError, write_errors
from finetune.evaluate import Perplexity, generate_replies, load_lora_model, lora_off, merge, reply_perplexity
from finetune.findings import Findings
from finetune.forgetting import GOAL_RATIO, Forgetting, compare, load_general_set, measure_side
from finetune.outdir import OutputKind, check_output_folder, staged_folder
from finetune.quality import MIN_PER_CLASS, QualityRow, compare_contestants, fit_attributor, to_markdown
from finetune.report_html import EXPLAINED, HTML_FILE, NO_LOSSES, SUMMARY_EXPLAINED, render_html
from finetune.report_plots import plot_all
from finetune.style import RATE_LABELS, StyleStats, style_stats
from finetune.summary import build_summary
from finetune.summary import to_markdown as summary_markdown
from finetune.twin import METRICS_FILE, read_adapter_spec, read_memory, resolve_adapter, run_dir
from prepare.memory import Memory, record_memories
from prepare.prompt import MAX_CONTEXT_CHARS, Prompter, clip_text, record_turns, render_context, render_prompt
from prepare.records import TRAIN_FILE, Record, Turn

log = logging.getLogger(__name__)

SIDE_BY_SIDE = 10
REPORT = OutputKind("report", "report.json", re.compile(r"report\.(md|json|html)|\w+\.png"))
"""What a report folder holds (`finetune.outdir`: an earlier report is replaced as a whole)."""
SAMPLE_FIELDS = ("partner", "context", "message")
"""A side-by-side sample's keys that are not a contestant's reply."""


PROMPTED_EXAMPLES = 8
MEMORY_K = 3
"""Past exchanges shown to "twin + memory" when the twin was trained without memory."""
MEMORY = "twin + memory"
"""Real exchanges of the person (train split) shown to the prompted base before each prompt."""
EXAMPLE_CHARS = 200
"""Each shown message is clipped to this many characters."""


@dataclass
class ReportArgs:
    """Settings of `python -m finetune.report` (saved into report.json); each field is a --flag."""

    data: Path = Path("data/prepared")
    """prepare's output folder (the held-out replies are its val.jsonl)."""
    checkpoint_dir: Path = Path("checkpoints/tiiuae/falcon-7b")
    """The litgpt base checkpoint the twin was fine-tuned from."""
    lora_path: Path = Path("out/twin")
    """The adapter (lit_model_lora_finetuned.pth) or its finetune out-dir (with metrics.csv); or a
    resumable checkpoint (OUT/checkpoints/step-N.pth) of a run that has not finished."""
    out: Path = Path("out/report")
    """Folder for report.md, report.json and the plots (an earlier report there is replaced)."""
    samples: int = 100
    """Validation prompts to sample a twin and a base reply for."""
    max_new_tokens: int = 48
    """Longest sampled reply, in tokens."""
    temperature: float = 0.7
    """Sampling temperature of the sampled replies."""
    top_p: float = 0.9
    """Nucleus-sampling threshold of the sampled replies."""
    seed: int = 42
    """Seed for choosing the prompts and for sampling (base and twin share it)."""
    device: str = "auto"
    """auto (cuda if present, else cpu), cuda or cpu."""
    forgetting: bool = True
    """Measure forgetting: general-text perplexity and general-question answers, base vs twin
    (`--no-forgetting` skips it)."""
    prompted_examples: int = PROMPTED_EXAMPLES
    """The prompting baseline: the base shown this many of the person's real exchanges (train split)
    before each prompt, as a fourth contestant (0: leave it out)."""
    memory_k: int = MEMORY_K
    """Memory on vs off: the twin shown this many of the person's past exchanges, retrieved (BM25) from the
    train split for each prompt, as the contestant "twin + memory" (0: leave it out). A twin trained with
    --memory-k uses its own k and the memory.jsonl beside it."""
    feedback: Path | None = Path("data/feedback/feedback.jsonl")
    """`make reply`'s feedback file: how often the twin's Telegram drafts were sent unchanged (skipped when
    missing; none: leave it out)."""

    def check(self) -> None:
        problems = []
        if self.prompted_examples < 0:
            problems.append(f"--prompted-examples must be 0 or more (got {self.prompted_examples})")
        if self.memory_k < 0:
            problems.append(f"--memory-k must be 0 or more (got {self.memory_k})")
        if self.samples < 1:
            problems.append(f"--samples must be at least 1 (got {self.samples})")
        if self.max_new_tokens < 1:
            problems.append(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            problems.append(f"--temperature must not be negative (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.device not in {"auto", "cuda", "cpu"}:
            problems.append(f"--device must be auto, cuda or cpu (got {self.device!r})")
        if problems:
            raise UserError("; ".join(problems))


# ------------------------------------------------------------------------------------------- measuring
def measure(args: ReportArgs) -> Findings:
    t0 = time.perf_counter()
    records = load_records(args.data / VAL_FILE)
    if not records:
        raise UserError(f"{args.data / VAL_FILE} holds no records: run `make prepare` with more chats")
    loss_rows = read_metrics(args.lora_path)  # before minutes of measuring: a broken file only warns
    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as e:
        raise UserError(str(e)) from None
    dtype = resolve_dtype("auto", device)
    log.info("loading %s with the adapter %s on %s", args.checkpoint_dir, args.lora_path, device)
    model, tokenizer = load_lora_model(args.checkpoint_dir, args.lora_path, device, dtype)
    spec = read_adapter_spec(args.lora_path)
    prompter = spec.prompter  # the format the twin was trained with
    examples = encode_records(records, tokenizer, model.config.block_size, prompter).examples
    chosen = random.Random(args.seed).sample(range(len(records)), min(args.samples, len(records)))
    prompts = [prompter.render_record(records[i])[0] for i in chosen]
    sampling: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    general = load_general_set() if args.forgetting else None
    train_path = args.data / TRAIN_FILE
    train = load_records(train_path) if train_path.is_file() else []
    shots = example_turns(train, args.prompted_examples, args.seed) if args.prompted_examples else []
    prompted = [prompted_prompt(prompter, records[i], shots) for i in chosen] if shots else []
    memory, memory_k = recall(args, spec.memory_k, train)
    memories = record_memories(memory, records, memory_k) if memory is not None else []
    log.info(
        "measuring the base and the twin on %d held-out records, sampling %d replies each",
        len(records),
        len(chosen),
    )
    with lora_off(model):
        base = finite(reply_perplexity(model, examples, desc="base perplexity"), "base", args)
        base_replies = generate_replies(model, tokenizer, prompter, prompts, desc="base replies", **sampling)
        prompted_replies = (
            generate_replies(model, tokenizer, prompter, prompted, desc="prompted base replies", **sampling)
            if prompted
            else []
        )
        if general is not None:
            base_general = measure_side(model, tokenizer, prompter, general, args.max_new_tokens, "base")
    merge(model)
    twin = finite(reply_perplexity(model, examples, desc="twin perplexity"), "twin", args)
    twin_replies = generate_replies(model, tokenizer, prompter, prompts, desc="twin replies", **sampling)
    twin_memory, memory_replies = None, []
    if memories:
        with_memory = encode_records(records, tokenizer, model.config.block_size, prompter, memories).examples
        twin_memory = reply_perplexity(model, with_memory, desc="twin + memory perplexity")
        memory_prompts = [prompter.render_record(records[i], memories[i])[0] for i in chosen]
        memory_replies = generate_replies(
            model, tokenizer, prompter, memory_prompts, desc="twin + memory replies", **sampling
        )
    forgetting = None
    if general is not None:
        twin_general = measure_side(model, tokenizer, prompter, general, args.max_new_tokens, "twin")
        forgetting = compare(general, base_general, twin_general)
    real = [records[i].response for i in chosen]
    samples = [
        {
            "partner": records[i].partner or "Friend",
            "context": records[i].context,
            "message": records[i].instruction,
            "real": real[k],
            "twin": twin_replies[k],
            "base": base_replies[k],
            **({"prompted base": prompted_replies[k]} if prompted_replies else {}),
            **({MEMORY: memory_replies[k]} if memory_replies else {}),
        }
        for k, i in enumerate(chosen)
    ]
    replies = {"real": real, "twin": twin_replies, "base": base_replies}
    if prompted_replies:
        replies["prompted base"] = prompted_replies
    if memory_replies:
        replies[MEMORY] = memory_replies
    log.info("measuring the style classifiers")
    quality, quality_note = measure_quality(train, replies, args.seed, held_out=len(records))
    if not train_path.is_file():
        quality_note = f"no {train_path}: the classifiers learn the person's style from it"
    return Findings(
        base=base,
        twin=twin,
        style={who: style_stats(texts) for who, texts in replies.items()},
        samples=samples,
        loss_rows=loss_rows,
        val_records=len(records),
        seconds=time.perf_counter() - t0,
        quality=quality,
        quality_note=quality_note,
        forgetting=forgetting,
        twin_memory=twin_memory,
        memory_k=memory_k if twin_memory is not None else 0,
        drafts=read_drafts(args.feedback),
    )


def finite(p: Perplexity, who: str, args: ReportArgs) -> Perplexity:
    """`p`, unless the model's loss on the held-out replies is NaN or infinite (its sampling would fail)."""
    if not math.isfinite(p.nll):
        what = "the adapter" if who == "twin" else "the base checkpoint"
        raise UserError(
            f"the {who}'s loss on {args.data / VAL_FILE} is {p.nll} (not a number a report can use): "
            f"{what} gives non-finite logits on this device and dtype; try --device cpu, or check {what}"
        )
    return p


def recall(args: ReportArgs, trained_k: int, train: Sequence[Record]) -> tuple[Memory | None, int]:
    """The memory "twin + memory" retrieves from and its k: a twin trained with --memory-k brings its own
    (memory.jsonl beside the adapter, its k); otherwise the train split's exchanges and --memory-k.
    (None, 0) when memory is left out or there is nothing to remember."""
    if trained_k > 0:
        return (read_memory(args.lora_path), trained_k) if args.memory_k else (None, 0)
    if not args.memory_k or not train:
        return None, 0
    memory = Memory.from_records(train)
    return (memory, args.memory_k) if len(memory) else (None, 0)


def read_drafts(path: Path | None) -> dict[str, Any] | None:
    """How `make reply`'s drafts fared (prepare.feedback.draft_stats), or None without a feedback file."""
    if path is None or not Path(path).is_file():
        return None
    from prepare.feedback import draft_stats

    try:
        return {"file": str(path), **draft_stats(path)}
    except (ValueError, OSError) as e:
        raise UserError(f"{e}; or leave the drafts out with --feedback none") from None


def example_turns(
    train: Sequence[Record], k: int, seed: int, max_chars: int = MAX_CONTEXT_CHARS
) -> list[Turn]:
    """k of the person's real exchanges from the train split (a partner's message and the person's reply,
    each clipped), as earlier turns: the prompting baseline's examples. Fewer when they would not fit
    `max_chars` (the context cap the twin's own prompts were built with)."""
    pool = [r for r in train if r.instruction.strip() and r.response.strip()]
    turns: list[Turn] = []
    used = 0
    for r in random.Random(seed).sample(pool, min(k, len(pool))):
        pair = [
            Turn("partner", clip_text(r.instruction, EXAMPLE_CHARS)),
            Turn("me", clip_text(r.response, EXAMPLE_CHARS)),
        ]
        size = sum(len(t.text) for t in pair)
        if used + size > max_chars:
            break
        turns += pair
        used += size
    return turns


def prompted_prompt(prompter: Prompter, record: Record, examples: Sequence[Turn]) -> str:
    """The record's prompt with `examples` (the person's real exchanges elsewhere) as its first earlier
    turns: what prompting the base with a few of the person's messages looks like in the same format."""
    if prompter.template is None:
        context = render_context(examples, record.partner)
        if record.context:
            context = f"{context}\n{record.context}" if context else record.context
        return render_prompt(record.instruction, context, record.partner)
    turns = [*examples, *(record_turns(record) or [])]
    return prompter.render(turns, record.instruction, record.partner)


def measure_quality(
    train: Sequence[Record], replies: Mapping[str, Sequence[str]], seed: int, held_out: int | None = None
) -> tuple[list[QualityRow], str]:
    """Attribution share and discriminator accuracy per contestant of `replies` (whose "real" entry is
    the person's replies to the prompts the others answered), or no rows and the reason why (`held_out`:
    how many records val.jsonl holds, when that and not --samples is what is short).

    The attributor learns the person's train-split replies against their partners' messages there.
    """
    real = replies["real"]
    if held_out is not None and held_out < MIN_PER_CLASS:
        return [], (
            f"only {held_out} held-out record{'s' * (held_out != 1)} in {VAL_FILE}; the classifiers need "
            f"{MIN_PER_CLASS} or more: prepare with more chats or a larger --val-fraction"
        )
    if len(real) < MIN_PER_CLASS:
        return [], f"only {len(real)} sampled prompts; use --samples {MIN_PER_CLASS} or more"
    person = [r.response for r in train]
    partners = [r.instruction for r in train]
    try:
        attributor = fit_attributor(person, partners, seed)
    except ValueError:
        return [], f"no train-split messages of the person and their partners in {TRAIN_FILE}"
    return compare_contestants(attributor, real, replies, seed), ""


def read_metrics(lora_path: Path) -> list[dict[str, float | None]]:
    """The finetune run's metrics.csv next to the adapter (empty if the run wrote none). A row that cannot
    be read (a run killed while writing it, a file edited by hand) is left out with a warning."""
    path = run_dir(resolve_adapter(lora_path)) / METRICS_FILE
    if not path.is_file():
        return []
    rows, bad = [], []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    rows.append({k: float(v) if v else None for k, v in row.items() if isinstance(k, str)})
                except (TypeError, ValueError):
                    bad.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        log.warning("%s cannot be read (%s): no loss curve in the report", path, e)
        return []
    if bad:
        log.warning("%s: %d row(s) cannot be read (a run stopped while writing?): left out", path, len(bad))
    return [r for r in rows if r.get("step") is not None]


# ------------------------------------------------------------------------------------------- writing
def cell(text: str, limit: int = 400) -> str:
    """Markdown-table-safe text: HTML-escaped (placeholders like <EMAIL> stay visible), one line, and no
    link or image syntax (a chat message's `![](https://...)` must not make a viewer fetch anything)."""
    text = text if len(text) <= limit else "…" + text[-limit:]
    text = html.escape(text.replace("\\", "\\\\"), quote=False).replace("[", "\\[").replace("]", "\\]")
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(empty)*"


def sample_rows(sample: Mapping[str, str], prompted_examples: int) -> list[tuple[str, str]]:
    """(label, reply) for each contestant of a side-by-side sample, in its order (the real reply first)."""
    labels = {
        "real": "**real reply**",
        "twin": "**twin**",
        "prompted base": f"base prompted with {prompted_examples} real exchanges",
        MEMORY: "**twin + memory**",
    }
    return [(labels.get(who, cell(who)), text) for who, text in sample.items() if who not in SAMPLE_FIELDS]


def render_markdown(args: ReportArgs, f: Findings, plots: Sequence[str]) -> str:
    gain = (1 - f.twin.value / f.base.value) * 100
    verdict = "beats" if f.twin.value < f.base.value else "does **not** beat"
    lines = [
        "# Twin quality report",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · base `{args.checkpoint_dir}` · "
        f"adapter `{args.lora_path}` · {f.val_records} held-out records in `{args.data / VAL_FILE}` · "
        f"{f.seconds:.0f} s",
        "",
        "## Summary",
        "",
        SUMMARY_EXPLAINED,
        "",
        summary_markdown(build_summary(findings_json(args, f))),
        "## Held-out perplexity",
        "",
        EXPLAINED["perplexity"],
        "",
        "| model | perplexity | mean NLL / token | reply tokens |",
        "|---|---:|---:|---:|",
        f"| base | {f.base.value:.2f} | {f.base.nll:.3f} | {f.base.tokens} |",
        f"| twin | {f.twin.value:.2f} | {f.twin.nll:.3f} | {f.twin.tokens} |",
        *(
            [f"| twin + memory ({f.memory_k} past exchanges) | {m.value:.2f} | {m.nll:.3f} | {m.tokens} |"]
            if (m := f.twin_memory)
            else []
        ),
        "",
        f"The twin {verdict} its base: perplexity {f.base.value:.2f} → {f.twin.value:.2f} "
        f"({gain:.0f}% lower).",
        "",
    ]
    if "perplexity.png" in plots:
        lines += ["![perplexity](perplexity.png)", ""]
    n = f.style["real"].replies
    lines += [
        "## Style",
        "",
        f"{n} validation prompts. {EXPLAINED['style']} (temperature {args.temperature}, top-p {args.top_p}, "
        f"at most {args.max_new_tokens} tokens)",
        "",
        "| | " + " | ".join(f.style) + " |",
        "|---|" + "---:|" * len(f.style),
    ]
    for stat in fields(StyleStats):
        if stat.name == "replies":
            continue
        values = [getattr(s, stat.name) for s in f.style.values()]
        fmt = "{:.1f}" if stat.name.endswith("chars") else "{:.1%}"
        label = RATE_LABELS.get(stat.name, stat.name.replace("_", " "))
        lines.append(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " |")
    lines += ["", "![style](style.png)", "", "![reply lengths](lengths.png)", ""]
    lines += ["## Does it write like the person?", ""]
    if f.quality:
        lines += [EXPLAINED["quality"], "", to_markdown(f.quality)]
        if "quality.png" in plots:
            lines += ["![attribution and discrimination per contestant](quality.png)", ""]
    else:
        lines += [f"Not measured: {f.quality_note}.", ""]
    lines += forgetting_markdown(f.forgetting)
    lines += drafts_markdown(f.drafts)
    lines += ["## Side by side", ""]
    for k, s in enumerate(f.samples[:SIDE_BY_SIDE], start=1):
        lines += [
            f"### {k}. with {cell(s['partner'])}",
            "",
            "| | |",
            "|---|---|",
            f"| earlier turns | {cell(s['context'])} |",
            f"| {cell(s['partner'])} wrote | {cell(s['message'])} |",
            *(f"| {label} | {cell(text)} |" for label, text in sample_rows(s, args.prompted_examples)),
            "",
        ]
    lines += ["## Training loss", ""]
    if "loss.png" in plots:
        lines += [*loss_sentence(f.loss_rows), "![loss curve](loss.png)", ""]
    else:
        lines += [f"{NO_LOSSES}.", ""]
    return "\n".join(lines)


def loss_sentence(rows: Sequence[Mapping[str, float | None]]) -> list[str]:
    """What the validation loss did during training, in one line (and a blank one), or nothing."""
    val = [v for r in rows if (v := r.get("val_loss")) is not None]
    if not val:
        return []
    diverged = " (not a number: the run diverged)" if not math.isfinite(val[-1]) else ""
    if len(val) == 1:
        return [f"Validation loss {val[0]:.3f}{diverged} (validated once).", ""]
    return [f"Validation loss {val[0]:.3f} before the first step → {val[-1]:.3f} at the end{diverged}.", ""]


def drafts_markdown(drafts: Mapping[str, Any] | None) -> list[str]:
    """The "Drafts in Telegram" section (`make reply`'s feedback file), or nothing without one."""
    if not drafts or not drafts.get("drafts"):
        return []
    n, sent = drafts["drafts"], drafts["sent"]
    share = drafts["unchanged_share"]
    of_sent = drafts["unchanged_share_of_sent"]
    return [
        "## Drafts in Telegram",
        "",
        f"`make reply` drafted {n} replies: {drafts['unchanged']} sent unchanged ({share:.0%}), "
        f"{drafts['edited']} edited, {drafts['replaced']} replaced"
        + (
            f" ({of_sent:.0%} of the {sent} that led to a reply went out as drafted)"
            if of_sent is not None
            else ""
        )
        + ". Edited and replaced answers join the training data at the next `make prepare`.",
        "",
    ]


def forgetting_markdown(f: Forgetting | None) -> list[str]:
    """The "Has it forgotten the world?" section."""
    lines = ["## Has it forgotten the world?", ""]
    if f is None:
        return [*lines, "Not measured (`--no-forgetting`).", ""]
    right = f.as_dict()["right"]
    lines += [
        f"{EXPLAINED['forgetting']} The goal: the twin's perplexity at most {GOAL_RATIO:.0%} of the base's.",
        "",
        "| model | general-text perplexity | mean NLL / token | tokens | questions answered right |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {who} | {p.value:.2f} | {p.nll:.3f} | {p.tokens} | {right[who]} / {right['questions']} |"
            for who, p in (("base", f.base), ("twin", f.twin))
        ),
        "",
        f.verdict(),
        "",
        "*Right* means the answer contains the reference (a rough check; read the answers).",
        "",
        "| question | reference | base | twin |",
        "|---|---|---|---|",
    ]
    for a in f.answers:
        base, twin = (
            ("✓ " if ok else "") + cell(text) for text, ok in ((a.base, a.base_right), (a.twin, a.twin_right))
        )
        lines.append(f"| {cell(a.question)} | {cell(a.reference)} | {base} | {twin} |")
    return [*lines, ""]


def findings_json(args: ReportArgs, f: Findings) -> dict[str, Any]:
    def plain(obj: Mapping[str, Any]) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in obj.items()}

    found = {
        "args": plain(asdict(args)),
        "perplexity": {
            "base": f.base.value,
            "twin": f.twin.value,
            **({MEMORY: f.twin_memory.value} if f.twin_memory else {}),
            "base_nll": f.base.nll,
            "twin_nll": f.twin.nll,
            **({"twin_memory_nll": f.twin_memory.nll, "memory_k": f.memory_k} if f.twin_memory else {}),
            "reply_tokens": f.twin.tokens,
            "val_records": f.val_records,
        },
        "style": {who: s.as_dict() for who, s in f.style.items()},
        "quality": {"rows": [asdict(row) for row in f.quality], "note": f.quality_note},
        "forgetting": f.forgetting.as_dict() if f.forgetting else None,
        "drafts": f.drafts,
        "samples": f.samples[:SIDE_BY_SIDE],
        "seconds": f.seconds,
        "written": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    }
    found["summary"] = build_summary(found).as_dict()
    return found


def write_report(args: ReportArgs, f: Findings) -> Path:
    """report.json, the plots, report.md and report.html (plots inside) into the owner-only `args.out`,
    written whole (`finetune.outdir`: an earlier report there is replaced once the new one is complete);
    returns report.md's path."""
    check_output_folder(args.out, "--out", REPORT)
    with staged_folder(args.out, "--out") as out:
        plots = plot_all(f, out)
        found = findings_json(args, f)
        write_private_atomic(out / "report.json", json.dumps(found, indent=2, ensure_ascii=False) + "\n")
        write_private_atomic(out / "report.md", render_markdown(args, f, plots))
        pngs = {name: (out / name).read_bytes() for name in plots}
        write_private_atomic(out / HTML_FILE, render_html(found, pngs))
    return args.out / "report.md"


# -------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> ReportArgs:
    """ReportArgs from command-line flags (a bad flag exits 2 with one line)."""
    description = (__doc__ or "").split("\n\n")[0]
    (args,) = parse_dataclasses([ReportArgs], argv, prog="python -m finetune.report", description=description)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(lambda: report(parse_args(argv)), errors=(UserError,))


def report(args: ReportArgs) -> None:
    """Measure, write the report, and say in one line where it is and what it found."""
    args.check()
    check_output_folder(args.out, "--out", REPORT)  # before minutes of measuring, not after
    findings = measure(args)
    with write_errors("--out"):
        path = write_report(args, findings)
    b, t = findings.base.value, findings.twin.value
    attributed = {row.contestant: row.attribution.share for row in findings.quality}
    quality = (
        f"; attributed to the person: twin {attributed['twin']:.0%}, real {attributed['real']:.0%}"
        if attributed
        else ""
    )
    forgot = findings.forgetting
    general = (
        f"; general-text perplexity base {forgot.base.value:.2f} → twin {forgot.twin.value:.2f} "
        f"({forgot.ratio - 1:+.1%}, {'within' if forgot.within_goal else 'OVER'} the "
        f"+{GOAL_RATIO - 1:.0%} goal)"
        if forgot
        else ""
    )
    print(
        f"report in {path} and {path.with_name(HTML_FILE)}: held-out perplexity base {b:.2f} → twin "
        f"{t:.2f} on {findings.twin.tokens} reply tokens; {findings.style['real'].replies} sampled replies"
        f"{quality}{general} ({findings.seconds:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
