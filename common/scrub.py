"""Scrub secrets out of free text by replacing each with a typed placeholder (`<EMAIL>`, `<CARD>`, ...).

One reusable function, `scrub_secrets(text) -> str`, for training data and for anything the server logs;
`scrub_secrets_with_counts` also says what it replaced, by kind, and `scrub_many` does a batch. Only the
standard library is imported, so importing this module is cheap.

The message keeps its shape and voice ("my card is <CARD>, call me at <PHONE>"); ordinary numbers —
times, prices, dates, versions, room and order numbers, years — are left alone. Several patterns are
adapted from Yelp's detect-secrets plugins (Apache-2.0, https://github.com/Yelp/detect-secrets):
`aws.py` (AKIA key ids), `github_token.py`, `slack.py`, `telegram_token.py`, `openai.py`, `gcp_key.py`,
`jwt.py`, `private_key.py`, `basic_auth.py`, the keyword list of `keyword.py` and the Shannon-entropy
test of `high_entropy_strings.py`. Checksums (Luhn for cards, ISO 13616 mod-97 for IBANs) keep
look-alike numbers out.

Scrubbing is idempotent: placeholders never match a rule, and a text is re-scrubbed until nothing
changes, so `scrub_secrets(scrub_secrets(t)) == scrub_secrets(t)`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

KINDS: tuple[str, ...] = (
    "PRIVATE_KEY",
    "SECRET_URL",
    "TOKEN",
    "API_KEY",
    "EMAIL",
    "PASSWORD",
    "IBAN",
    "CARD",
    "PHONE",
)
"""Every kind of secret replaced; the placeholder of kind K is `<K>`."""

PLACEHOLDER = re.compile(r"<(?:" + "|".join(KINDS) + r")>")

Span = tuple[int, int, str]
"""(start, end, kind): replace `text[start:end]` with `<kind>`."""

# A text that matches none of these cannot hold any secret below and is returned untouched; nearly all
# chat messages take this exit. Every rule's trigger must be covered here (tests check each kind). The
# same pattern also runs through RE2 (pyarrow) in `scrub_many`, so keep it free of look-arounds, `\b`
# and back-references.
_SHAPES = (
    r"@|://|www\.|-----BEGIN|PuTTY|eyJ|[\[({][ \t]*(?:at|собака)[ \t]*[\])}]"
    r"|\d[\d \t().+/-]{5,}\d"  # 7+ digits with separators: phones, cards, bot tokens
    r"|[A-Za-z0-9_+/=-]{16}"  # long unbroken runs: keys, tokens, high-entropy strings
    r"|[A-Z]{2}\d{2}[ \t]?[A-Z0-9]{4}"  # the head of an IBAN
)
_KEYWORDS = (
    r"pass|pwd|pw|contrase|парол|пасс|pin|пин|cvv|cvc|csc|свв|цвв|code|код|otp|2fa|sms|смс"
    r"|key|ключ|token|токен|secret|секрет|bearer|sig|auth|credential|aws"
)
_MAYBE_SHAPE = re.compile(_SHAPES)
_MAYBE_KEYWORD = re.compile(_KEYWORDS)  # run on the lower-cased text: much faster than re.IGNORECASE
_MAYBE_RE2 = "(?i)" + _SHAPES.replace(r"\d", r"\p{Nd}") + "|" + _KEYWORDS  # RE2's \d is ASCII-only


def maybe_secret(text: str) -> bool:
    """False when `text` certainly holds no secret (the cheap test every text goes through first)."""
    return _MAYBE_SHAPE.search(text) is not None or _MAYBE_KEYWORD.search(text.lower()) is not None


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s own character distribution."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# IBAN length by country (ISO 13616 registry); an unknown country code is checked by mod-97 alone.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    """ISO 13616: the country's length (when known) and the mod-97 check digits."""
    if not (15 <= len(compact) <= 34) or IBAN_LENGTHS.get(compact[:2], len(compact)) != len(compact):
        return False
    if not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


_HEX = frozenset("0123456789abcdef")
_PARTS = re.compile(r"[-._]")


