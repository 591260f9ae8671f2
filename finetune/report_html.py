"""report.html: the quality report as one self-contained page — the one-table summary first, then each
metric's detail, the side-by-side samples, and the plots inside the page as base64 PNG data URIs.

It is rendered from report.json's content (`finetune.report.findings_json`) and the PNGs' bytes, and
loads nothing: no stylesheet, script, font or image from anywhere, and a Content-Security-Policy that
forbids the browser to fetch anything but the page's own data URIs. Every piece of text that came from
a chat (replies, messages, names, answers) is HTML-escaped: chat text is hostile input.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from math import nan
from typing import Any

from finetune.style import RATE_LABELS
from finetune.summary import MET, MISSED, Summary, build_summary

HTML_FILE = "report.html"
NO_LOSSES = "No training losses next to the adapter (no metrics.csv, or none in it), so no loss curve"
BOTH = ("base", "twin")
"""The two models the forgetting check compares."""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
SUMMARY_EXPLAINED = (
    "One row per metric, one column per contestant: real (the person's own held-out replies), twin "
    "(the fine-tuned model), base (the untuned base model), prompted base (the base shown real exchanges "
    "of the person before each prompt), and any other contestant the report measured. The goal column is "
    "what the twin should reach; the verdict says whether it did, with the numbers. docs/QUALITY.md "
    "describes each metric, its anchor in the literature and its caveats."
)
EXPLAINED = {
    "perplexity": (
        "Perplexity of the person's real replies (reply tokens and the end-of-reply token, given the same "
        "prompt as in training) in validation conversations the twin never trained on. Lower is better."
    ),
    "style": (
        "Each contestant sampled one reply per validation prompt (same prompts and seed for all); real is "
        "what the person actually wrote."
    ),
    "quality": (
        "Attributed: a stylometric classifier (character 1–4-grams and style rates, logistic regression) "
        "learned the person's train-split replies against their partners' messages; the share of each "
        "contestant's replies it gives to the person (real is the reference a twin should reach). Told "
        "from real: a second classifier, cross-validated over the prompts, tells the contestant's replies "
        "from the person's real ones; 50% means it cannot (real against itself is 50% by construction), "
        "100% means the contestant is always caught. 95% bootstrap intervals in brackets."
    ),
    "forgetting": (
        "Fine-tuning on one person's chats must not wipe out what the base knew. Perplexity of every token "
        "of a fixed general text that ships with the twin (English and Russian prose and dialogue about "
        "weather, cooking, travel, history and science), and greedy answers to general questions asked in "
        "the twin's prompt format."
    ),
}
PAGE_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: start; }
td { overflow-wrap: anywhere; }
td.num { text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
.met { color: #176b1c; font-weight: 600; }
.missed { color: #b00020; font-weight: 700; }
.muted { color: #666; }
img { max-width: 100%; display: block; margin: 0.8em 0; }
"""


def esc(value: object) -> str:
    """HTML-escaped text, newlines as line breaks."""
    return html.escape(str(value), quote=True).replace("\n", "<br>")


