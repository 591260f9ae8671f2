"""The prompt formats, shared by `finetune` (training text) and `serve` (live chats).

A record is (partner's new message = instruction, earlier turns = context, person's reply = response).
Two formats render it:

- `twin-v1`, the project's own template (`TEMPLATE`, below) for plain base models: labelled turns under
  `###` headings, ending with `### My reply:`; the training text is the prompt + the reply + EOS.
- `chat-template`, an instruct/chat model's own chat template (`prepare.chat_template`): a short system
  line naming the partner, the partner's turns as `user`, the person's as `assistant`, then the template's
  generation prompt; the training text is the prompt + the reply + the template's end-of-turn suffix
  (e.g. `<|im_end|>\n`), so the twin learns to end its turn.

A `Prompter` is one format made concrete (with its template): training calls `Prompter.render_record`,
the server `Prompter.prompt_from_messages` (an OpenAI-style message list, `user` = the partner,
`assistant` = the person), and both end in `Prompter.render`. Everything that shapes the text — text
cleaning, speaker labels and roles, how turns are joined, how long turns are clipped, how context is
capped — lives here so the two sides can never drift apart. The module-level `render_record` and
`prompt_from_messages` are twin-v1's.

Memory (`prepare.memory`): both sides may pass `memories`, the person's own past exchanges retrieved for
this chat. twin-v1 renders them as a block under their own heading before the conversation, chat-template
appends them to the system line; they are clipped and capped (`MEMORY_TURN_CHARS`, `MAX_MEMORY_CHARS`,
best first) and defused like any message text. With no memories a prompt is exactly what it was before.

This module imports nothing heavy (no pandas, no torch): the server imports it on start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

# the chat-template renderer is this module's own part; finetune and serve import it through here
from prepare.chat_template import ChatTemplate, ChatTemplateError
from prepare.chat_template import special_tokens_of as special_tokens_of
from prepare.records import Exchange, Record, Speaker, Turn, is_blank

ME_LABEL = "Me"
DEFAULT_PARTNER = "Friend"
NO_CONTEXT = "(this is the start of the conversation)"
MAX_CONTEXT_TURNS = 8
"""Default cap on earlier turns kept as context (most recent first to survive)."""
MAX_CONTEXT_CHARS = 1500
"""Default cap on the rendered context's length in characters."""
MAX_TURN_CHARS = 1000
"""A turn longer than this (a pasted article, a log, a long burst of messages) is clipped to its head and
its tail around an ellipsis when it is rendered into a prompt, so one paste cannot crowd out the rest of
the conversation — and the question a long burst ends with is still there to answer."""
CLIP_MARK = " […] "
"""Where `clip_text` took the middle out."""
CLIP_HEAD_SHARE = 1 / 3
"""Of what a clipped turn keeps, the share from its head (the rest from its tail, where a burst of
messages ends with what it asks)."""

PromptFormat = Literal["twin-v1", "chat-template"]
"""The prompt formats a twin can be trained with (finetune records its one next to the adapter)."""
PROMPT_FORMAT: PromptFormat = "twin-v1"
"""The format `TEMPLATE` renders (and the one of adapters that record none)."""
CHAT_TEMPLATE: PromptFormat = "chat-template"
"""The base's own chat template (`prepare.chat_template`)."""
TWIN_V1_STOP = "\n###"
"""Where a twin-v1 reply ends if the model runs on: the template's next section heading."""

SYSTEM_LINE = "You are chatting with {partner} on Telegram. Reply as yourself, in your own words."
"""chat-template's system message (merged into the first user message where a template takes none)."""
ROLE_OF: dict[Speaker, str] = {"partner": "user", "me": "assistant"}
REPLAY_PREPARE = "re-run `make prepare` (python -m prepare) to write records with their turns"