def looks_random(token: str) -> bool:
    """A machine-made string (key, token): long, mixed character classes, high Shannon entropy."""
    core = token.strip("=.")
    n = len(core)
    if n < 16:
        return False
    digits = sum(c.isdigit() for c in core)
    letters = sum(c.isalpha() for c in core)
    if letters == 0:
        return False  # an id, a number, a date
    parts = [part for part in _PARTS.split(core) if part]
    if len(parts) > 1 and all(part.isalpha() or part.isdigit() for part in parts):
        return False  # words and numbers joined by dots/dashes: mail.example.com, 2024-05-01-backup
    if digits and set(core.lower()) <= _HEX:
        # Hex keys use only 16 symbols, so their entropy tops out at 4 bits a character.
        return shannon_entropy(core.lower()) >= (2.5 if n < 24 else 3.0)
    if digits == 0:
        # Letters only: random ones mix cases evenly; CamelCaseWords have one capital per word.
        upper = sum(c.isupper() for c in core)
        if not 0.25 <= upper / letters <= 0.75:
            return False
    return shannon_entropy(core) >= (3.0 if n < 24 else 3.5)


# ---------------------------------------------------------------------------------------------------
# Rules. Each finds spans to replace in a text; they run in order (most specific first), each on the
# output of the previous one, so a later rule never sees a secret an earlier rule already replaced.


@dataclass(frozen=True, slots=True)
class Rule:
    """One detector: `pattern` finds candidates, `check` turns a candidate into a span or rejects it."""

    name: str
    kind: str
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], Span | None] | None = None
    finder: Callable[[str], Iterator[Span]] | None = None
    needs: tuple[str, ...] = ()
    """Cheap guard: the lower-cased text must contain one of these, or the rule is skipped."""
    needs_digits: bool = False
    """Cheap guard: the text must hold 7+ digits in a row (separators allowed)."""

    def spans(self, text: str) -> Iterator[Span]:
        if self.finder is not None:
            yield from self.finder(text)
            return
        for m in self.pattern.finditer(text):
            span = self.check(m) if self.check else (m.start(), m.end(), self.kind)
            if span is not None:
                yield span


def _whole(kind: str, ok: bool, m: re.Match[str]) -> Span | None:
    return (m.start(), m.end(), kind) if ok else None


def _group(m: re.Match[str], kind: str, group: str = "value") -> Span:
    return (m.start(group), m.end(group), kind)


# ---- private keys --------------------------------------------------------------------------------
_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(
    r"(?:[ \t\r]*\n[ \t]*(?:[A-Za-z0-9+/=]{8,}|[\w-]+:[^\n]*))*"
)  # lines left of a cut paste


def _find_private_keys(text: str) -> Iterator[Span]:
    """Whole BEGIN…END blocks; a block cut off before its END loses its header and base64 lines."""
    pos, no_end = 0, False
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = None if no_end else _PEM_END.search(text, begin.end())
        no_end = end is None  # searched to the end of the text once: never again (stays linear)
        body = _PEM_BODY.match(text, begin.end())  # always matches (possibly nothing)
        stop = end.end() if end is not None else body.end() if body else begin.end()
        yield (begin.start(), stop, "PRIVATE_KEY")
        pos = stop


_PUTTY_KEY = re.compile(
    r"PuTTY-User-Key-File-\d:.*?(?:Private-(?:MAC|Hash):[ \t]*[0-9a-fA-F]+|\Z)", re.DOTALL
)