def chat(value: object) -> str:
    """Chat text (escaped) in its own writing direction: an Arabic or Hebrew reply reads right to left
    without reordering the table around it."""
    return f"<bdi dir='auto'>{esc(value)}</bdi>"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; columns listed in `numeric` are right-aligned."""
    th = "".join(f"<th>{h}</th>" for h in head)

    def td(i: int, c: str) -> str:
        return f"<td class='num'>{c}</td>" if i in numeric else f"<td>{c}</td>"

    body = "".join("<tr>" + "".join(td(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def image(pngs: Mapping[str, bytes], name: str, alt: str) -> str:
    """The PNG `name` inline as a data URI ("" when the report has no such plot)."""
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"


def pct(x: float, low: float, high: float) -> str:
    return f"{x:.0%} ({low:.0%}–{high:.0%})"


# ------------------------------------------------------------------------------------------- sections
def summary_html(summary: Summary) -> str:
    head = ["metric", *(esc(c) for c in summary.columns), "goal", "verdict"]
    rows = []
    for r in summary.rows:
        status = esc(r.status)
        if r.status in (MET, MISSED):
            status = f"<span class='{status}'>{status}</span>"
        cells = [esc(r.metric), *(esc(summary.cell(r, c)) for c in summary.columns), esc(r.goal)]
        rows.append([*cells, f"{status}: {esc(r.verdict)}"])
    numeric = range(1, 1 + len(summary.columns))
    return f"<h2>Summary</h2><p>{esc(SUMMARY_EXPLAINED)}</p>" + table(head, rows, numeric)


def perplexity_html(found: Mapping[str, Any], columns: Sequence[str], pngs: Mapping[str, bytes]) -> str:
    ppl = found.get("perplexity") or {}
    rows = [
        [esc(who), f"{ppl[who]:.2f}", f"{ppl.get(f'{who}_nll', nan):.3f}", esc(ppl.get("reply_tokens", ""))]
        for who in columns
        if isinstance(ppl.get(who), int | float)
    ]
    head = ["model", "perplexity", "mean NLL / token", "reply tokens"]
    return (
        f"<h2>Held-out perplexity</h2><p>{esc(EXPLAINED['perplexity'])}</p>"
        + table(head, rows, (1, 2, 3))
        + image(pngs, "perplexity.png", "held-out perplexity, base and twin")
    )


def style_html(found: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    style: Mapping[str, Mapping[str, float]] = found.get("style") or {}
    who = list(style)
    stats = [k for k in (next(iter(style.values()), {}) or {}) if k != "replies"]
    rows = []
    for stat in stats:
        fmt = "{:.1f}" if stat.endswith("chars") else "{:.1%}"
        label = RATE_LABELS.get(stat, stat.replace("_", " "))
        rows.append([esc(label), *(fmt.format(style[w][stat]) for w in who)])
    replies = style.get("real", {}).get("replies", 0)
    a = found.get("args") or {}
    sampling = f"temperature {a.get('temperature')}, top-p {a.get('top_p')}, "
    sampling += f"at most {a.get('max_new_tokens')} tokens"
    return (
        f"<h2>Style</h2><p>{esc(replies)} validation prompts. {esc(EXPLAINED['style'])} ({esc(sampling)})</p>"
        + table(["", *(esc(w) for w in who)], rows, range(1, 1 + len(who)))
        + image(pngs, "style.png", "style rates per contestant")
        + image(pngs, "lengths.png", "reply lengths per contestant")
    )


def quality_html(found: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    quality = found.get("quality") or {}
    out = "<h2>Does it write like the person?</h2>"
    if not quality.get("rows"):
        return out + f"<p>Not measured: {esc(quality.get('note') or 'no rows')}.</p>"
    rows = []
    for r in quality["rows"]:
        a, d = r["attribution"], r["discrimination"]
        rows.append(
            [esc(r["contestant"]), esc(r["replies"]), pct(a["share"], a["low"], a["high"]),
             pct(d["mean"], d["low"], d["high"]), esc(d["folds"])]
        )  # fmt: skip
    head = ["contestant", "replies", "attributed to the person (95% CI)", "told from real (95% CI)", "folds"]
    return (
        out
        + f"<p>{esc(EXPLAINED['quality'])}</p>"
        + table(head, rows, (1, 2, 3, 4))
        + image(pngs, "quality.png", "attribution share and discriminator accuracy per contestant")
    )


def forgetting_html(forgetting: Mapping[str, Any] | None) -> str:
    out = "<h2>Has it forgotten the world?</h2>"
    if not forgetting:
        return out + "<p>Not measured (--no-forgetting).</p>"
    ppl, right, goal = forgetting["perplexity"], forgetting["right"], forgetting["goal_ratio"]
    n = right["questions"]
    rows = [[esc(w), f"{ppl[w]:.2f}", esc(ppl["tokens"]), f"{right[w]} / {n}"] for w in BOTH]
    meets = "meets" if forgetting["within_goal"] else "<span class='missed'>does not meet</span>"
    verdict = (
        f"General-text perplexity base {ppl['base']:.2f} → twin {ppl['twin']:.2f} "
        f"({(forgetting['ratio'] - 1) * 100:+.1f}%): the twin {meets} the goal of at most "
        f"{(goal - 1) * 100:+.0f}%."
    )
    answers = [
        [
            esc(a["question"]),
            esc(a["reference"]),
            *(("✓ " if a[f"{w}_right"] else "") + chat(a[w]) for w in BOTH),
        ]
        for a in forgetting.get("answers") or []
    ]
    return (
        out
        + f"<p>{esc(EXPLAINED['forgetting'])}</p>"
        + table(["model", "general-text perplexity", "tokens", "questions answered right"], rows, (1, 2, 3))
        + f"<p>{verdict}</p><p class='muted'>✓ means the answer contains the reference (a rough check; "
        "read the answers).</p>" + table(["question", "reference", "base", "twin"], answers)
    )


def samples_html(found: Mapping[str, Any]) -> str:
    shown = (found.get("args") or {}).get("prompted_examples", "")
    labels = {
        "real": "<b>real reply</b>",
        "twin": "<b>twin</b>",
        "prompted base": f"base prompted with {esc(shown)} real exchanges",
    }
    out = ["<h2>Side by side</h2>"]
    for k, s in enumerate(found.get("samples") or [], start=1):
        rows = [["earlier turns", chat(s["context"]) if s.get("context") else "<i>(none)</i>"]]
        rows.append([f"{chat(s.get('partner', ''))} wrote", chat(s.get("message", ""))])
        for who, text in s.items():
            if who not in ("partner", "context", "message"):
                rows.append([labels.get(who, esc(who)), chat(text) if text else "<i>(empty)</i>"])
        out.append(f"<h3>{k}. with {chat(s.get('partner', ''))}</h3>" + table(["", ""], rows))
    return "".join(out)


def render_html(found: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    """The whole page from report.json's content and the plots' PNG bytes (by file name)."""
    summary = build_summary(found)
    a = found.get("args") or {}
    ppl = found.get("perplexity") or {}
    meta = " · ".join(
        [
            found.get("written", ""),
            f"base {a.get('checkpoint_dir', '')}",
            f"adapter {a.get('lora_path', '')}",
            f"{ppl.get('val_records', '?')} held-out records in {a.get('data', '')}",
            f"{found.get('seconds', 0):.0f} s",
        ]
    )
    loss = image(pngs, "loss.png", "training loss")
    body = [
        f"<h1>Twin quality report</h1><p class='muted'>{esc(meta)}</p>",
        summary_html(summary),
        perplexity_html(found, summary.columns, pngs),
        style_html(found, pngs),
        quality_html(found, pngs),
        forgetting_html(found.get("forgetting")),
        samples_html(found),
        "<h2>Training loss</h2>" + (loss or f"<p>{NO_LOSSES}.</p>"),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<meta name='referrer' content='no-referrer'>"
        f"<title>Twin quality report</title><style>{PAGE_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