TEMPLATE_HEAD = (
    "You are me, chatting with {partner} on Telegram. Write my reply to their new message, "
    "in my own words and style.\n\n"
)
TEMPLATE_BODY = (
    "### Our previous messages:\n{context}\n\n### {partner}'s new message:\n{instruction}\n\n### My reply:\n"
)
TEMPLATE = TEMPLATE_HEAD + TEMPLATE_BODY
MEMORY_BLOCK = "### Things I said before in similar chats:\n{memories}\n\n"
"""twin-v1's memory block: between the template's head and the conversation."""
MEMORY_SYSTEM = "\n\nThings you said before in similar chats:\n{memories}"
"""chat-template's memory block: appended to the system line."""
MEMORY_PARTNER_LABEL = "Them"
"""Who spoke in a remembered exchange (a partner of some earlier chat, maybe not this one)."""
MEMORY_ME_LABEL: dict[PromptFormat, str] = {"twin-v1": ME_LABEL, "chat-template": "You"}
"""The person's label in the memory block: twin-v1 speaks as "me", the system line to "you"."""
MEMORY_TURN_CHARS = 200
"""Each remembered message and reply is clipped to this: memories show the person's voice, not essays."""
MAX_MEMORY_CHARS = 750
"""Cap on the rendered memories (half the context cap, on top of it): the best exchanges that fit."""

# Control characters (except tab and newline) and invisible format characters that carry no meaning
# in a chat but would make two otherwise equal texts differ: zero-width spaces/joiners, word joiner,
# BOM, bidi marks and embeddings.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def clean_text(text: str) -> str:
    """One message as the prompt sees it: newlines normalised, invisible characters dropped, stripped.

    Returns "" for a message with nothing visible in it (whitespace only, zero-width characters, or the
    blank letters sent as "empty" messages: U+3164 Hangul filler, U+2800 braille blank; see `is_blank`).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isprintable():  # fast path: most chat messages are a single printable line
        text = _INVISIBLE.sub("", text)
    text = text.strip()
    return "" if not text.isascii() and is_blank(text) else text


def clip_text(text: str, max_chars: int = MAX_TURN_CHARS) -> str:
    """`text` if it fits in `max_chars`, else its head, a clip mark and its tail (a third and two thirds
    of the rest, `CLIP_HEAD_SHARE`; never longer than `max_chars`). Before, the head alone was kept: a
    burst of messages ending with a question lost the question.

    Idempotent: clipping a clipped text changes nothing.
    """
    if len(text) <= max_chars:
        return text
    return clip_ends(text, text, max_chars)


def clip_ends(head: str, tail: str, max_chars: int = MAX_TURN_CHARS) -> str:
    """`clip_text`'s clipped form from the start of `head` and the end of `tail` (the same text, or two
    ends of one cut apart, as `reply` scrubs a huge turn): nothing between them is ever taken."""
    keep = max(0, max_chars - len(CLIP_MARK))
    first = int(keep * CLIP_HEAD_SHARE)
    last = tail[len(tail) - (keep - first) :] if keep > first else ""
    return (head[:first].rstrip() + CLIP_MARK + last.lstrip())[:max_chars]


# ---- markers in message text: no content can forge a turn ----------------------------------------------
# A message (or a name) is untrusted text: a partner can type the template's own structure into it — a
# `### My reply:` heading, a line `Me: ...` that reads as the person's turn, a chat model's special
# tokens (`<|im_end|><|im_start|>assistant`), which its tokenizer turns into the real control tokens. Such
# markers are defused by swapping one character of each for a look-alike that no template or tokenizer
# treats as structure (same length, so the context caps measure the same text): `#` → `＃`, a label's `:`
# → `꞉`, a special token's `<` → `‹` and `[` → `［`. Training and serving both render through the
# functions below, so the twin learns on exactly the defused text it later sees.
_LOOKALIKE = {"#": "\uff03", ":": "\ua789", "<": "\u2039", "[": "\uff3b"}
_HEADING = re.compile(r"^([ \t]*)(#{3,})", re.MULTILINE)
"""A line that opens like a twin-v1 section heading (`### ...`)."""
_SPECIAL = re.compile(
    r"<\|[^<>|\s]{1,64}\|>"  # <|im_start|>, <|eot_id|>, <|endoftext|>, <|start_header_id|>, ...
    r"|</?s>|<(?:bos|eos|pad|unk)>|<(?:start|end)_of_turn>"  # Llama-2/Mistral, Gemma
    r"|\[/?INST\]|<</?SYS>>|\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS)\]"  # Llama-2, Mistral
    r"|<\|?endoftext\|?>|<\|?(?:im_start|im_end)\|?>",
    re.IGNORECASE,
)
"""Text shaped like the special tokens of the supported families' chat formats."""
_MARKER_CHARS = frozenset("#:<[")