# ---- URLs with credentials or secret parameters --------------------------------------------------
_URL = re.compile(r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://|\bwww\.)[^\s<>\"'`]+")
_URL_SECRET = re.compile(
    r"^[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s/?#@:]*:[^\s/?#@]+@"  # user:password@host
    r"|[?&#;](?:[\w.-]*[_.-])?(?:access_?token|refresh_?token|token|secret|password|passwd|pwd|pass|api_?key"
    r"|apikey|key|auth|sig|signature|credential|code)=[^&#\s]{4,}"  # ?token=..., &key=..., #access_token=...
    r"|hooks\.slack\.com/services/T\w+/B\w+/\w+"  # Slack webhooks (detect-secrets slack.py)
    r"|api\.telegram\.org/(?:file/)?bot\d{8,10}:",  # Telegram Bot API calls carry the bot token
    re.IGNORECASE,
)
_URL_TRAILING = ".,;:!?)]}»"


def _find_secret_urls(text: str) -> Iterator[Span]:
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(_URL_TRAILING)
        if _URL_SECRET.search(url):
            yield (m.start(), m.start() + len(url), "SECRET_URL")


# ---- keys and tokens with a recognisable shape ---------------------------------------------------
_TOKEN_PATTERNS: list[tuple[str, str, str]] = [
    ("jwt", "TOKEN", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ("github", "TOKEN", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ("gitlab", "TOKEN", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    ("slack", "TOKEN", r"\bxox[abposr]-(?:[0-9A-Za-z]+-)*[0-9A-Za-z]{6,}"),
    ("telegram_bot", "TOKEN", r"(?<![\w:])\d{8,10}:[A-Za-z0-9_-]{35}(?![\w-])"),
    ("huggingface", "TOKEN", r"\bhf_[A-Za-z0-9]{30,}"),
    ("npm", "TOKEN", r"\bnpm_[A-Za-z0-9]{36}"),
    ("google_oauth", "TOKEN", r"\bya29\.[0-9A-Za-z_-]{20,}"),
    ("bearer", "TOKEN", r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{16,}=*"),
    ("openai", "API_KEY", r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"),
    ("stripe", "API_KEY", r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}"),
    ("sendgrid", "API_KEY", r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    ("google_api", "API_KEY", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("google_client_secret", "API_KEY", r"\bGOCSPX-[0-9A-Za-z_-]{20,}"),
    ("aws_key_id", "API_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b"),
]


def _check_openai(m: re.Match[str]) -> Span | None:
    body = m.group(0)[3:]  # "sk-" + a random body: it must mix letters and digits ("sk-learn-..." is a word)
    return _whole("API_KEY", any(c.isdigit() for c in body) and any(c.isalpha() for c in body), m)


# ---- passwords, PINs, one-time codes, card security codes ----------------------------------------
# A password is named by a keyword and then given: "password: X", "my password is X", "pwd=X",
# "пароль от вайфая — X", "пароль Qwerty123". Up to three words may sit between the keyword and the value
# ("password for the wifi is X"). After an explicit separator (":", "=", "-", "is", "это") the next token
# is the value unless it is a common word ("my password is wrong"); without one, the value must look
# made-up (a digit, a symbol, mixed case), so "password reset" and "пароль поменял" stay as they are.
_PW_KEYWORD = re.compile(
    r"(?<![^\W_])(?<!<)(?P<kw>pass(?:words?|wd|code|phrase|wort)|pwd|pass|pw|contraseñas?|mot de passe"
    r"|парол[ьяеюи]\w{0,2}|пасс|pin(?:[ -]?code)?|пин(?:[ -]?код)?)(?![^\W\d_])",
    re.IGNORECASE,
)
_NEXT_TOKEN = re.compile(r"[ \t]*\n?[ \t]*(\S+)")
_SEP_TOKENS = frozenset({":", "=", ":=", "-", "–", "—", "->", "=>"})
_SEP_WORDS = frozenset({"is", "was", "are", "это", "будет", "был", "есть", "es", "est"})
_EXPLICIT_ONLY = frozenset({"pass", "pw", "пасс"})  # too common as plain words to go without a separator
_PW_STOPWORDS = frozenset(
    """a an the is was my your his her our their its this that not no yes and or but so if to too for of
    in on at by with from as be been same wrong incorrect correct right invalid valid expired required
    changed reset weak strong saved protected manager please again still also just only very more less
    new old long short simple easy hard here there set ok okay sent send forgot forgotten what which
    where when how why who did does do like change update something nothing empty broken fine good bad
    great working needed missing weird strange secure insecure different generated random unique encrypted
    hidden shown sent written stored known unknown case sensitive
    не нет да и или но а что это тот там тут же ли бы уже еще ещё тоже для от на в к с у по мой моя мое моё
    твой твоя свой неверный неправильный правильный верный старый новый простой сложный сменил сменила
    поменял поменяла забыл забыла потерял потеряла какой какая где как когда потом сейчас теперь
    пожалуйста надо нужно есть был была было будет такой такая длинный короткий пустой надёжный надежный
    другой одинаковый""".split()
)
# "password for the wifi is sunshine" names a password; "the passcode screen is broken" does not: after
# words that are not a preposition, a separator word ("is") needs a made-up looking value.
_PW_PREPOSITIONS = frozenset("for to of on from at от для к на в у с".split())
_TRAILING_PUNCT = ".,;:!?)]}»…"
_QUOTES = {'"': '"', "'": "'", "«": "»", "`": "`", "“": "”"}
_PW_SYMBOLS = frozenset("!@#$%^&*_+=?/\\|~<>[]{}()")


def _made_up(word: str) -> bool:
    """Looks like a password, not a word: a digit, a symbol, or mixed case after the first letter."""
    return (
        any(c.isdigit() for c in word)
        or any(c in _PW_SYMBOLS for c in word)
        or (any(c.isupper() for c in word[1:]) and any(c.islower() for c in word))
    )


def _find_passwords(text: str) -> Iterator[Span]:
    for m in _PW_KEYWORD.finditer(text):
        kw = m.group("kw").lower()
        is_pin = kw.startswith(("pin", "пин"))
        pos, explicit, by_word = m.end(), False, False
        fillers: list[str] = []
        for _ in range(8):
            t = _NEXT_TOKEN.match(text, pos)
            if t is None:
                break
            tok, start = t.group(1), t.start(1)
            pos = t.end()
            if tok in _SEP_TOKENS or tok.lower() in _SEP_WORDS:
                explicit, by_word = True, by_word or tok.lower() in _SEP_WORDS
                continue
            if tok[0] in ":=":  # "password:hunter2", "pwd=hunter2"
                rest = tok.lstrip(":=")
                explicit = True
                if not rest:
                    continue
                tok, start = rest, start + len(tok) - len(rest)
            elif tok[0] in _QUOTES:
                # A quoted value: `password: "two words"`. Without a separator only after a space and not
                # an apostrophe ("password's fine" is no value).
                spaced = start > t.start()
                if explicit or (spaced and tok[0] != "'" and not is_pin):
                    line_end = text.find("\n", start)
                    close = text.find(_QUOTES[tok[0]], start + 1, len(text) if line_end < 0 else line_end)
                    if close > start + 1:
                        yield (start, close + 1, "PASSWORD")
                break
            elif len(tok) > 1 and tok[-1] == ":" and not explicit and len(fillers) < 3:
                fillers.append(tok[:-1].lower())  # "пароль такой:", "wifi password:"
                explicit = True
                continue
            core = tok.rstrip(_TRAILING_PUNCT) or tok
            if PLACEHOLDER.match(core):
                break
            if is_pin:
                if core.isdigit() and 4 <= len(core) <= 8:
                    yield (start, start + len(core), "PASSWORD")
                    break
            elif core.lower() not in _PW_STOPWORDS:
                vague = by_word and fillers and fillers[0] not in _PW_PREPOSITIONS
                if explicit and len(core) >= 3 and (not vague or _made_up(core)):
                    yield (start, start + len(core), "PASSWORD")
                    break
                if not explicit and kw not in _EXPLICIT_ONLY and len(core) >= 4 and _made_up(core):
                    yield (start, start + len(core), "PASSWORD")
                    break
            if explicit or not core.replace("-", "").isalpha() or len(fillers) >= 3:
                break
            fillers.append(core.lower())  # a word between keyword and value: "for", "the", "wifi", "от"


_OTP = re.compile(
    r"(?<!\w)(?:(?:verification|confirmation|security|sms|one[- ]time|2fa|otp|auth(?:entication)?|login"
    r"|access)[ \t]+code|otp|2fa|(?:смс|sms)[- ]?код|код[ \t]+(?:из|с|в)[ \t]+(?:смс|sms|сообщения)"
    r"|код[ \t]+(?:подтверждения|для[ \t]+входа|доступа))"
    r"(?:[ \t]+[^\s\d:=]{1,20}){0,3}?"  # "Код для входа в Telegram: 12345", "code for X is 12345"
    r"[ \t]*(?:is|:|=|-|—)?[ \t]*(?P<value>\d{4,8})(?!\d)",
    re.IGNORECASE,
)
_CVV = re.compile(
    r"(?<!\w)(?:cvv2?|cvc2?|csc|свв|цвв)[ \t]*(?:code|код)?[ \t]*[:=-]?[ \t]*(?P<value>\d{3,4})(?!\d)",
    re.IGNORECASE,
)

# ---- keyword + machine-made value: "api key: 9f8e7d...", "токен abc...", "secret=..." ------------
_KEY_KEYWORD = re.compile(
    r"(?<![^\W_])(?<!<)(?<!<API_)(?<!<PRIVATE_)(?<!<SECRET_)"
    r"(?P<kw>api[ _-]?key|apikey|access[ _-]?key(?:[ _-]?id)?|secret(?:[ _-]?(?:access[ _-]?)?key)?"
    r"|client[ _-]?secret|private[ _-]?key|auth[ _-]?key"
    r"|(?:auth|access|refresh|id|api|bot|session)[ _-]?token|tokens?|keys?|aws|credentials?"
    r"|ключ\w{0,2}|токен\w{0,2}|секрет\w{0,2}|апи[ -]?ключ\w{0,2})(?![^\W\d_])",
    re.IGNORECASE,
)
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9_+/.~-])[A-Za-z0-9_+/.~-][A-Za-z0-9_+/=.~-]{15,}")  # "token=" glues
_TOKEN_START = re.compile(r"(?<![A-Za-z0-9_+/.~-])[A-Za-z0-9_+/.~-]")
_KEY_WINDOW = 80  # how far after the keyword a value may start
_VALUE_END = re.compile(r"[^\s\"'`«»]*")
_QUOTE_CLOSE = {'"': '"', "'": "'", "`": "`", "«": "»"}


def _find_keyword_secrets(text: str) -> Iterator[Span]:
    last_end = -1
    for m in _KEY_KEYWORD.finditer(text):
        kw = m.group("kw").lower()
        kind = (
            "TOKEN" if ("token" in kw or "токен" in kw) else "PRIVATE_KEY" if "private" in kw else "API_KEY"
        )
        # Values starting within the window after the keyword (found by their first character, so a
        # keyword-dense text stays linear).
        for start in _TOKEN_START.finditer(text, max(m.end(), last_end), m.end() + _KEY_WINDOW + 1):
            if start.start() < last_end:
                continue
            c = _CANDIDATE.match(text, start.start())
            if c is None or not looks_random(c.group(0)):
                continue
            # The value may go on past the candidate's characters ("8x!kq2v@z9$w3"): take the rest of a
            # quoted string, else the rest of the whitespace-delimited word (less closing punctuation).
            opening = text[c.start() - 1] if c.start() else ""
            close = text.find(_QUOTE_CLOSE[opening], c.end()) if opening in _QUOTE_CLOSE else -1
            if close != -1 and "\n" not in text[c.end() : close]:
                end = close
            else:
                rest = _VALUE_END.match(text, c.end())
                end = c.end() + len(rest.group(0).rstrip(_TRAILING_PUNCT)) if rest else c.end()
            last_end = end
            yield (c.start(), end, kind)


# ---- bare machine-made strings, no keyword: 32+ chars, upper, lower and digits, high entropy -----
_BARE = re.compile(r"(?<![A-Za-z0-9_+/=.~<-])[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_+/=-])")


def _check_bare(m: re.Match[str]) -> Span | None:
    t = m.group(0)
    ok = (
        any(c.isupper() for c in t)
        and any(c.islower() for c in t)
        and any(c.isdigit() for c in t)
        and shannon_entropy(t) >= 4.0
    )
    return _whole("TOKEN", ok, m)


# ---- contact data --------------------------------------------------------------------------------
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_EMAIL = re.compile(
    r"(?<![\w.%+-])(?<!//)[\w.%+-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")*\.[^\W\d_]{2,24}(?![\w-])"
)
# Spelled out to dodge scrapers: "ivan [at] gmail [dot] com", "ivan(at)mail(dot)ru", "ivan {собака} mail.ru".
_B = r"[ \t]*[\[({][ \t]*"
_E = r"[ \t]*[\])}][ \t]*"
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}" + _B + r"(?:at|собака)" + _E + _LABEL
    + r"(?:(?:" + _B + r"(?:dot|точка)" + _E + r"|\.)" + _LABEL + r")+(?![\w-])",
    re.IGNORECASE,
)  # fmt: skip

# International: "+" and 10–15 digits in groups ("+7 (912) 345-67-89", "+44 20 7946 0958", "+14155552671").
# Russian trunk prefix 8: "8 912 345 67 89", "8(495)123-45-67", "89123456789"; North American:
# "(555) 123-4567", "555-123-4567", "1-800-555-1234"; Russian local "123-45-67", "(495) 123-45-67";
# European trunk 0: "020 7946 0958", "030 12345678".
_S = r"[ \t.-]?"
_PHONE = re.compile(
    r"(?<![\w+])\+\d(?:[ \t.-]?+\(?+\d++\)?+)++(?![\w/-]|[.,]\d)"  # possessive: no backtracking blow-up
    r"|(?<![\w+/.,:-])(?:"
    r"8" + _S + r"\(?\d{3}\)?" + _S + r"\d{3}" + _S + r"\d{2}" + _S + r"\d{2}"
    r"|[78]9\d{9}"
    r"|1[ .-][2-9]\d\d[ .-]\d{3}[ .-]\d{4}"  # North American: area codes start with 2-9
    r"|\([2-9]\d\d\)[ \t]?\d{3}[ \t.-]\d{4}"
    r"|[2-9]\d\d([.-])\d{3}\1\d{4}"
    r"|(?:\(\d{3,5}\)[ \t]?)?\d{3}-\d{2}-\d{2}"
    r"|\(?9\d\d\)?[ -]\d{3}[ -]?\d{2}[ -]?\d{2}"  # Russian mobile without the 8/+7: 912 345 67 89
    r"|[2-9]\d\d [2-9]\d\d \d{4}"  # with spaces only when the exchange starts with 2-9, too: 415 555 2671
    r"|0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}"
    r")(?![\w/-]|[.,:]\d)"
)


def _check_phone(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    if text.startswith("+"):
        return _whole("PHONE", 10 <= digits <= 15, m)
    if text.startswith("0"):
        return _whole("PHONE", 10 <= digits <= 11, m)
    return (m.start(), m.end(), "PHONE")


# ---- money ---------------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w.,+/-])(?:\d[ \t-]?){12,18}\d(?![\w/]|[.,-]\d)")
_YEAR = re.compile(r"(?:19|20)\d\d")
_GROUP_SPLIT = re.compile(r"[ \t-]+")


def _check_card(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    digits = "".join(c for c in text if c.isdigit())
    if not (13 <= len(digits) <= 19) or digits[0] not in "23456" or not luhn_ok(digits):
        return None
    groups = _GROUP_SPLIT.split(text)
    if len(groups) > 1:
        # Cards are written 4-4-4-4(-1..4), 4-6-5 (Amex) or 4-6-4 (Diners); other groupings are lists of
        # numbers, and a list of years ("2019 2020 2021 2022") is never a card.
        sizes = [len(g) for g in groups]
        card_like = sizes[:-1] == [4] * (len(sizes) - 1) or sizes in ([4, 6, 5], [4, 6, 4])
        if not card_like or all(_YEAR.fullmatch(g) for g in groups):
            return None
    return (m.start(), m.end(), "CARD")


_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ \t]?[A-Z0-9]{4}){2,7}(?:[ \t]?[A-Z0-9]{1,4})?(?![a-z0-9])"
)


def _check_iban(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    compact = text.replace(" ", "").replace("\t", "")
    want = IBAN_LENGTHS.get(compact[:2])
    if want and len(compact) > want:
        # The pattern ran on into what follows ("... 0130 00 OK"): keep only the country's length.
        seen = 0
        for i, ch in enumerate(text):
            seen += not ch.isspace()
            if seen == want:
                return (m.start(), m.start() + i + 1, "IBAN") if iban_ok(compact[:want]) else None
    return _whole("IBAN", iban_ok(compact), m)


_TOKEN_NEEDS: dict[str, tuple[str, ...]] = {
    "jwt": ("eyj",),
    "github": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab": ("glpat-",),
    "slack": ("xox",),
    "telegram_bot": (":",),
    "huggingface": ("hf_",),
    "npm": ("npm_",),
    "google_oauth": ("ya29.",),
    "bearer": ("bearer ",),
    "openai": ("sk-",),
    "stripe": ("_live_", "_test_"),
    "sendgrid": ("sg.",),
    "google_api": ("aiza",),
    "google_client_secret": ("gocspx-",),
    "aws_key_id": ("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "aipa", "anpa", "anva", "apka"),
}
_DIGIT_RUN = re.compile(r"\d[\d \t().+/-]{5,}\d")

RULES: tuple[Rule, ...] = (
    Rule("private_key", "PRIVATE_KEY", _PEM_BEGIN, finder=_find_private_keys, needs=("-----begin",)),
    Rule("putty_key", "PRIVATE_KEY", _PUTTY_KEY, needs=("putty-user-key-file",)),
    Rule("secret_url", "SECRET_URL", _URL, finder=_find_secret_urls, needs=("://", "www.")),
    *(
        Rule(
            name,
            kind,
            re.compile(pattern),
            _check_openai if name == "openai" else None,
            needs=_TOKEN_NEEDS[name],
            needs_digits=name == "telegram_bot",
        )
        for name, kind, pattern in _TOKEN_PATTERNS
    ),
    Rule("email", "EMAIL", _EMAIL, needs=("@",)),
    Rule("email_spelled_out", "EMAIL", _EMAIL_SPELLED, needs=("at", "собака")),
    Rule(
        "password",
        "PASSWORD",
        _PW_KEYWORD,
        finder=_find_passwords,
        needs=("pass", "pwd", "pw", "contrase", "парол", "пасс", "pin", "пин"),
    ),
    Rule(
        "one_time_code",
        "PASSWORD",
        _OTP,
        lambda m: _group(m, "PASSWORD"),
        needs=("code", "код", "otp", "2fa"),
    ),
    Rule(
        "card_security_code",
        "CARD",
        _CVV,
        lambda m: _group(m, "CARD"),
        needs=("cvv", "cvc", "csc", "свв", "цвв"),
    ),
    Rule(
        "keyword_secret",
        "API_KEY",
        _KEY_KEYWORD,
        finder=_find_keyword_secrets,
        needs=("key", "token", "secret", "aws", "credential", "ключ", "токен", "секрет"),
    ),
    Rule("iban", "IBAN", _IBAN, _check_iban),
    Rule("card", "CARD", _CARD, _check_card, needs_digits=True),
    Rule("phone", "PHONE", _PHONE, _check_phone, needs_digits=True),
    Rule("high_entropy", "TOKEN", _BARE, _check_bare),
)


def _apply(text: str, counts: Counter[str]) -> str:
    # Guards look at the text as it came in: replacing secrets only ever removes keywords and digits.
    lowered = text.lower()
    digits = _DIGIT_RUN.search(text) is not None
    for rule in RULES:
        if rule.needs and not any(n in lowered for n in rule.needs):
            continue
        if rule.needs_digits and not digits:
            continue
        if rule.pattern.search(text) is None:
            continue
        parts: list[str] = []
        pos = 0
        for start, end, kind in rule.spans(text):
            if start < pos or start >= end:
                continue  # overlapping or empty span: the earlier one already covers it
            parts += (text[pos:start], f"<{kind}>")
            counts[kind] += 1
            pos = end
        if parts:
            parts.append(text[pos:])
            text = "".join(parts)
    return text


def scrub_secrets_with_counts(text: str) -> tuple[str, Counter[str]]:
    """`text` with every secret replaced by its placeholder, and how many of each kind were replaced."""
    counts: Counter[str] = Counter()
    if not text or not maybe_secret(text):
        return text, counts
    for _ in range(3):  # re-scrub until stable: a replacement can expose a neighbouring secret
        scrubbed = _apply(text, counts)
        if scrubbed == text:
            break
        text = scrubbed
    return text, counts


def scrub_secrets(text: str) -> str:
    """`text` with every secret (emails, phones, cards, IBANs, passwords, keys, tokens, private keys,
    URLs with credentials) replaced by a typed placeholder such as `<EMAIL>`; everything else kept."""
    return scrub_secrets_with_counts(text)[0]


def _maybe_secret_batch(texts: list[str]) -> list[bool]:
    """`maybe_secret` over a batch, through RE2 when pyarrow is installed (an order of magnitude faster)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:  # pragma: no cover - pyarrow comes with pandas here
        return [maybe_secret(t) for t in texts]
    mask = pc.match_substring_regex(pa.array(texts, type=pa.large_string()), _MAYBE_RE2)
    return mask.to_numpy(zero_copy_only=False).tolist()


def scrub_many(texts: Iterable[str]) -> tuple[list[str], Counter[str]]:
    """Scrub a batch of texts; returns the scrubbed texts (same order) and the total counts by kind.

    Same result as `[scrub_secrets(t) for t in texts]`, faster on big batches.
    """
    texts = list(texts)
    total: Counter[str] = Counter()
    out = list(texts)
    for i, maybe in enumerate(_maybe_secret_batch(texts)):
        if maybe:
            out[i], counts = scrub_secrets_with_counts(texts[i])
            total.update(counts)
    return out, total