def _defuse_first(match: re.Match[str]) -> str:
    text = match.group()
    return _LOOKALIKE[text[0]] + text[1:]


@lru_cache(maxsize=4096)
def _label_line(label: str) -> re.Pattern[str]:
    """A line that opens with the person's label or `label` and a colon: it would read as a new turn."""
    labels = sorted({ME_LABEL, label}, key=len, reverse=True)
    alternatives = "|".join(re.escape(x) for x in labels)
    return re.compile(rf"^([ \t]*(?:{alternatives})[ \t]*):", re.MULTILINE | re.IGNORECASE)


def neutralize(text: str, label: str | None = None, special: Iterable[str] = ()) -> str:
    """`text` with every marker that could forge prompt structure defused (see above): special-token
    shapes, the given `special` token texts (a chat template's own), and — for twin-v1, when `label` (the
    partner's label) is given — line-initial `###` headings and `Me:` / `<label>:` speaker lines.

    Same length as `text`; idempotent; text without `#`, `:`, `<` or `[` is returned as is.
    """
    if _MARKER_CHARS.isdisjoint(text):
        return text
    for token in special:
        if token and token in text and token[0] in _LOOKALIKE:
            text = text.replace(token, _LOOKALIKE[token[0]] + token[1:])
    if "<" in text or "[" in text:
        text = _SPECIAL.sub(_defuse_first, text)
    if label is not None:
        if "###" in text:
            text = _HEADING.sub(lambda m: m.group(1) + _LOOKALIKE["#"] * len(m.group(2)), text)
        if ":" in text:
            text = _label_line(label).sub(lambda m: m.group(1) + _LOOKALIKE[":"], text)
    return text


_NAME_MARKS = str.maketrans("", "", "#:")


@lru_cache(maxsize=4096)  # one name per chat, asked for every record of it
def partner_label(partner: str | None) -> str:
    """The name the prompt uses for the chat partner (a neutral default when unknown).

    A name is untrusted text too: control and invisible characters, `#` and `:` are dropped, whitespace
    collapsed, special-token shapes defused; a partner whose name is the person's own label (`Me`) is
    labelled `Me (partner)`, so their lines never read as the person's.
    """
    name = " ".join(_INVISIBLE.sub("", partner or "").translate(_NAME_MARKS).split())
    if is_blank(name):  # also a name of blank letters ("ㅤ"), Telegram's trick for an invisible name
        return DEFAULT_PARTNER
    if name.casefold() == ME_LABEL.casefold():
        return f"{name} (partner)"
    return neutralize(name)


def _line(turn: Turn, label: str) -> str:
    text = turn.text if len(turn.text) <= MAX_TURN_CHARS else clip_text(turn.text)
    return f"{ME_LABEL if turn.speaker == 'me' else label}: {neutralize(text, label)}"


def render_turn(turn: Turn, partner: str | None = None) -> str:
    """One labelled line block: `Me: ...` or `<partner>: ...` (long turns clipped)."""
    return _line(turn, partner_label(partner))


def cap_turns(
    turns: Sequence[Turn],
    max_turns: int = MAX_CONTEXT_TURNS,
    max_chars: int = MAX_CONTEXT_CHARS,
    partner: str | None = None,
) -> list[Turn]:
    """The most recent turns that fit both caps, oldest first (never splits a turn).

    Only the last `max_turns` turns are ever looked at, so callers may pass just that tail.
    """
    label_len = len(partner_label(partner))
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns[-max_turns:] if max_turns > 0 else []):
        # == len(_line(turn, label)) + the newline joining it to the next line, without building the line
        text = turn.text
        size = len(text) if len(text) <= MAX_TURN_CHARS else len(clip_text(text))
        cost = (len(ME_LABEL) if turn.speaker == "me" else label_len) + 2 + size + (1 if kept else 0)
        if used + cost > max_chars:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


def render_context(turns: Iterable[Turn], partner: str | None = None) -> str:
    """Earlier turns, oldest first, one labelled turn per block (already capped by the caller)."""
    label = partner_label(partner)
    return "\n".join([_line(t, label) for t in turns])


def render_prompt(
    instruction: str, context: str, partner: str | None = None, memories: Sequence[Exchange] = ()
) -> str:
    """The prompt for one reply; the training text is this plus the response (and EOS). `memories`
    (retrieved past exchanges) go in a block of their own before the conversation."""
    label = partner_label(partner)
    lines = render_memories(memories, MEMORY_ME_LABEL[PROMPT_FORMAT], (label,))
    return (
        TEMPLATE_HEAD.format(partner=label)
        + (MEMORY_BLOCK.format(memories=lines) if lines else "")
        + TEMPLATE_BODY.format(
            partner=label,
            context=context or NO_CONTEXT,
            instruction=neutralize(clip_text(instruction), label),
        )
    )


def render_memories(
    memories: Sequence[Exchange], me_label: str, labels: Iterable[str] = (), special: Iterable[str] = ()
) -> str:
    """Remembered exchanges, best first, as `Them: ...` / `<me_label>: ...` pairs separated by a blank
    line: each text clipped to `MEMORY_TURN_CHARS`, the pairs that fit `MAX_MEMORY_CHARS` kept (the rest
    dropped), "" for none. Memory text is message text: every marker that could forge a heading, a speaker
    line (the memory block's labels and `labels`, e.g. this chat partner's) or a special token is defused.
    """
    label_set = (MEMORY_PARTNER_LABEL, me_label, *labels)
    tokens = tuple(special)
    blocks: list[str] = []
    used = 0
    for exchange in memories:
        message, reply = exchange.message.strip(), exchange.reply.strip()
        if not message or not reply:
            continue
        said, replied = (
            _defuse_memory(clip_text(t, MEMORY_TURN_CHARS), label_set, tokens) for t in (message, reply)
        )
        pair = f"{MEMORY_PARTNER_LABEL}: {said}\n{me_label}: {replied}"
        cost = len(pair) + (2 if blocks else 0)
        if used + cost > MAX_MEMORY_CHARS:
            break
        blocks.append(pair)
        used += cost
    return "\n\n".join(blocks)


def _defuse_memory(text: str, labels: Iterable[str], special: tuple[str, ...]) -> str:
    """`neutralize` once per label (each call defuses `Me:` and that label's lines, and headings)."""
    for label in labels:
        text = neutralize(text, label, special)
    return text


def merge_turns(messages: Iterable[tuple[Speaker, str]]) -> list[Turn]:
    """Merge consecutive messages of one speaker into one turn, newline-joined.

    Each message goes through `clean_text` first; messages with nothing visible are dropped (so the
    messages on either side of a blank one can merge).
    """
    turns: list[Turn] = []
    for speaker, text in messages:
        text = clean_text(text)
        if not text:
            continue
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(speaker, f"{turns[-1].text}\n{text}")
        else:
            turns.append(Turn(speaker, text))
    return turns


ROLE_TO_SPEAKER: dict[str, Speaker] = {"user": "partner", "assistant": "me"}


def turns_from_messages(
    messages: Sequence[Mapping[str, Any]], partner: str | None = None
) -> tuple[list[Turn], str | None]:
    """(turns, partner) of a live OpenAI-style chat (`user` = partner, `assistant` = me).

    `system` messages are not part of the chat itself and are ignored; the partner's name is `partner`,
    else the `name` field of the last `user` message. The chat must end with the partner's (user's)
    message: that is what the twin replies to.
    """
    pairs: list[tuple[Speaker, str]] = []
    named: str | None = None
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role not in ROLE_TO_SPEAKER:
            raise ValueError(f"unknown role {role!r}: use 'user' (the chat partner) or 'assistant' (you)")
        if role == "user" and m.get("name"):
            named = str(m["name"])
        pairs.append((ROLE_TO_SPEAKER[role], str(m.get("content") or "")))
    turns = merge_turns(pairs)
    if not turns or turns[-1].speaker != "partner":
        raise ValueError("the conversation must end with a non-empty 'user' message (the partner's)")
    return turns, named if partner is None else partner


def record_turns(record: Record | Mapping[str, Any]) -> list[Turn] | None:
    """A record's context as turns (None for records written before prepare recorded them)."""
    turns = record.get("turns") if isinstance(record, Mapping) else record.turns
    if turns is None:
        return None
    return [t if isinstance(t, Turn) else Turn(t["speaker"], t["text"]) for t in turns]


def _fields(record: Record | Mapping[str, Any]) -> tuple[str, str, str, str | None]:
    """(instruction, context, response, partner) of a `Record` or a decoded line of train/val JSONL."""
    if isinstance(record, Mapping):
        return record["instruction"], record["context"], record["response"], record.get("partner")
    return record.instruction, record.context, record.response, record.partner


@dataclass(frozen=True)
class Prompter:
    """One prompt format, made concrete: the functions training and serving both call.

    twin-v1 needs nothing else; chat-template needs the base's `ChatTemplate` (the one recorded beside
    the adapter, at serving time).
    """

    format: PromptFormat = PROMPT_FORMAT
    template: ChatTemplate | None = None

    def __post_init__(self) -> None:
        if (self.format == CHAT_TEMPLATE) != (self.template is not None):
            raise ValueError(f"prompt format {self.format!r} with template {self.template!r}")

    # ---- both sides
    def render(
        self,
        context: Sequence[Turn],
        instruction: str,
        partner: str | None = None,
        memories: Sequence[Exchange] = (),
    ) -> str:
        """The prompt for a reply to `instruction` after the (already capped) `context` turns, with the
        retrieved `memories` (best first; `prepare.memory`) if any."""
        if self.template is None:
            return render_prompt(instruction, render_context(context, partner), partner, memories)
        messages = self.messages(context, instruction, partner, memories)
        return self.template.render(messages, add_generation_prompt=True)

    def messages(
        self,
        context: Sequence[Turn],
        instruction: str,
        partner: str | None,
        memories: Sequence[Exchange] = (),
    ) -> list[dict[str, str]]:
        """chat-template's message list: the system line (with the `memories` appended), then the turns
        as `user`/`assistant` (clipped as twin-v1 clips them). A template that takes no system message (or
        insists on opening with the user when the context opens with the person) gets the system line as
        the start of the chat's first user message, or as a user message of its own before the person's
        first turn."""
        special = self._special_tokens
        chat = [
            {"role": ROLE_OF[t.speaker], "content": neutralize(clip_text(t.text), None, special)}
            for t in context
        ]
        chat.append({"role": "user", "content": neutralize(clip_text(instruction), None, special)})
        system = SYSTEM_LINE.format(partner=partner_label(partner))
        if lines := render_memories(memories, MEMORY_ME_LABEL[CHAT_TEMPLATE], (), special):
            system += MEMORY_SYSTEM.format(memories=lines)
        template = self.template
        if template is None or (
            template.takes_system and (chat[0]["role"] == "user" or template.takes_assistant_first)
        ):
            return [{"role": "system", "content": system}, *chat]
        if chat[0]["role"] == "user":
            return [{"role": "user", "content": f"{system}\n\n{chat[0]['content']}"}, *chat[1:]]
        return [{"role": "user", "content": system}, *chat]

    @property
    def _special_tokens(self) -> tuple[str, ...]:
        """The template's own special-token texts (its named tokens, its end-of-turn marker), defused in
        message text beside the generic special-token shapes."""
        if self.template is None:
            return ()
        return (*self.template.special_tokens.values(), self.template.end_of_turn)

    @property
    def stop_strings(self) -> list[str]:
        """Text that ends a reply if the model writes it (beside the end-of-turn/EOS tokens)."""
        if self.template is None:
            return [TWIN_V1_STOP]
        return [self.template.end_of_turn] if self.template.end_of_turn else []

    # ---- training
    def render_record(
        self, record: Record | Mapping[str, Any], memories: Sequence[Exchange] = ()
    ) -> tuple[str, str]:
        """(prompt, response) of an instruction record: a `Record`, or a decoded line of train/val JSONL;
        with `memories`, the past exchanges retrieved for it (never its own: `prepare.memory`).

        twin-v1: the response is the reply (finetune adds the EOS token). chat-template: the reply plus the
        template's end-of-turn suffix, so that the loss teaches the twin to end its turn; it needs the
        record's `turns` (a `ValueError` saying to re-run prepare for records written before them).
        """
        instruction, context, response, partner = _fields(record)
        if self.template is None:
            prompt = render_prompt(instruction, context, partner, memories)
            return prompt, neutralize(response, partner_label(partner))
        turns = record_turns(record)
        if turns is None:
            raise ValueError(
                f"the records have no `turns` (written before the {CHAT_TEMPLATE} prompt format existed): "
                f"{REPLAY_PREPARE}, or train with --prompt-format twin-v1"
            )
        messages = self.messages(turns, instruction, partner, memories)
        response = neutralize(response, None, self._special_tokens)
        prompt = self.template.render(messages, add_generation_prompt=True)
        suffix = self.template.reply_suffix(messages, response, prompt)
        if not suffix.strip():
            raise ChatTemplateError(
                "the chat template writes nothing after the assistant's reply: there is no end-of-turn "
                "marker for the twin to learn to stop at"
            )
        return prompt, response + suffix

    # ---- serving
    def prompt_from_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        partner: str | None = None,
        max_turns: int = MAX_CONTEXT_TURNS,
        max_chars: int = MAX_CONTEXT_CHARS,
        memories: Sequence[Exchange] = (),
    ) -> str:
        """Render a live OpenAI-style chat into the training prompt (see `turns_from_messages`), with the
        `memories` retrieved for it (`prepare.memory`) if any.

        Pass the same caps that `prepare` used (its `prepare_config.json`) when they were not the defaults.
        """
        turns, partner = turns_from_messages(messages, partner)
        context = cap_turns(turns[:-1], max_turns, max_chars, partner)
        return self.render(context, turns[-1].text, partner, memories)


TWIN_V1 = Prompter()


def render_record(record: Record | Mapping[str, Any]) -> tuple[str, str]:
    """twin-v1's (prompt, response) of an instruction record (`Prompter.render_record`)."""
    return TWIN_V1.render_record(record)


def prompt_from_messages(
    messages: Sequence[Mapping[str, Any]],
    partner: str | None = None,
    max_turns: int = MAX_CONTEXT_TURNS,
    max_chars: int = MAX_CONTEXT_CHARS,
) -> str:
    """twin-v1's prompt for a live OpenAI-style chat (`Prompter.prompt_from_messages`)."""
    return TWIN_V1.prompt_from_messages(messages, partner, max_turns, max_chars)
