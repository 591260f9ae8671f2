"""Scrub secrets out of free text by replacing each with a typed placeholder (`<EMAIL>`, `<CARD>`, ...).

One reusable function, `scrub_secrets(text) -> str`, for training data and for anything the server logs;
`scrub_secrets_with_counts` also says what it replaced, by kind, `scrub_secrets_with_spans` where (offsets
into the text it was given, never the values), and `scrub_many` does a batch. Importing this module is
cheap: only the standard library at import time; python-stdnum's validators and the BIP-39 word lists of
`mnemonic` (the ten official ones: English, Spanish, French, Italian, Portuguese, Czech, Japanese, Korean,
Chinese simplified and traditional) are loaded the first time a candidate needs them.

The message keeps its shape and voice ("my card is <CARD>, call me at <PHONE>"); ordinary numbers —
times, prices, dates, versions, room and order numbers, years — are left alone. Several patterns are
adapted from Yelp's detect-secrets plugins (Apache-2.0, https://github.com/Yelp/detect-secrets):
`aws.py` (AKIA key ids), `github_token.py`, `slack.py`, `telegram_token.py`, `openai.py`, `gcp_key.py`,
`jwt.py`, `private_key.py`, `basic_auth.py`, the keyword list of `keyword.py` and the Shannon-entropy
test of `high_entropy_strings.py`. Checksums keep look-alike numbers out: Luhn for cards, ISO 13616
mod-97 for IBANs (also typed without the country letters), python-stdnum for INN/SSN and
the TC kimlik, codice fiscale and Portuguese NIF, the documented SNILS checksum, BIP-39's for seed phrases.

Numbers broken by a line break (also two messages of one sender, which prepare joins with a newline
into one turn) are caught as one number, and a replacement always takes the whole value (two readings of
one value that overlap are replaced as one).

Scrubbing is idempotent: placeholders never match a rule, and a text is re-scrubbed until nothing
changes, so `scrub_secrets(scrub_secrets(t)) == scrub_secrets(t)`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = (
    "PRIVATE_KEY",
    "SECRET_URL",
    "TOKEN",
    "API_KEY",
    "SEED_PHRASE",
    "EMAIL",
    "PASSWORD",
    "ACCESS_CODE",
    "ID_NUMBER",
    "BANK_ACCOUNT",
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
    r"@|://|www\.|-----BEGIN|PuTTY|eyJ|[\[({<][ \t]*(?:at|собака)"
    r"|\d[\d \t\n().+/-]{5,}\d"  # 7+ digits with separators: phones, cards, IDs, accounts, bot tokens
    r"|[A-Za-z0-9_+/=-]{16}"  # long unbroken runs: keys, tokens, high-entropy strings
    r"|[A-Z]{2}\d{2}[ \t]?[A-Z0-9]{4}"  # the head of an IBAN
    r"|[A-Za-z]{2}[ \t]?\d{2}[ \t]?\d{2}[ \t]?\d{2}"  # a UK National Insurance number
    r"|[ \t]at[ \t]+[A-Za-z0-9-]+\.[A-Za-z]{2,6}"  # "ivan at yahoo.com"
)
_KEYWORDS = (
    r"pass|pwd|pw|psw|pasw|contrase|парол|порол|пасс|pin|пин|пін|clave|mdp|senha|kennwort|has[łl]o|wachtwoord|cvv|cvc|csc|свв|цвв|code|код|c[oó]dig|codic|kod|otp|2fa|sms|смс"
    r"|key|ключ|token|токен|secret|секрет|bearer|sig|auth|cred|aws"
    r"|wi-?fi|wlan|вай-?фа|gfhjk|зфыы|згв|ifre|parola|ssid"  # Wi-Fi; "пароль"/"pwd" in the other layout
    r"|🔐|🔑|🗝"  # a key emoji before a password
    r"|login|лог[иі]н|учетк|доступ|:[^\s/\d]"  # user:password pairs ("admin:Admin123!", "creds: u:p")
    r"|to verif|to confirm"  # "use 4829 to verify"
    r"|домофон|intercom|keypad|buzzer|lockbox|door|двер|gate|калитк|ворот|подъезд"  # door codes
    r"|domofon|citofon"
    r"|the back|on back|reverse|оборот|обратн|сзади"  # card codes in words
    r"|паспорт|passport|сери|собака| dot |точка"  # passport series + number; e-mails spelled out
    r"|ausweis|pasaport|passeport|passaport|id.?card|identit|мфо"  # IDs of letters and digits; short codes
    r"|licen|удостовер"  # driver's licences (5-6 digits pass no shape above)
    r"|ag[eê]ncia|conta|c/c|pix|chave|cnpj"  # Brazil's short accounts ("conta 1234-5") and PIX keys
    r"|ag[ \t.:]+\d|cc[ \t.:]+\d|c\.c\.[ \t]*\d"  # "ag 0001 cc 1234-5"
)
# 12 short words in a row: maybe a seed phrase (then the word lists decide: plain prose takes this exit too).
# What may sit between two words of one: spaces (a no-break space, the ideographic space of a Japanese
# phrase), line breaks, punctuation, numbering ("1.", "(2)", "3️⃣"), quotes and brackets of a list pasted
# from code ('["abandon", "ability", ...]'). The spaces are spelled out: RE2 (`scrub_many`) reads `\s` as
# ASCII only, and the two engines must agree.
_SPACES = " \t\n\r\f\v\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SEED_SEP = "[" + _SPACES + r",.;:0-9()|/•·*#\[\]" + "\"'«»“”‘’\ufe0f\u20e3、，；：。・" + r"-]{1,6}"
# A word of a BIP-39 list: Latin letters with the accents of the Spanish, French and Czech lists (typed
# composed or not); or Japanese hiragana, Korean hangul, one Chinese character.
_SEED_LATIN = "A-Za-zÀ-ÖØ-öø-ſ\u0300-\u036f"
_SEED_KANA, _SEED_HANGUL, _SEED_HAN = "\u3040-\u309f\u30fc", "\u1100-\u11ff\uac00-\ud7a3", "\u4e00-\u9fff"
_SEED_CJK = _SEED_KANA + _SEED_HANGUL + _SEED_HAN
# Chinese words typed without spaces are the characters of any Chinese sentence: only after the word that
# names them ("助记词：的一是在…"), and then the checksum decides.
_SEED_GLUED_KEYWORD = "助记词|助記詞|种子|種子"


def _seed_shape(letters: str, shortest: int, python: bool) -> str:
    """12 words of `letters` in a row. For Python's engine a run starts at a word's start and is never
    taken back (possessive: the letters and the separators have no character in common), so prose costs
    one try a word; RE2 (linear anyway) knows neither."""
    plus, start = ("+", f"(?<![{letters}])") if python else ("", "")
    word = f"[{letters}]{{{shortest},16}}{plus}"
    return f"{start}(?:{word}{_SEED_SEP}{plus}){{11}}{word}"


_SEED_GLUED_SHAPE = "(?:" + _SEED_GLUED_KEYWORD + ")[^\n]{0,8}[" + _SEED_HAN + "]{12}"
_SEED_SHAPE_SRC = "|".join(
    (_seed_shape(_SEED_LATIN, 3, python=False), _seed_shape(_SEED_CJK, 1, python=False), _SEED_GLUED_SHAPE)
)
_MAYBE_SHAPE = re.compile(_SHAPES)
_MAYBE_KEYWORD = re.compile(_KEYWORDS)  # run on the lower-cased text: much faster than re.IGNORECASE
_MAYBE_RE2 = "(?i)" + _SHAPES.replace(r"\d", r"\p{Nd}") + "|" + _KEYWORDS  # RE2's \d is ASCII-only


def maybe_secret(text: str) -> bool:
    """False when `text` certainly holds no secret (the cheap test every text goes through first)."""
    if _MAYBE_SHAPE.search(text) is not None or _MAYBE_KEYWORD.search(text.lower()) is not None:
        return True
    # Long runs of short words are common (pasted prose); only a run of BIP-39 words needs the full scrub.
    return _seed_shaped(text) and next(_find_seed_phrases(text), None) is not None


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


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex for any of `words`, with shared prefixes factored out ("pas(?:sport|aport)"): the regex
    engine then tries only the branches that start with the character in front of it, not every word."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


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
    min_length: int = 0
    """Cheap guard: shorter texts cannot hold this kind (a 12-word seed phrase needs 47 characters)."""
    needs_pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.needs:  # one C-level search instead of a Python loop over substrings
            object.__setattr__(self, "needs_pattern", re.compile(_trie_pattern(self.needs)))

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
    r"|[?&#;](?:[\w.-]*[_.-])?(?:access_?token|refresh_?token|token|secret|password|passwd|pwd|pass|api_?key|session_?id|session|sid|jwt|otp"
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
    ("bearer", "TOKEN", r"(?:(?<=[Bb]earer )|(?<=[Bb]earer: )|(?<=BEARER ))[A-Za-z0-9._~+/-]{16,}=*"),
    ("openai", "API_KEY", r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"),
    ("stripe", "API_KEY", r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}"),
    ("sendgrid", "API_KEY", r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    ("google_api", "API_KEY", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("google_client_secret", "API_KEY", r"\bGOCSPX-[0-9A-Za-z_-]{20,}"),
    ("aws_key_id", "API_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b"),
]


_CAMEL_CASE = re.compile(r"[a-z]*(?:[A-Z][a-z]+)+")


def _check_openai(m: re.Match[str]) -> Span | None:
    """ "sk-" + a random body: letters and digits, or letters alone in one run of 20+ with both cases (no
    word is that long); "sk-learn-contrib" is words joined by dashes."""
    body = m.group(0)[3:]
    mixed = any(c.isdigit() for c in body) and any(c.isalpha() for c in body)
    random_letters = any(
        len(part) >= 20
        and part.isalpha()
        and not part.islower()
        and not part.isupper()
        and not (_CAMEL_CASE.fullmatch(part) and sum(c.isupper() for c in part) < 0.3 * len(part))
        for part in _PARTS.split(body)
    )
    return _whole("API_KEY", mixed or random_letters, m)


# ---- passwords, PINs, one-time codes, card security codes ----------------------------------------
# A password is named by a keyword and then given: "password: X", "my password is X", "pwd=X",
# "пароль от вайфая — X", "пароль Qwerty123". Up to three words may sit between the keyword and the value
# ("password for the wifi is X"). After an explicit separator (":", "=", "-", "is", "это") the next token
# is the value unless it is a common word ("my password is wrong") or starts a phrase ("password: see the
# doc"); without one, the value must look made-up (a digit, a symbol, mixed case), so "password reset" and
# "пароль поменял" stay as they are. The keyword may be typed in the other keyboard layout ("gfhjkm" is
# "пароль" on an English layout, "зфыыцщкв" is "password" on a Russian one). The value is the whole
# whitespace-delimited token, closing punctuation aside ("sunny2020!" keeps its "!": no tail is left).
_PW_KEYWORD = re.compile(
    r"(?<![^\W_])(?<![<>])(?P<kw>pass(?:code|phrase|wort)|pas{1,2}w(?:o?r)?d?s?|pwd|ps?wd|psw|pass|pw"
    r"|contraseñas?|mot de passe|mdp|clave|senhas?|kennwort|has[łl]o|wachtwoord"
    r"|(?:network|security|wpa2?|wi-?fi)[ \t]+key|ключ[ \t]+(?:сети|безопасности)"
    r"|п[ао]р[оа]л[ьяеюи]?\w{0,2}|пасс|pin(?:[ -]?code)?|п[иі]н(?:[ -]?код)?"
    r"|[şs]ifre(?:m|n|si|niz)?|parola(?:[ \t]+d['’]ordine)?)(?![^\W\d_])",
    re.IGNORECASE,
)
_NETWORK_KEY = re.compile(
    r"(?:ключ\w{0,2}|key|код\w{0,2})[ \t]+(?:от[ \t]+|для[ \t]+|(?:for|to)[ \t]+(?:the[ \t]+)?)?$",
    re.IGNORECASE,
)
_NET_KEY = re.compile(
    r"(?<![^\W_])(?:key|schl[üu]ssel|cl[ée]|chiave|chave|klucz|anahtar\w{0,3}|ключ)(?![^\W\d_])",
    re.IGNORECASE,
)
_NET_NAME = re.compile(
    r"(?<![^\W_])(?:ssid|network|netzwerk|wlan|wi-?fi|r[ée]seau|rete|sie[ćc]|сеть|сети|мереж\w)"
    r"(?![^\W\d_])",
    re.IGNORECASE,
)
_NET_NEAR = 60  # how far before a "key" the network's name may be
_WIFI_KEYWORD = re.compile(r"(?<![^\W_])(?P<kw>wi-?fi|wlan|вай-?фа\w{0,3})(?![^\W\d_])", re.IGNORECASE)
# The two keyboard layouts, key for key: the same length, so offsets carry over.
_EN_KEYS = "`qwertyuiop[]asdfghjkl;'zxcvbnm,.~QWERTYUIOP{}ASDFGHJKL:\"ZXCVBNM<>"
_RU_KEYS = "ёйцукенгшщзхъфывапролджэячсмитьбюЁЙЦУКЕНГШЩЗХЪФЫВАПРОЛДЖЭЯЧСМИТЬБЮ"
_EN_TO_RU = str.maketrans(_EN_KEYS, _RU_KEYS)
_RU_TO_EN = str.maketrans(_RU_KEYS, _EN_KEYS)
_PW_KEYWORD_EN_TYPED = re.compile(r"(?P<kw>парол[ьяеюи]?)", re.IGNORECASE)  # inside a word: "zgfhjkm"
_PW_KEYWORD_RU_TYPED = re.compile(r"(?<![^\W_])(?P<kw>password|passwd|pass|pwd)(?![^\W\d_])", re.IGNORECASE)
_PW_ANY = re.compile(
    r"pass|pwd|pw|psw|pasw|парол|порол|пасс|pin|пин|пін|wi-?fi|wlan|вай|gfhjk|зфыы|згв|contrase|network key"
    r"|security key|wpa|clave|mdp|senha|kennwort|has[łl]o|wachtwoord"
    r"|ключ сети|ключ безопасности|[şs]ifre|parola"
    r"|ssid|network|netzwerk|r[ée]seau|rete|sie[ćc]|сеть|сети|мереж|\U0001f510|\U0001f511|\U0001f5dd",
    re.IGNORECASE,
)
_NEXT_TOKEN = re.compile(r"[ \t]*\n?[ \t]*(\S+)")
_KEY_EMOJI = re.compile("[\U0001f510\U0001f511\U0001f5dd][\ufe0f]?")  # 🔐 🔑 🗝
_EMOJI = re.compile("[\u2190-\u2bff\U0001f000-\U0001faff\ufe0f\u200d]+")  # a token of emoji alone
_SPACED_PIN = re.compile(r"\d{1,4}(?:[ -]\d{1,4}){1,7}(?![\d.,:/-]?\d)")  # a PIN typed in groups
_SEP_TOKENS = frozenset({":", "=", ":=", "-", "–", "—", "->", "=>"})
_SEP_WORDS = frozenset(
    {"is", "was", "are", "это", "будет", "был", "есть", "такой", "вот", "це", "є", "es", "est", "ist",
     "lautet", "é", "è", "jest", "it's", "it’s"}
)  # fmt: skip
# Outside English and Russian the stop words above know no plain words ("la contraseña es muy larga"): a
# value named by these must look made-up unless a ":" or "=" gives it.
_FOREIGN_KW = frozenset(
    """contraseña contraseñas mot de passe mdp clave senha senhas kennwort hasło haslo wachtwoord
    passwort parola şifre şifrem şifren şifresi şifreniz sifre sifrem sifresi \U0001f510 \U0001f511
    \U0001f5dd""".split()
)
# "the password has 12345678 in it", "пароль содержит 8 цифр": a verb that describes the password, so
# what follows is no value.
_PW_DESCRIBES = frozenset(
    """has have had contains contain containing includes include including needs need must should requires
    require consists ends starts begins содержит имеет должен должна нужно начинается заканчивается
    состоит""".split()
)
# "password is: correct horse battery staple", "passphrase: purple monkey dishwasher": after "is:" (a
# separator word and a colon) or after a passphrase's separator, plain words are the value, up to the end
# of the line or sentence; unless they start a phrase that points elsewhere ("passphrase: see the doc").
_PHRASE_STARTS = frozenset(
    """see check ask look read find in on at the same below above attached pinned dm pm it's it is not
    смотри см спроси глянь посмотри в на такой же тот""".split()
)
_PHRASE = re.compile(r"[^\W\d_][\w'’-]*(?:[ \t]+[^\W\d_][\w'’-]*){0,7}")
# A login named before the password ("логин ivan92 пароль qwerty", "username admin password admin"): the
# word right after the password keyword is its value, plain or not.
_LOGIN = re.compile(
    r"(?<![^\W_])(?:log-?in|логин|логін|user(?:[ _-]?name)?|юзер|e-?mail|почта|usu[aá]rio|utilisateur"
    r"|identifiant|benutzer(?:name)?)(?![^\W\d_])",
    re.IGNORECASE,
)
# Passwords people actually use that are plain words: a value even without a separator ("пароль qwerty").
_COMMON_PASSWORDS = frozenset(
    """qwerty qwertyuiop asdfgh asdfghjkl zxcvbn qazwsx password passwort admin administrator root toor
    letmein iloveyou monkey dragon master welcome football baseball princess sunshine shadow superman
    batman trustno1 passw0rd changeme guest abcdef abcabc qwe йцукен пароль""".split()
)
# A name in code, not a value: `os.getenv('DB_PASSWORD')`, `$DB_PASSWORD`, `${PASS}`, `{{ password }}`.
_CODE_VALUE = re.compile(r"\w\(|\$\{|^\$[A-Z_][A-Z0-9_]*$|\{\{|%[A-Z_]+%|process\.env|os\.environ")
_EXPLICIT_ONLY = frozenset({"pass", "pw", "пасс"})  # too common as plain words to go without a separator
_PW_STOPWORDS = frozenset(
    """a an the is was my your his her our their its this that not no yes and or but so if to too for of
    in on at by with from as be been same wrong incorrect correct right invalid valid expired required
    changed reset weak strong saved protected manager please again still also just only very more less
    new old long short simple easy hard here there set ok okay sent send forgot forgotten what which
    where when how why who did does do like change update something nothing empty broken fine good bad
    great working needed missing weird strange secure insecure different generated random unique encrypted
    hidden shown sent written stored known unknown case sensitive see check ask look read find use try
    below above attached pinned later soon usual dm pm it's return none null true false undefined
    1password bitwarden keepass lastpass
    не нет да и или но а что это тот там тут же ли бы уже еще ещё тоже для от на в к с у по мой моя мое моё
    твой твоя свой неверный неправильный правильный верный старый новый простой сложный сменил сменила
    поменял поменяла забыл забыла потерял потеряла какой какая где как когда потом сейчас теперь
    пожалуйста надо нужно есть был была было будет такой такая длинный короткий пустой надёжный надежный
    другой одинаковый смотри см спроси глянь посмотри ниже выше лс личке скину пришлю напишу скажу позже
    прежний обычный zapomniałem zapomniałam nie wiem olvidé olvide oublié oublie vergessen esqueci
    esqueceu unuttum bilmiyorum dimenticata dimenticato""".split()
)
# "my password is now Lion!88": an adverb between the separator and a made-up value is no value.
_PW_ADVERBS = frozenset(
    "now currently still simply just actually probably also again теперь сейчас просто тоже".split()
)
_WIFI_SEPS = frozenset({"/", "|", ",", "-", "–", "—", ";"})
_ARTICLES = frozenset("the a an my your our his her their this that".split())
# "password: see the doc": a plain word followed by one of these is the start of a sentence, not a value.
_PHRASE_NEXT = frozenset(
    "the a an my your our his her their it me you him them this that in on at to for from with of".split()
)
# "password for the wifi is sunshine" names a password; "the passcode screen is broken" does not: after
# words that are not a preposition, a separator word ("is") needs a made-up looking value.
_PW_PREPOSITIONS = frozenset("for to of on from at от для к на в у с".split())
_TRAILING_PUNCT = ".,;:!?)]}»…"
_VALUE_TRAILING = ".,;:)]}»…"  # a password may end in "!" or "?": take it (no tail left behind)
_QUOTES = {'"': '"', "'": "'", "«": "»", "`": "`", "“": "”"}
_PW_SYMBOLS = frozenset("!@#$%^&*_+=?/\\|~<>[]{}()")
_UNIT = re.compile(r"\d+(?:[.,]\d+)?[ \t]?[^\W\d_]{0,5}(?:/[^\W\d_]{1,2})?", re.IGNORECASE)  # 5GHz, 100Mbps


def _made_up(word: str) -> bool:
    """Looks like a password, not a word: a digit, a symbol, or mixed case after the first letter."""
    word = word.rstrip("?!") or word  # "от вайфая?": a question, not a symbol
    return (
        any(c.isdigit() for c in word)
        or any(c in _PW_SYMBOLS for c in word)
        or (any(c.isupper() for c in word[1:]) and any(c.islower() for c in word))
    )


def _strong(word: str) -> bool:
    """Letters and (digits or symbols), 5+ characters: a password even without a separator before it."""
    word = word.rstrip("?!") or word
    return (
        len(word) >= 5
        and any(c.isalpha() for c in word)
        and any(c.isdigit() or c in _PW_SYMBOLS for c in word)
        and _UNIT.fullmatch(word) is None
    )


_NAME_PARTS = re.compile(r"[-_.]+")
# Words before a Wi-Fi value's colon that name its key, not its name: "wifi code: Guest_Net".
_WIFI_SECRET_WORD = re.compile(
    r"code|key|pass|pw|psk|wpa|secret|код|ключ|парол|clave|contrase|senha|mdp|kennwort|schl[üu]ssel"
    r"|has[łl]o|[şs]ifre|parola|chiave|cl[ée]",
    re.IGNORECASE,
)


def _network_name(token: str) -> bool:
    """Shaped like a Wi-Fi network's name, not its key: words joined by "_", "-" or ".", with at most a
    band ("Guest_Net", "Home-WiFi", "TP-Link_5G"). A key mixes letters with digits or symbols inside one
    part ("Kotik2019", "Kx8#mP2q"), or has a number of its own: "Kotik_2019", and "marina_99" too, which
    a model number ("DIR-615") cannot be told from, so such a name goes as a key."""
    parts = [part for part in _NAME_PARTS.split(token) if part]
    return bool(parts) and all(
        part.isalpha() or (not part.isdigit() and _UNIT.fullmatch(part) is not None)  # 5G, 5GHz, 2.4G
        for part in parts
    )


def _value_core(tok: str) -> str:
    core = tok.rstrip(_VALUE_TRAILING) or tok
    while core.endswith(")") and core.count("(") < core.count(")"):
        core = core[:-1]
    return core or tok


# "password too short, need 8 characters": a number that counts something is no part of a value.
_COUNTED = re.compile(
    r"char\w*|symbols?|digits?|letters?|numbers?|times|caract\w*|zeichen|stellen|символ\w*|знак\w*|цифр\w*"
    r"|букв\w*|раз",
    re.IGNORECASE,
)
_VALUE_TAIL = re.compile(r" ([\d!@#$%^&*_+=?~]{1,8})(?=[\s.,;:)]|$)")


def _value_end(text: str, end: int) -> int:
    """Where a password value ends: a digit/symbol group typed after a space stays with it ("sunny 2020!")."""
    tail = _VALUE_TAIL.match(text, end)
    while tail is not None and any(c.isdigit() for c in tail.group(1)):
        end = tail.end()
        tail = _VALUE_TAIL.match(text, end)
    return end


def _password_value(text: str, kw: str, pos: int, wifi: bool = False, labeled: bool = False) -> Span | None:
    """The password given after keyword `kw` (ending at `pos`), if any; `labeled`: a login was named
    before it, so the next word is the value."""
    if text.startswith("(", pos):
        return None  # `get_password()`: code, no value
    is_pin = kw.startswith(("pin", "пин", "пін"))
    explicit, by_word, colon = False, False, False
    fillers: list[str] = []
    prev_start = prev_end = pos  # the last word seen before the value
    wifi_names: list[str] = []
    for _ in range(8):
        t = _NEXT_TOKEN.match(text, pos)
        if t is None:
            return None
        tok, start = t.group(1), t.start(1)
        pos = t.end()
        if _EMOJI.fullmatch(tok):
            if _KEY_EMOJI.match(tok):
                return None  # "wifi 🔐 X": the key emoji is a keyword of its own
            continue  # "WiFi 📶 X": decoration
        if tok in _SEP_TOKENS or tok.lower().rstrip(":") in _SEP_WORDS:
            colon = colon or tok.endswith(":") or tok == "="
            explicit, by_word = True, by_word or tok.lower().rstrip(":") in _SEP_WORDS
            continue
        if tok.lower() in _PW_DESCRIBES:
            return None  # "the password has 12345678 in it"
        if tok in ("?", "…", "...", "?)"):  # "the password? it's X"
            continue
        if tok[0] in ":=":  # "password:hunter2", "pwd=hunter2"
            rest = tok.lstrip(":=")
            explicit = colon = True
            if not rest:
                continue
            tok, start = rest, start + len(tok) - len(rest)
        elif tok[0] in _QUOTES:
            # A quoted value: `password: "two words"`. Without a separator only after a space and not
            # an apostrophe ("password's fine" is no value).
            spaced = start > t.start()
            if explicit or (spaced and not is_pin):
                line_end = text.find("\n", start)
                close = text.find(_QUOTES[tok[0]], start + 1, len(text) if line_end < 0 else line_end)
                if close > start + 1:
                    return (start, close + 1, "PASSWORD")
            return None
        elif len(tok) > 1 and tok[-1] == ":" and not explicit and len(fillers) < 3:
            fillers.append(tok[:-1].lower())  # "пароль такой:", "wifi password:"
            explicit = True
            continue
        core = _value_core(tok)
        if PLACEHOLDER.match(core):
            return None
        if is_pin:
            if core.isdigit() and 4 <= len(core) <= 8:
                return (start, start + len(core), "PASSWORD")
            pin_groups = _SPACED_PIN.match(text, start)  # "pin is 4 8 2 1", "48-21"
            if pin_groups is not None and 4 <= sum(c.isdigit() for c in pin_groups.group(0)) <= 8:
                return (start, pin_groups.end(), "PASSWORD")
        elif (
            colon
            and (by_word or kw.startswith("passphrase"))
            and core.isalpha()
            and (phrase := _PHRASE.match(text, start)) is not None
            and phrase.group(0).split()[0].lower() not in _PHRASE_STARTS
            and (" " in phrase.group(0) or core.lower() not in _PW_STOPWORDS)
        ):
            return (start, _value_end(text, phrase.end()), "PASSWORD")  # "is: correct horse battery staple"
        elif wifi:
            if explicit and not wifi_names and core.isdigit() and 8 <= len(core) <= 63:
                return (start, start + len(core), "PASSWORD")  # "WLAN-Schlüssel: 8830201944"
            if not explicit and not fillers and core.isdigit() and 8 <= len(core) <= 63:
                return (start, start + len(core), "PASSWORD")  # "wifi 87654321": WPA needs 8+ characters
            end = _value_end(text, start + len(core))
            # "wifi: Guest_Net", "WiFi - TP-Link_5G": after the network's word a name-shaped value is its
            # name, as it is without the colon ("WiFi Guest_Net works"); not after a word that names the
            # key ("wifi code: Guest_Net"), nor "sunny 2020!" (digits typed after the word with a space).
            name = (
                end == start + len(core)
                and _network_name(core.strip("()"))
                and not any(_WIFI_SECRET_WORD.search(f) for f in fillers)
            )
            if explicit and not name and _strong(text[start:end].replace(" ", "")):  # "sunny 2020!"
                return (start, end, "PASSWORD")
            after = _NEXT_TOKEN.match(text, pos)
            listed = tok.endswith((",", "/", ";", "|")) or (
                after is not None and after.group(1) in _WIFI_SEPS
            )
            if explicit and (listed or name) and len(wifi_names) < 2:  # "wifi: HomeNet / qwerty123"
                wifi_names.append(core)
                colon = by_word = False  # "wifi: Guest_Net is down": the colon named the name
                continue
        elif core.lower().rstrip("!?") not in _PW_STOPWORDS:
            named = [f for f in fillers if f not in _PW_ADVERBS]  # words naming what the password is for
            vague = by_word and (kw in _FOREIGN_KW or (named and named[0] not in _PW_PREPOSITIONS))
            if explicit and core.lower() in _PW_ADVERBS and len(fillers) < 3:
                fillers.append(core.lower())  # "my password is now Lion!88": the next word is the value
                continue
            if (
                explicit
                and len(core) >= 3
                and (not vague or _made_up(text[start : _value_end(text, start + len(core))]))
            ):
                after = _NEXT_TOKEN.match(text, pos)
                next_word = (
                    after.group(1) if after is not None and "\n" not in text[start : after.start(1)] else ""
                )
                plain = core.isalpha() and core.islower()
                if not (plain and next_word.lower().strip(_TRAILING_PUNCT) in _PHRASE_NEXT):
                    return (
                        start,
                        _value_end(text, start + len(core)),
                        "PASSWORD",
                    )  # not "password: see the doc"
            if not explicit and not fillers and len(core) >= 3 and core.lower() not in _PW_PREPOSITIONS:
                if labeled or core.lower() in _COMMON_PASSWORDS:  # "логин ivan пароль qwerty"
                    return (start, _value_end(text, start + len(core)), "PASSWORD")
            if not explicit:
                # "passcode Lion 1020!": digits typed after a word with a space belong to it, unless that
                # word names what the password is for ("пароль от почты 12345": "почты" stays), or the
                # number counts something ("need 8 characters").
                begin = start
                after = _NEXT_TOKEN.match(text, pos)
                counted = after is not None and _COUNTED.fullmatch(after.group(1).rstrip(_TRAILING_PUNCT))
                if (
                    fillers
                    and not any(c.isalpha() for c in core)
                    and text[prev_end:start] == " "
                    and not counted
                ):
                    before = fillers[-2] if len(fillers) > 1 else ""
                    if before not in _PW_PREPOSITIONS and before not in _ARTICLES:
                        begin = prev_start
                value = text[begin : start + len(core)].replace(" ", "")
                if len(value) >= 4 and _made_up(value) and (kw not in _EXPLICIT_ONLY or _strong(value)):
                    return (begin, _value_end(text, start + len(core)), "PASSWORD")
        if explicit or not core.replace("-", "").isalpha() or len(fillers) >= 3:
            return None
        prev_start, prev_end = start, start + len(tok)
        fillers.append(core.lower())  # a word between keyword and value: "for", "the", "wifi", "от"
    return None


def _password_keywords(text: str) -> Iterator[tuple[str, int, bool]]:
    """(keyword, where it ends, is it Wi-Fi's) for each password keyword, in either keyboard layout."""
    for m in _PW_KEYWORD.finditer(text):
        yield m.group("kw").lower(), m.end(), False
    for m in _WIFI_KEYWORD.finditer(text):
        # "ключ от вайфая qwerty123", "wifi key sunny2020": the key of a network is its password.
        keyed = _NETWORK_KEY.search(text, max(0, m.start() - 16), m.start()) is not None
        yield ("пароль" if keyed else m.group("kw").lower()), m.end(), not keyed
    for m in _KEY_EMOJI.finditer(text):
        yield m.group()[0], m.end(), False  # "WiFi 📶 Guest_Net 🔐 welcome2024": a key names the password
    for m in _NET_KEY.finditer(text):
        # "SSID: HomeNet, key: 87654321": a key named after a network is its password
        if _NET_NAME.search(text, max(0, m.start() - _NET_NEAR), m.start()) is not None:
            yield "key", m.end(), False
    lowered = text.lower()
    if "gfhjk" in lowered:  # "пароль" typed on an English layout: the word around it is Latin
        for m in _PW_KEYWORD_EN_TYPED.finditer(text.translate(_EN_TO_RU)):
            if text[m.start() : m.end()].isascii():
                end = m.end()
                while end < len(text) and text[end].isalpha() and text[end].isascii():
                    end += 1  # the rest of the mistyped word ("gfhjkmxbr")
                yield "пароль", end, False
    if "зфыы" in lowered or "згв" in lowered:  # "password"/"pwd" typed on a Russian layout
        for m in _PW_KEYWORD_RU_TYPED.finditer(text.translate(_RU_TO_EN)):
            if not text[m.start() : m.end()].isascii():
                yield m.group("kw").lower(), m.end(), False


_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)|\n")
_NO_VALUE_CONTEXT = re.compile(
    r"reset|link|sent|forg[oe]t|expir|chang|manager|hint|сброс|ссылк|отправ|забыл|измен|смен|менеджер|подсказ",
    re.IGNORECASE,
)
"""Words around a password keyword that say the sentence is about the password, not giving it."""
_WORD = re.compile(r"\S+")


_TOKEN_REST = re.compile(r"\S*")


def _password_nearby(text: str, kw: str, pos: int, wifi: bool) -> Span | None:
    """A made-up value (letters with digits or symbols, 5+ characters) within eight words after a password
    keyword, in the same sentence: the password even when the words between are ones the step-by-step
    reading (`_password_value`) does not know ("пароль от вай-фая у нас Kotik2019", "wifi pass is still
    Kotik2019"). Not where the sentence talks about the password (reset, link, forgot, hint, ...)."""
    if kw in _EXPLICIT_ONLY and not wifi:
        return None
    end = min(len(text), pos + 80)
    rest = _TOKEN_REST.match(text, end)  # never half a word, or half a placeholder
    end = rest.end() if rest is not None else end
    stop = _SENTENCE_END.search(text, pos, end)
    segment = text[pos : stop.start() if stop else end]
    if _NO_VALUE_CONTEXT.search(segment):
        return None
    words = list(_WORD.finditer(segment))[:9]
    for i, word in enumerate(words[:8]):
        if i + 1 < len(words) and _KEY_EMOJI.fullmatch(words[i + 1].group()):
            return None  # "WiFi Guest_Net 🔐 X": a name, then the key emoji names the password
        core = _value_core(word.group().strip(":=—-–"))
        if PLACEHOLDER.search(core) or "://" in core or "@" in core:
            return None
        if core.lower() in _PW_DESCRIBES:
            return None  # "the password has 12345678 in it"
        if core.lower() in _PW_STOPWORDS:
            continue  # "passphrase is in 1password"
        if wifi and _network_name(core):
            continue  # "WiFi Guest_Net works": after a bare "wifi", a name; its key looks machine-made
        # "пароль от вайфая у нас 12345678": digits alone, as many as a password has, not a year
        digits = (
            core.isdigit() and 6 <= len(core) <= 16 and not wifi and not kw.startswith(("pin", "пин", "пін"))
        )
        if (_strong(core) and _made_up(core)) or digits:
            start = pos + word.start() + word.group().find(core)
            return (start, _value_end(text, start + len(core)), "PASSWORD")
    return None


# "login/pass: petrov / Sekret55": both named at once, then both given split by a slash.
_LOGIN_SLASH = re.compile(r"[ \t]*/[ \t]*")
_PAIR_REST = re.compile(r"[ \t]*/[ \t]*(\S+)")


def _find_passwords(text: str) -> Iterator[Span]:
    login = _LOGIN.search(text)
    spans: list[Span] = []
    for kw, end, wifi in _password_keywords(text):
        labeled = login is not None and login.end() < end - len(kw)
        span = _password_value(text, kw, end, wifi, labeled) or _password_nearby(text, kw, end, wifi)
        if span is None or _CODE_VALUE.search(text[span[0] : span[1]]) is not None:
            continue  # `os.getenv('DB_PASSWORD')` names one
        paired = login is not None and _LOGIN_SLASH.fullmatch(text, login.end(), end - len(kw)) is not None
        rest = _PAIR_REST.match(text, span[1]) if paired else None
        if rest is not None:  # the login was the first value: the password is the second
            span = (span[0], rest.start(1) + len(_value_core(rest.group(1))), "PASSWORD")
        spans.append(span)
    yield from sorted(spans)


# Credentials in `user:password` form: named ("creds: jdoe:Summer2024", "доступ: ivan:Qwerty12"), or after
# an account name that every device has ("admin:Admin123!", "root:toor1"). A port ("admin:8080") is no
# password; the value must look made-up.
_USER_PASS = re.compile(
    r"(?<![\w/:@.-])(?:(?:creds?|credentials|login|логин|логін|учетк\w{0,2}|доступы?|zugangsdaten"
    r"|identifiants|credenciales|credenziali)[ \t]*[:=-]?[ \t]+[\w.@+-]{2,40}"
    r"|admin|administrator|root|guest|ubuntu|postgres):(?P<value>[^\s:/@<]{3,64})(?=\s|$|[,;])",
    re.IGNORECASE,
)


def _check_user_pass(m: re.Match[str]) -> Span | None:
    value = _value_core(m.group("value"))
    port = value.isdigit() and len(value) <= 5
    if port or not _made_up(value) or PLACEHOLDER.search(value):
        return None
    return (m.start("value"), m.start("value") + len(value), "PASSWORD")


_OTP = re.compile(
    r"(?<![\w>])(?:(?:verification|confirmation|security|sms|one[- ]time|2fa|otp|auth(?:entication)?|login"
    r"|access)[ \t]+code|otp|2fa|(?:смс|sms)[- ]?код|код[ \t]+(?:из|с|в)[ \t]+(?:смс|sms|сообщения)"
    r"|код[ \t]+(?:подтверждения|для[ \t]+входа|доступа)"
    r"|(?:backup|recovery|резервн\w*)[ \t]+(?:codes?|код\w{0,2})"
    r"|code[ \t]+(?:from|in)[ \t]+(?:the[ \t]+|your[ \t]+|my[ \t]+|an?[ \t]+)?(?:sms|text|message|texts)"
    r"|(?:texted|sms'?d|sent)[ \t]+(?:me[ \t]+)?(?:a[ \t]+|the[ \t]+)?code)"
    r"(?:[ \t]+[^\s\d:=]{1,20}){0,3}?"  # "Код для входа в Telegram: 12345", "code for X is 12345"
    r"[ \t]*(?:is|are|:|=|-|—)?[ \t]*\n?[ \t]*"
    # one code, or several (backup codes: "1234-5678 9876-5432", one a line)
    r"(?P<value>\d{3}[ -]\d{3}(?![\d-]|[ \t]+\d)"
    r"|\d{4,8}(?:-\d{3,8})*(?:(?:,[ \t]?|[ \t]+|[ \t]*\n[ \t]*)\d{4,8}(?:-\d{3,8})*)*)(?![\d-])",
    re.IGNORECASE,
)
# Any code word: "code 482 913", "код: 4829-13", "your code is G-482913", "Tu código de verificación es
# 482913", "what's the code?\n482913", "код пришел\n482913". After the word, the value comes at once, or
# after at most three words that end in a separator (":", ")", "?", a line break, "is", "es", "lautet",
# "такой", ...), so "the code has 1500 lines" stays. 4-8 digits in up to three groups, after an optional
# letter prefix (Google's "G-"). The other way round too: "482913 is your verification code".
_CODE_WORD = r"(?:[^\W\d_]*code|codes|otp|код\w{0,2}|коды|c[óo]digos?|codice|kod\w{0,4})"
_CODE_SEP = (
    r"(?P<sep>[ \t]*[:=)?!]+|[ \t]+(?:is|are|es|est|ist|é|è|lautet|jest|to|это|такой|вот|є|—|-|–)|[ \t]*\n)"
)
_CODE_NUMBER = r"(?:[A-Z]{1,2}-)?(?P<value>\d{2,8}(?:[ -]\d{2,6}){0,2})(?![\w-]|[.,:/]\d)"
_CODE_AFTER = re.compile(
    r"(?<![\w<>-])(?P<kw>" + _CODE_WORD + r")"
    r"(?:(?P<words>(?:[ \t]+[^\s\d<>]{1,20}){0,3}?)" + _CODE_SEP + r"|[?:=)!]*)"
    r"(?:[ \t]+|[ \t]*\n[ \t]*)?" + _CODE_NUMBER,
    re.IGNORECASE,
)
_CODE_BEFORE = re.compile(
    r"(?<![\w<>-])(?:[A-Z]{1,2}-)?(?P<value>\d{4,8}|\d{3}[ -]\d{3})[ \t]+"
    r"(?:(?:is|es|est|ist|é|это|—|-)[ \t]+)?"
    r"(?:your|ваш|твой|dein|ihr|tu|su|votre|ton|seu|o[ \t]+seu|il[ \t]+tuo)[ \t]+"
    r"(?:[^\s\d<>]{1,20}[ \t]+){0,3}?" + _CODE_WORD + r"(?!\w)",
    re.IGNORECASE,
)
# A code given by what it is for: "Use 482913 to verify", "Enter 739201 to confirm your account".
_CODE_TO_VERIFY = re.compile(
    r"(?<![\w<>-])(?:use|enter|type|input|submit)[ \t]+(?:[A-Z]{1,2}-)?"
    r"(?P<value>\d{4,8}|\d{3}[ -]\d{3})[ \t]+"
    r"(?:to|for)[ \t]+(?:verify|verification|confirm|log[ \t]?in|sign[ \t]?in|authenticate|authori[sz]e"
    r"|complete|activate|reset|continue|finish)",
    re.IGNORECASE,
)
# Code words that name no secret: "zip code 94107", "barcode", "error code 4004", "промокод".
_NOT_A_SECRET_CODE = re.compile(
    r"(?:zip|post|postal|bar|promo|uni|op|en|de|geo|area|colou?r|dress|hex|source|short|country|error|status"
    r"|qr|char|morse|http|exit|return|response|region|product|item|discount|referral|coupon|промо|штрих"
    r"|ошибк\w*|регион\w*|товар\w*|почтов\w*|индекс|артикул|купон\w*)[ \t-]*(?:code|код)",
    re.IGNORECASE,
)
_DATE_LIKE = re.compile(r"\d{4}-\d\d-\d\d|\d\d-\d\d-\d{4}")
# "code 1500 lines long", "в коде 2000 строк": a number that counts something.
_COUNT_AFTER = re.compile(
    r"[ \t]*(?:lines?|loc|rows?|chars?|characters?|words?|times|people|dollars?|euros?|rub\w*|usd|eur"
    r"|ms|kb|mb|gb|km|min\w*|sec\w*|hours?|days?|years?|строк\w*|символ\w*|слов\w*|раз\w*|человек|руб\w*|мс|кб|мб|гб|км"
    r"|мин\w*|сек\w*|час\w*|дн\w*|лет|год\w*|[%$€₽])(?![^\W\d_])",
    re.IGNORECASE,
)


def _find_codes(text: str) -> Iterator[Span]:
    found: list[Span] = []
    for m in _CODE_AFTER.finditer(text):
        value = m.group("value")
        digits = sum(c.isdigit() for c in value)
        if not 4 <= digits <= 8 or _DATE_LIKE.fullmatch(value) or _COUNT_AFTER.match(text, m.end()):
            continue
        if m.group("words") and _YEAR.fullmatch(value):
            continue  # "the code from 2019": a year
        if not m.group("words") and (m.group("sep") or "").strip().lower() == "to":
            continue  # "moved the code to 2024": "to" names a code only after words ("kod weryfikacyjny to")
        head = text[max(0, m.start() - 12) : m.end("kw")]
        if _NOT_A_SECRET_CODE.search(head) is not None:
            continue
        found.append(_group(m, "PASSWORD"))
    found += [_group(m, "PASSWORD") for m in _CODE_BEFORE.finditer(text)]
    found += [_group(m, "PASSWORD") for m in _CODE_TO_VERIFY.finditer(text)]
    yield from sorted(set(found))


# "recovery key: ABCD-EFGH-IJKL-MNOP", "backup code 7f3k-9x2m-q8w4": letters and digits in dashed groups
_RECOVERY_KEY = re.compile(
    r"(?<![\w<>])(?:recovery|backup|restore|emergency|резервн\w*|восстановлени\w*)[ \t]+"
    r"(?:keys?|codes?|phrase|ключ\w{0,2}|код\w{0,2})"
    r"[^\w\n<]{0,4}(?:(?:is|are|это)[ \t]+)?(?:\n[ \t]*)?"
    r"(?P<value>[A-Za-z0-9]{4,8}(?:-[A-Za-z0-9]{4,8}){2,11}"
    # or a list of two-group codes: "8f3k2-9dj3l 2kd93-lq0pz", one a line
    r"|[A-Za-z0-9]{4,8}-[A-Za-z0-9]{4,8}(?:(?:[ \t,]+|[ \t]*\n[ \t]*)[A-Za-z0-9]{4,8}-[A-Za-z0-9]{4,8})*)"
    r"(?![\w-])",
    re.IGNORECASE,
)


def _check_recovery_key(m: re.Match[str]) -> Span | None:
    """Codes are machine-made: digits in them ("well-known" is a word)."""
    value = m.group("value")
    one_key = value.count("-") >= 2 and not any(c.isspace() for c in value)  # "ABCD-EFGH-IJKL-MNOP"
    return _group(m, "PASSWORD") if one_key or any(c.isdigit() for c in value) else None


# Numbers spelled out, as people read a card's code aloud ("CVV: seven two one", "код: триста двенадцать").
_DIGIT_WORDS = frozenset(
    """zero one two three four five six seven eight nine ноль нуль один одна два две три четыре пять шесть
    семь восемь девять один одна чотири п'ять шість сім вісім дев'ять cero uno dos tres cuatro cinco seis
    siete ocho nueve zéro un deux trois quatre cinq six sept huit neuf null eins zwei drei vier fünf sechs
    sieben acht neun due tre quattro sei sette otto nove jeden dwa trzy cztery pięć sześć siedem osiem
    dziewięć""".split()
)
_TENS_WORDS = frozenset(
    """twenty thirty forty fifty sixty seventy eighty ninety двадцать тридцать сорок пятьдесят шестьдесят
    семьдесят восемьдесят девяносто""".split()
)
_TEEN_WORDS = frozenset(
    """ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen десять одиннадцать
    двенадцать тринадцать четырнадцать пятнадцать шестнадцать семнадцать восемнадцать девятнадцать""".split()
)
_HUNDRED_WORDS = frozenset(
    """hundred сто двести триста четыреста пятьсот шестьсот семьсот восемьсот девятьсот""".split()
)
_ANY_NUMBER_WORD = _trie_pattern(
    sorted(_DIGIT_WORDS | _TENS_WORDS | _TEEN_WORDS | _HUNDRED_WORDS, key=len, reverse=True)
)
_NUMBER_WORD = re.compile(r"(?<![^\W\d_])(?:" + _ANY_NUMBER_WORD + r")(?![^\W\d_])", re.IGNORECASE)
_NUMBER_WORDS = (
    r"(?:" + _ANY_NUMBER_WORD + r")(?:(?:[ \t]*,[ \t]*|[ \t]+|-)(?:and[ \t]+)?(?:" + _ANY_NUMBER_WORD
    + r")){1,5}(?![^\W\d_])"
)  # fmt: skip


def _number_word_kind(word: str) -> str:
    word = word.lower()
    if word in _HUNDRED_WORDS:
        return "hundred"
    return "tens" if word in _TENS_WORDS else "teen" if word in _TEEN_WORDS else "digit"


_BACK = (
    r"(?:on|from|at|на|с|со)[ \t]+(?:the[ \t]+)?(?:back|reverse|оборот\w{0,2}|обратной[ \t]+стороны?"
    r"|обратн\w+[ \t]+сторон\w{0,2}|задней[ \t]+сторон\w{0,2}|спине)"
)
_CVV = re.compile(
    r"(?<![\w>])(?:cvv2?|cvc2?|csc|свв|цвв|card[ \t]+(?:security|verification)[ \t]+(?:code|number)"
    r"|cryptogramme(?:[ \t]+visuel)?|c[óo]digo[ \t]+de[ \t]+seguran[çc]a|c[óo]digo[ \t]+de[ \t]+seguridad"
    r"|(?:karten)?prüf(?:ziffer|nummer)"
    r"|(?:(?:the[ \t]+)?(?:three|four|3|4|три|четыре|3-?х|тр[её]х)[ \t]+)?(?:digits?|numbers?|цифр\w{0,2}"
    r"|код\w{0,2}|code|число|номер)[ \t]+(?:" + _BACK + r"|сзади)"
    r"|" + _BACK + r"[ \t]+(?:of[ \t]+(?:the|my|your)[ \t]+card|карты))"
    r"[^\d\n<]{0,24}?(?<![\w-])(?P<value>\d{3,4}|\d(?:[ \t-]\d){2,3}(?![ \t-]?\d)|" + _NUMBER_WORDS + r")"
    r"(?![\d.,:/-]\d|\d)",  # never across a placeholder
    re.IGNORECASE,
)


def _check_cvv(m: re.Match[str]) -> Span | None:
    """Digits, or a number spelled out: three or four digit words ("seven two one") or a number of the
    hundreds ("семьсот двенадцать", "seven twenty one"), so "seven people" or "forty two" is no code."""
    words = _NUMBER_WORD.findall(m.group("value"))
    if words:
        if _COUNT_AFTER.match(m.string, m.end()):
            return None  # "триста двенадцать рублей": a price
        kinds = [_number_word_kind(w) for w in words]
        digits_only = all(k == "digit" for k in kinds)
        if not (
            (digits_only and 3 <= len(words) <= 4)
            or "hundred" in kinds
            or (len(words) >= 2 and kinds[0] == "digit" and kinds[1] in ("tens", "teen"))
        ):
            return None
    return _group(m, "CARD")


# A 2FA/TOTP secret typed as the authenticator app shows it, in groups of four base32 characters, after a
# word naming it: "TOTP key JBSW Y3DP EHPK 3PXP", "setup key: gezd gnbv gy3t qojq ...". Unspaced, the
# keyword rule takes it (a random-looking string); spaced, each group is too short for that.
_TOTP = re.compile(
    r"(?<![\w<>])(?:totp|2fa|mfa|otp|authenticat\w*|аутентифик\w*|setup[ \t]+key|key|keys|secret|ключ\w{0,2}"
    r"|секрет\w{0,2}|schl[üu]ssel|clave|cl[ée]|chiave|klucz|anahtar\w{0,3})(?![^\W\d_])"
    r"[^\n<]{0,40}?(?:\n[ \t]*)?(?<![\w-])"
    r"(?P<value>[A-Za-z2-7]{4}(?:[ \t-][A-Za-z2-7]{4}){3,15}(?:[ \t-][A-Za-z2-7]{1,4})?)(?![\w-])",
    re.IGNORECASE,
)


def _check_totp(m: re.Match[str]) -> Span | None:
    """Machine-made: one case throughout and base32's digits in it ("ABCD EFGH IJKL MNOP" is the alphabet)."""
    value = m.group("value")
    letters = "".join(c for c in value if c.isalpha())
    one_case = letters.isupper() or letters.islower()
    return _group(m, "API_KEY") if one_case and any(c.isdigit() for c in value) else None


# ---- door, gate and intercom codes ---------------------------------------------------------------
# "код домофона 1234", "door code is 4721#", "подъезд 3, код 56К7890", "код 4521 от подъезда": a code word
# near a place that has a keypad, then the first value with 3+ digits. A keypad/intercom names a code by
# itself ("домофон 1234#"), with 4+ digits or a # or * so an apartment number ("домофон 45") is kept.
_ACCESS_PLACE = (
    r"домофон\w*|подъезд\w*|парадн\w*|двер\w*|калитк\w*|ворот\w*|шлагбаум\w*|сейф\w*|сигнализаци\w*"
    r"|замк\w*|замок|гараж\w*|ячейк\w*|door\w*|intercom|gate|entrance|entry|building|buzzer|keypad"
    r"|lockbox|key[ \t]?box|safe|alarm|garage|locker|padlock|lock|зайти|войти|get[ \t]+in"
    r"|digicode|interphone|t[üu]rcode|torcode|portal|porte|portail|puerta|port[ãa]o|t[üu]r|haust[üu]r"
    r"|під['’ʼ]?їзд\w*|двер\w*"
    r"|klatk\w*|domofon\w*|bram\w*|furtk\w*|drzwi|portone|cancell\w*|citofon\w*|porta|kap[ıi]\w{0,3}"
    r"|deur\w*|poort\w*|immeuble|entr[ée]e|b[aâ]timent|eingang|hauseingang"
)
_ACCESS_IMPLIED = frozenset(
    {"intercom", "keypad", "buzzer", "lockbox", "keybox", "key box", "digicode", "interphone", "türcode",
     "turcode", "torcode", "deurcode", "poortcode", "citofono"}
)  # fmt: skip
_ACCESS_KEYWORD = re.compile(
    r"(?<![\w<>])(?:(?P<place>"
    + _ACCESS_PLACE
    + r")|(?P<code>codes?|код\w{0,4}|kod\w{0,3}|c[óo]digos?|codice|pin|пин|combo|combination"
    r"|комбинаци\w*|шифр\w{0,2}))(?![^\W_])",
    re.IGNORECASE,
)
_ACCESS_VALUE = re.compile(
    r"(?<![\w#*.,:/-])(?:[#*]?\d[\dA-Za-zА-Яа-яЁё#*]{1,11}|[A-Za-zА-Яа-яЁё]\d{3,8}[#*]?"
    r"|\d(?:[ -]\d){2,7}(?![ -]?\d)[#*]?)(?![\w#*]|[.,:/-]\d)"  # or a digit at a time: "6-6-1-2", "1 2 3 4"
)
_NOT_A_DOOR = re.compile(
    r"(?:zip|postal|post|promo|area|country|source|qr|bar|discount|referral|error|status|почтов\w*|промо"
    r"|индекс)[ \t-]*$",
    re.IGNORECASE,
)
_ACCESS_NEAR = 50  # how far apart a code word and its place may be
_ACCESS_WINDOW = 40  # how far after the keyword the value may start


def _access_value(text: str, pos: int, need: str) -> Span | None:
    """The first code after `pos`: `need` is "digits" (3+ digits, after a code word), "intercom" (4+
    digits, or 3+ with a letter, # or *) or "keypad" (a # or * in it: "door 4721#")."""
    for v in _ACCESS_VALUE.finditer(text, pos, min(len(text), pos + _ACCESS_WINDOW)):
        if PLACEHOLDER.search(text, pos, v.start()):
            return None
        value = v.group(0)
        digits = sum(c.isdigit() for c in value)
        if need == "digits":
            ok = digits >= 3
        elif need == "intercom":
            ok = digits >= 4 or (digits >= 3 and not value.isdigit())
        else:
            ok = digits >= 3 and ("#" in value or "*" in value)
        if ok:
            return (v.start(), v.end(), "ACCESS_CODE")
    return None


# A lock's combination in groups ("my locker combo is 22 14 36", "шифр 12-34-56"): named as a combination,
# with or without the lock, 4+ digits in 3-5 groups.
_COMBO_WORD = re.compile(r"combos?|combinations?|комбинаци\w*|шифр\w{0,2}", re.IGNORECASE)
_COMBO_VALUE = re.compile(
    r"[^\d\n<]{0,20}?(?<![\w-])(?P<value>\d{1,3}(?:[ \t-]\d{1,3}){2,4})(?![\w-]|[.,:/]\d)"
)


_COMBO_NEEDS = re.compile(r"combo|combinat|комбинац|шифр", re.IGNORECASE)


def _find_access_codes(text: str) -> Iterator[Span]:
    matches = list(_ACCESS_KEYWORD.finditer(text))  # one scan for both kinds
    if _COMBO_NEEDS.search(text) is not None:
        yield from _find_combinations(text, matches)
    yield from _find_door_codes(text, matches)


def _find_combinations(text: str, matches: list[re.Match[str]]) -> Iterator[Span]:
    for m in matches:
        code = m.group("code")
        if code and _COMBO_WORD.fullmatch(code):
            v = _COMBO_VALUE.match(text, m.end())
            if v is not None and sum(c.isdigit() for c in v.group("value")) >= 4:
                yield _group(v, "ACCESS_CODE")


def _find_door_codes(text: str, matches: list[re.Match[str]]) -> Iterator[Span]:
    places = [m for m in matches if m.group("place")]
    if not places:
        return
    found: list[Span] = []
    for m in matches:
        if m.group("code"):
            if _NOT_A_DOOR.search(text, max(0, m.start() - 20), m.start()):
                continue
            near = any(
                p.start() - _ACCESS_NEAR <= m.start() <= p.end() + _ACCESS_NEAR
                and "\n" not in text[min(p.start(), m.start()) : max(p.end(), m.end())]
                for p in places
            )
            span = _access_value(text, m.end(), "digits") if near else None
        else:
            place = m.group("place").lower().replace(" ", "")
            # A keypad or intercom names a code by itself; any other place needs the keypad's # or *.
            implied = place in _ACCESS_IMPLIED or place.startswith(("домофон", "domofon"))
            span = _access_value(text, m.end(), "intercom" if implied else "keypad")
        if span is not None:
            found.append(span)
    yield from sorted(set(found))


# ---- national identifiers: passports, SNILS, INN, SSN, NI numbers, driver's licences, and after their
# keyword Canada's SIN, Spain's DNI/NIE, Germany's Steuer-ID, Poland's PESEL, Brazil's CPF, India's Aadhaar
# A keyword names the number ("паспорт 4508 123456", "мой ИНН 500100732259", "SSN 536-90-4399"), or the
# number's own shape and checksum do: SNILS `112-233-445 95` (its documented checksum), SSN `536-90-4399`
# (python-stdnum), a Russian passport `45 08 123456`, a 12-digit personal INN with both check digits
# (python-stdnum), a UK NI number `AB 12 34 56 C` (its prefix rules). A line break may sit anywhere a
# space may (a number split over two messages).
_GAP = r"(?:[ \t-]|[ \t]?\n[ \t]?)"  # one separator, or a line break (two lines or two messages)
_SP = r"(?:[ \t]|[ \t]?\n[ \t]?)"
_ID_KEYWORD = re.compile(
    r"(?<![\w<>])(?:(?P<passport>(?:загран)?паспорт\w{0,3}|passport|серия|серии|series|загран\w{0,5}"
    r"|закордон\w{0,5}|reisepass|pasaporte|passeport|passaporto|passaporte|personalausweis|ausweis(?:nummer)?"
    r"|id[ \t-]?card|carte[ \t]+d'identit[ée]|(?:id|ід|айди)-?карт\w{0,2})"
    r"|(?P<nir>nir|nss|s[ée]cu(?:rit[ée][ \t]+sociale)?)"
    r"|(?P<snils>снилс\w{0,2}|snils)"
    r"|(?P<inn>инн|inn|ипн|іпн|рнокпп|taxpayer[ \t]+(?:id|number)|tax[ \t]+id)"
    r"|(?P<sin>sin|social[ \t]+insurance[ \t]+(?:number|no\.?|#))"  # Canada's; before the SSN's "social"
    r"|(?P<ssn>ssn|social(?:[ \t]+security)?(?:[ \t]+(?:number|no\.?|#))?)"
    r"|(?P<dni>dni|nie|nif)|(?P<idnr>steuer[ \t-]?id|steuer-?identifikationsnummer|idnr)|(?P<pesel>pesel)"
    r"|(?P<cpf>cpf)|(?P<cnpj>cnpj)|(?P<aadhaar>aadhaa?r)"
    r"|(?P<tckn>(?:t\.?[ \t]?c\.?[ \t]*)?kimlik(?:[ \t]+(?:no\.?|numaras\w*|numaram\w*|nr\.?))?"
    r"|tckn|tc[ \t]+no)"
    r"|(?P<cf>codice[ \t]+fiscale|cod\.?[ \t]*fisc(?:ale)?\.?|c\.?f\.?)"
    r"|(?P<nif_pt>(?:n[úu]mero[ \t]+(?:de[ \t]+)?)?contribuinte|nipc)"
    r"|(?P<nino>national[ \t]+insurance(?:[ \t]+(?:number|no\.?))?|ni[ \t]+(?:number|no\.?)|nino)"
    r"|(?P<license>driver'?s?[ \t]+licen[cs]e|driving[ \t]+licen[cs]e"
    r"|водительск\w*[ \t]+(?:права|удостоверени\w*)|вод\.?[ \t]?удостоверени\w*))"
    r"(?![^\W\d_])",
    re.IGNORECASE,
)
_LEAD = r"[^\d<]{0,30}?(?<![\w-])"  # words between keyword and value; never across a placeholder
_ID_VALUES: dict[str, re.Pattern[str]] = {
    "passport": re.compile(
        _LEAD + r"(?P<value>\d{2}" + _SP + r"?\d{2}[^\d<]{0,20}?\d{6}|\d{2}[ \t]?\d{7}|[A-Z]{0,3}\d{6,9}"
        r"|(?-i:(?=(?:[A-Z]*\d){3})[A-Z0-9]{8,9}(?!\w)))(?!\d)",  # "Reisepass C01X00T47", "12AB34567"
        re.IGNORECASE,
    ),
    "nir": re.compile(  # France: sex, year, month, department, commune, order, then the 2-digit key
        _LEAD + r"(?P<value>[12][ \t]?\d{2}[ \t]?\d{2}[ \t]?(?:\d{2}|2[AB])[ \t]?\d{3}[ \t]?\d{3}"
        r"(?:[ \t]?\d{2})?)(?![\d-])",
        re.IGNORECASE,
    ),
    "snils": re.compile(
        _LEAD + r"(?P<value>\d{3}" + _GAP + r"?\d{3}" + _GAP + r"?\d{3}" + _GAP + r"?\d{2})(?!\d)"
    ),
    "inn": re.compile(_LEAD + r"(?P<value>\d(?:" + _GAP + r"?\d){9}(?:(?:" + _GAP + r"?\d){2})?)(?![\d-])"),
    "ssn": re.compile(_LEAD + r"(?P<value>\d{3}" + _GAP + r"?\d{2}" + _GAP + r"?\d{4})(?!\d)"),
    "license": re.compile(
        _LEAD
        + r"(?P<value>\d{2}"
        + _SP
        + r"?\d{2}"
        + _SP
        + r"?\d{6}|[A-Z]{1,3}-?\d{4,12}|\d{6,12})(?![\w-])",
        re.IGNORECASE,
    ),
    # after "sin" or "nie" (words too) also checked by their check digits (`_id_checks`)
    "sin": re.compile(_LEAD + r"(?P<value>\d{3}[ \t-]?\d{3}[ \t-]?\d{3})(?![\d-])"),
    # Spain's DNI/NIE/NIF, or Portugal's NIF of nine digits (checked in `_find_id_numbers_by_keyword`)
    "dni": re.compile(
        _LEAD + r"(?P<value>[XYZ]?[ \t-]?\d{7,8}[ \t-]?[A-Z]|\d{3}[ \t]?\d{3}[ \t]?\d{3}(?![ \t]?\d))(?!\w)",
        re.IGNORECASE,
    ),
    "idnr": re.compile(_LEAD + r"(?P<value>\d{2}[ \t]?\d{3}[ \t]?\d{3}[ \t]?\d{3})(?!\d)"),
    "pesel": re.compile(_LEAD + r"(?P<value>\d{11})(?!\d)"),
    "cpf": re.compile(_LEAD + r"(?P<value>\d{3}\.?\d{3}\.?\d{3}-?\d{2})(?![\d-])"),
    "cnpj": re.compile(_LEAD + r"(?P<value>\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2})(?![\d-])"),  # a company's
    "aadhaar": re.compile(_LEAD + r"(?P<value>\d{4}[ \t-]?\d{4}[ \t-]?\d{4})(?![\d-])"),
    "tckn": re.compile(_LEAD + r"(?P<value>\d{3}[ \t]?\d{3}[ \t]?\d{3}[ \t]?\d{2})(?![\d-])"),
    "cf": re.compile(_LEAD + r"(?P<value>[A-Z]{6}[ \t]?[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[ \t]?[A-Z]"
                     r"[0-9LMNPQRSTUV]{3}[A-Z])(?!\w)", re.IGNORECASE),
    "nif_pt": re.compile(_LEAD + r"(?P<value>\d{3}[ \t]?\d{3}[ \t]?\d{3})(?![\d-])"),
    "nino": re.compile(
        r"[^\d<]{0,30}?(?<![\w-])(?P<value>[A-Z]{2}" + _SP + r"?\d{2}" + _SP + r"?\d{2}" + _SP + r"?\d{2}(?:"
        + _SP + r"?[A-D])?)(?![\w])",
        re.IGNORECASE,
    ),
}  # fmt: skip


@functools.cache
def _id_checks() -> dict[str, Callable[[str], bool]]:
    """Check-digit validators (python-stdnum) for numbers whose keyword alone proves little."""
    from stdnum.br import cpf
    from stdnum.ca import sin
    from stdnum.de import idnr
    from stdnum.es import dni, nie
    from stdnum.in_ import aadhaar
    from stdnum.it import codicefiscale
    from stdnum.pl import pesel
    from stdnum.pt import nif
    from stdnum.tr import tckimlik

    return {
        "tckn": tckimlik.is_valid,
        "cf": codicefiscale.is_valid,
        "nif_pt": nif.is_valid,
        "sin": sin.is_valid,
        "dni": lambda v: bool(dni.is_valid(v) or nie.is_valid(v)),
        "idnr": idnr.is_valid,
        "pesel": pesel.is_valid,
        "cpf": cpf.is_valid,
        "aadhaar": aadhaar.is_valid,
    }


_ALWAYS_CHECKED = frozenset({"tckn", "cf", "nif_pt"})


def _find_id_numbers_by_keyword(text: str) -> Iterator[Span]:
    for m in _ID_KEYWORD.finditer(text):
        kind = m.lastgroup or ""
        v = _ID_VALUES[kind].match(text, m.end())
        if v is None:
            continue
        if m.group(0).lower().startswith(("сери", "series")) and len(_digits(v.group("value"))) < 10:
            continue  # "серия" alone (an episode, a series) needs a passport's series and number
        # "sin" and "nie" are words too (sin azúcar, nie wieder): unless in capitals, the number's check
        # digits must pass
        word = m.group(0)
        check = _id_checks().get(kind) if word.lower() in ("sin", "nie") and not word.isupper() else None
        if kind in _ALWAYS_CHECKED:  # short or common words ("CF", "kimlik"): the check digits decide
            check = _id_checks()[kind]
        elif kind == "dni" and v.group("value").isdigit():
            check = _id_checks()["nif_pt"]  # nine digits after "NIF": Portugal's, mod 11
        if check is not None and not check(re.sub(r"[\s.-]", "", v.group("value")).upper()):
            continue
        yield _group(v, "ID_NUMBER")


_ID_SHAPE = re.compile(
    r"(?<![\w.,/+<-])(?:"
    r"(?P<snils>\d{3}-\d{3}-\d{3}" + _GAP + r"\d{2}|\d{3} \d{3} \d{3} \d{2})"
    r"|(?P<ssn>\d{3}-\d{2}-\d{4})"
    r"|(?P<passport>\d{2}" + _SP + r"\d{2}" + _SP + r"(?:№[ \t]?)?\d{6})"
    r"|(?P<inn>\d{12})"
    # Brazil's CPF and CNPJ as they are written, dots, slash and dash: no other number looks like them
    r"|(?P<cpf>\d{3}\.\d{3}\.\d{3}-\d{2})|(?P<cnpj>\d{2}\.\d{3}\.\d{3}/\d{4}-\d{2})"
    r")(?![\w/]|[.,:-]\d)"
)
_NINO_SHAPE = re.compile(
    r"(?<![\w.,/+<-])(?P<nino>[A-Z]{2}"
    + _SP
    + r"?\d{2}"
    + _SP
    + r"?\d{2}"
    + _SP
    + r"?\d{2}"
    + _SP
    + r"?[A-D])(?!\w)"
)
# Italy's codice fiscale has a shape of its own (surname, name, birth date and place, check letter): taken
# without a keyword when its check letter holds.
_CF_SHAPE = re.compile(
    r"(?<![\w<>])(?:[A-Z]{6}\d\d[A-EHLMPRST]\d\d[A-Z]\d{3}[A-Z]|[a-z]{6}\d\d[a-ehlmprst]\d\d[a-z]\d{3}[a-z])(?!\w)"
)


def _check_cf_shape(m: re.Match[str]) -> Span | None:
    return _whole("ID_NUMBER", _id_checks()["cf"](m.group(0).upper()), m)


_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_PHONE_PREFIX = re.compile(r"\+\d{1,4}[ \t]*\(?\d{0,4}\)?[ \t]*$")


def snils_ok(digits: str) -> bool:
    """SNILS checksum (Pension Fund of Russia): digits 1–9 weighted 9..1, sum mod 101, 100 → 00."""
    if len(digits) != 11 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(9, 0, -1), strict=True))
    return int(digits[9:]) == total % 101 % 100


def inn_ok(digits: str) -> bool:
    """Russian INN check digits (python-stdnum)."""
    from stdnum.ru import inn

    return bool(inn.is_valid(digits))


def ssn_ok(number: str) -> bool:
    """US SSN: area, group and serial in use (python-stdnum)."""
    from stdnum.us import ssn

    return bool(ssn.is_valid(number))


def nino_ok(compact: str) -> bool:
    """UK National Insurance number: two prefix letters (not D, F, I, Q, U, V; second not O; not BG, GB,
    KN, NK, NT, TN, ZZ), six digits, suffix A–D."""
    return (
        len(compact) == 9
        and compact[0] not in "DFIQUV"
        and compact[1] not in "DFIOQUV"
        and compact[:2] not in _NINO_BAD_PREFIXES
        and compact[2:8].isdigit()
        and compact[8] in "ABCD"
    )


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _check_id_shape(m: re.Match[str]) -> Span | None:
    kind, value = m.lastgroup, m.group(0)
    if kind == "snils":
        ok = snils_ok(_digits(value))
    elif kind == "ssn":
        ok = ssn_ok(value)
    elif kind == "inn":
        ok = inn_ok(value)
    elif kind == "nino":
        ok = nino_ok("".join(value.split()))
    elif kind in ("cpf", "cnpj"):
        ok = True
    else:  # a Russian passport's 2-2-6, unless it is the tail of a phone number ("+49 30 12 345678")
        ok = _PHONE_PREFIX.search(m.string, max(0, m.start() - 12), m.start()) is None
    return _whole("ID_NUMBER", ok, m)


# ---- bank accounts: Russian 20-digit accounts, BIK, account/routing numbers named as such --------
# An account number is named by a word before it ("Kto 532013000", "номер счёта 40817...", "numéro de compte
# 0123456789", "账号 6222...") or after it ("532013000 is my account number", "0532013000 (Konto)"), its
# digits grouped by spaces or dashes at will. A bank's code (BLZ, sort code, routing/ABA number, BSB, BIK,
# MFO) goes too, and so does a number typed right after one: that is the account ("routing 021000021 /
# 123456789", "sort code 12-34-56 12345678", "BLZ 37040044, 532013000"). After a word that names an account
# *number* ("Kto", "account no.", "номер счёта") 7 digits are one (Canada's, older German ones); after a
# plain account word 8; and there an amount is none ("на счёт 15 000 000 рублей", "account balance
# 12 500 000 USD", "счёт 12345678.50").
_ACCOUNT_NUMBERED = (
    r"kto\.?(?:[ \t-]*nr\.?)?|konto[ \t-]*(?:nummer|nr\.?)|kontonummer|kontonr\.?|tilinumero|rekeningnummer"
    r"|(?:bank[ \t]+)?account[ \t]+(?:number|no\.?|nr\.?|#)|acct\.?(?:[ \t]*(?:number|no\.?|#))?"
    r"|a/c(?:[ \t]+(?:number|no\.?))?|(?:номер|№)[ \t]*(?:(?:расч[её]тного|лицевого|банковского|моего|твоего)"
    r"[ \t]+)?сч[её]та|номер[ \t]+рахунку|(?:num[ée]ro|n[°º])[ \t]*(?:de[ \t]+|du[ \t]+)?compte"
    r"|(?:n[úu]mero|n[°º])[ \t]*(?:de[ \t]+)?(?:la[ \t]+)?(?:cuenta|conta)|numero[ \t]+(?:di[ \t]+)?conto"
    r"|numer[ \t]+(?:konta|rachunku)|[čc][íi]slo[ \t]+[úu][čc]tu|broj[ \t]+ra[čc]una"
    r"|hesap[ \t]+(?:no|numaras\w*)"
    r"|clabe|cbu|cvu|cci"  # Mexico's CLABE (18 digits), Argentina's CBU/CVU (22), Peru's CCI (20)
)
_BANK_KEYWORD = re.compile(
    r"(?<![\w<>])(?:(?P<bik>бик|bik)|(?P<sort>sort[ \t-]+code|sort(?=[ \t:]+\d\d-\d\d-\d\d))|(?P<bsb>bsb)"
    r"|(?P<code>routing(?:[ \t]+(?:number|no\.?|#))?|aba|rtn|blz|bankleitzahl|rib)"
    r"|(?P<numbered>" + _ACCOUNT_NUMBERED + r")"
    r"|(?P<account>р/с|р\\с|к/с|л/с|расч[её]тн\w*(?:[ \t]+сч[её]т\w*)?|сч[её]т\w{0,3}"
    r"|лицев\w*[ \t]+сч[её]т\w*|корр?\.?[ \t]*сч[её]т\w*|(?:bank[ \t]+)?account|acc\.?|kont[oa]"
    r"|rachun\w*|nrb|рахун\w*|р/р|cuenta|compte|conta|conto|c/c|cta\.?|hesap\w{0,3}|rekening\w*"
    r"|[úu][čc]et\w{0,2}|[úu][čc]tu|sz[áa]mla\w{0,6}|tili\w{0,4}|ra[čc]un\w{0,3}|λογαριασμ\w*)"
    r"|(?P<mfo>мфо))"
    r"(?![^\W\d_])"
    # scripts without spaces between words, or with the article glued on: no word boundary to look for
    r"|(?P<glued>口座(?:番号)?|[账帐帳](?:号|號|户|戶)(?:号码|號碼)?|계좌(?:[ \t]?번호)?"
    r"|(?:ال)?حساب|[הלב]?חשבון)",
    re.IGNORECASE,
)
_ACCOUNT_DIGITS = r"(?P<value>\d(?:" + _GAP + r"?\d){%d,33})(?![\d-]|[.,]\d)"
_BANK_VALUES: dict[str, re.Pattern[str]] = {
    "bik": re.compile(_LEAD + r"(?P<value>\d(?:" + _GAP + r"?\d){8})(?![\d-])"),
    "sort": re.compile(
        _LEAD + r"(?P<value>\d{2}-\d{2}-\d{2}|\d{2}[ \t]\d{2}[ \t]\d{2}|\d{6})(?![\d-]|[ \t]\d\d\b)"
    ),
    "bsb": re.compile(_LEAD + r"(?P<value>\d{3}[ \t-]?\d{3})(?![\d-])"),  # Australia's bank and branch
    "mfo": re.compile(_LEAD + r"(?P<value>\d{6})(?![\d-])"),  # Ukraine's bank code
    "code": re.compile(_LEAD + _ACCOUNT_DIGITS % 7),
    # "routing" is a network's word too ("the routing table has 12345678 entries"): little may come between
    "routing": re.compile(r"[^\w\n<]{0,4}(?:(?:is|of|for|at)[^\w\n<]{1,3})?" + _ACCOUNT_DIGITS % 7),
    "numbered": re.compile(_LEAD + _ACCOUNT_DIGITS % 6),
    "account": re.compile(_LEAD + _ACCOUNT_DIGITS % 7),
    "glued": re.compile(r"[^\d<\n]{0,12}?" + _ACCOUNT_DIGITS % 6),
}
_BANK_CODES = frozenset({"bik", "sort", "bsb", "mfo", "code"})
# The account typed right after a bank's code, split from it by punctuation or "and" at most.
_THEN_ACCOUNT = re.compile(
    r"[^\w\n<]{0,4}(?:(?:and|und|et|y|e|и|і)[^\w\n<]{1,3})?(?<![\w-])(?P<value>\d(?:[ \t-]?\d){5,16})"
    r"(?![\d-]|[.,]\d)",
    re.IGNORECASE,
)
# The number before an account word: "532013000 is my account number", "0532013000 (Konto)". A link
# ("is", a dash, a colon, a bracket) or a possessive ("my") must join them: "12345678 accounts" is a count.
_OWN = r"(?:my|our|your|mein\w*|dein\w*|unser\w*|мой|наш|твой|mon|ma|mi|meu|minha|m[oó]j|moje|mijn)[ \t]+"
_ACCOUNT_BEFORE = re.compile(
    r"(?<![\w.,/+<>-])(?P<value>\d(?:[ \t-]?\d){6,33})[ \t]*(?:(?:[-–—:=(]|is|это|ist|est|es|é|è|jest)[ \t]*"
    r"(?:(?P<own>" + _OWN + r")|(?:the|die|das|der|le|la|el|o|a)[ \t]+)?|(?P<own2>" + _OWN + r"))"
    r"(?:bank[ \t]+)?$",
    re.IGNORECASE,
)
_IBAN_HEAD = re.compile(r"[A-Za-z]{2}\d\d[ \t]?$")
_AMOUNT_AFTER = re.compile(
    r"[ \t]*(?:[$€£₽¥₴₸₹%]|(?:руб\w*|р\.?|rub|rur|usd|eur|euros?|dollars?|bucks|долл\w*|бакс\w*|евро|gbp"
    r"|pounds?|фунт\w*|грн|гривен\w*|uah|pln|z[łl](?:otych)?|czk|kč|huf|ft|chf|sek|nok|dkk|kr|inr|rupees?"
    r"|yen|jpy|yuan|cny|rmb|тенге|тг|kzt|byn|ron|lei|tl|reais|brl|pesos?|mxn|ars|clp|cop|soles|тыс\w*|млн"
    r"|млрд|mln|mio|mil|millions?|thousands?)"
    r"(?![^\W\d_]))",
    re.IGNORECASE,
)
"""A currency, a percent or a multiplier after a number: the number is an amount."""
_CURRENCY_BEFORE = frozenset("$€£₽¥₴₸₹")
_THOUSANDS = re.compile(r"\d{1,3}(?: \d{3})+")
"""A number grouped in thousands ("15 000 000"): an amount, unless a word calls it an account number."""


# An IBAN typed without its country letters after an account word ("numer konta 61 1090 1014 0000 0712
# 1981 2874": Poland's NRB is the IBAN's check digits and BBAN): the country's length and mod-97 decide.
_NATIONAL_IBAN = re.compile(_LEAD + r"(?P<value>\d\d(?:" + _GAP + r"?[0-9A-Z]){10,32})(?![\w-])")
_IBAN_BY_LENGTH: dict[int, tuple[str, ...]] = {
    n - 2: tuple(cc for cc, length in IBAN_LENGTHS.items() if length == n) for n in set(IBAN_LENGTHS.values())
}


def national_iban_ok(compact: str) -> bool:
    """Whether `compact` (check digits and BBAN) is an IBAN of some country once its letters are added."""
    return any(iban_ok(cc + compact) for cc in _IBAN_BY_LENGTH.get(len(compact), ()))


# An account number without a keyword: 20 digits, a ledger account of 30xxx/40xxx/42xxx..., then the
# currency (ISO 4217 numeric: 810/643 rouble, 840 dollar, 978 euro, 156 yuan, ...).
_ACCOUNT_20 = re.compile(r"(?<![\w.,/+<-])\d(?:" + _GAP + r"?\d){19}(?![\w/]|[.,-]\d)")
_ACCOUNT_CURRENCIES = frozenset({"810", "643", "840", "978", "156", "826", "756", "398", "933", "980", "949"})


def _amount(text: str, start: int, end: int) -> bool:
    """Whether the number at `text[start:end]` is an amount of money (or a percentage), by its neighbours."""
    before = text[max(0, start - 2) : start].strip()
    return _AMOUNT_AFTER.match(text, end) is not None or (before[-1:] in _CURRENCY_BEFORE)


def _bank_spans(text: str, m: re.Match[str]) -> Iterator[Span]:
    """The secrets named by bank keyword `m`: the value after it, the account after a bank's code, and
    (for an account word) the number before it."""
    kind = m.lastgroup or "account"
    plain = kind in ("account", "glued")
    if kind in ("account", "numbered"):
        n = _NATIONAL_IBAN.match(text, m.end())
        if n is not None and national_iban_ok(_IBAN_GAPS.sub("", n.group("value"))):
            yield _group(n, "IBAN")
            return
    routing = kind == "code" and m.group(0).lower().startswith("routing")
    v = _BANK_VALUES["routing" if routing else kind].match(text, m.end())
    if v is not None and not (
        plain and (_amount(text, v.start("value"), v.end("value")) or _THOUSANDS.fullmatch(v.group("value")))
    ):
        yield _group(v, "BANK_ACCOUNT")
        then = _THEN_ACCOUNT.match(text, v.end()) if kind in _BANK_CODES else None
        if then is not None and not _amount(text, then.start("value"), then.end("value")):
            yield _group(then, "BANK_ACCOUNT")
    if kind in ("account", "numbered"):
        b = _ACCOUNT_BEFORE.search(text, max(0, m.start() - 80), m.start())
        if b is None or len(_digits(b.group("value"))) < (8 if plain else 7):
            return
        cyrillic = not m.group(0).isascii()  # "12345678 — счёт за свет" is a bill: "мой счёт" an account
        if (b.group("own") or b.group("own2") or not cyrillic) and not _IBAN_HEAD.search(
            text, max(0, b.start() - 5), b.start()
        ):
            yield _group(b, "BANK_ACCOUNT")


def _find_bank_by_keyword(text: str) -> Iterator[Span]:
    spans = [span for m in _BANK_KEYWORD.finditer(text) for span in _bank_spans(text, m)]
    yield from sorted(set(spans))


# Brazil: the branch (agência) and the account (conta) with its check digit, as people pass them on:
# "agência 1234 conta 12345-6", "ag 1234 cc 12345-6", "Ag: 0001 / C/C: 123456-7", "conta corrente 12345-6
# agência 1234-5", "ag/cc 1234/56789-0". The check digit (or X) after a dash makes a short number an
# account; without one a number needs a word for an account's type ("conta poupança 123456") or a branch
# next to it (a bare "conta 15000" is left to the account rule above: 8+ digits). A short "ag" names a
# branch only beside an account word; "conta: 2.500" (a bill) is none.
_BR_ACCOUNT_TYPE = r"corrente|poupan[çc]a|sal[áa]rio|pagamento|digital"
_BR_BANK = re.compile(
    r"(?<![\w<>/.])(?:(?P<branch>ag[êe]ncia|ag(?:[êe]n)?\.?)"
    r"(?:[ \t]*(?:/|e)[ \t]*(?P<both>conta|c/c|c\.?c\.?))?"
    r"|(?P<account>conta(?:[ \t-]+(?:" + _BR_ACCOUNT_TYPE + r"))?|c/c|c/p|c\.c\.|cc|poupan[çc]a))"
    r"(?![^\W\d_])[ \t]*(?:n[º°o]\.?|n[úu]mero|num\.?|#)?[ \t]*(?:[:=-]|[ée]h?(?![^\W\d_]))?[ \t]*"
    r"(?P<value>\d(?:\.?\d){2,12}(?:[ \t]?[-–][ \t]?[\dxX])?)(?![\w-]|[.,]\d)"
    r"(?:[ \t]*[/|][ \t]*(?P<second>\d(?:\.?\d){3,12}(?:[ \t]?[-–][ \t]?[\dxX])?)(?![\w-]|[.,]\d))?",
    re.IGNORECASE,
)
_BR_CHECK_DIGIT = re.compile(r"[ \t]?[-–][ \t]?[\dxX]$")
_BR_NEAR = 40  # how far apart a branch and its account may be


# The words alone: an account already replaced by an earlier rule ("conta <BANK_ACCOUNT>") still says
# that the "ag 1234" beside it is a branch.
_BR_WORD = re.compile(
    r"(?<![\w<>/.])(?:(?P<branch>ag[êe]ncia|ag(?:[êe]n)?\.?)|conta|c/c|c/p|c\.c\.|cc|poupan[çc]a)(?![^\W\d_])",
    re.IGNORECASE,
)


def _find_br_bank(text: str) -> Iterator[Span]:
    words = [(w.start(), w.group("branch") is not None) for w in _BR_WORD.finditer(text)]
    for m in _BR_BANK.finditer(text):
        value = m.group("value")
        digits = len(_digits(_BR_CHECK_DIGIT.sub("", value)))
        checked = _BR_CHECK_DIGIT.search(value) is not None
        if "." in value and not checked or _amount(text, m.start("value"), m.end("value")):
            continue  # "conta: 2.500", "conta 12345 reais": an amount
        branch = m.group("branch") is not None
        near = any(b != branch and abs(start - m.start()) <= _BR_NEAR for start, b in words)
        if branch:
            full = m.group("branch").lower().rstrip(".") in ("agência", "agencia")
            ok = 3 <= digits <= 5 and (full or near or m.group("both") is not None)
        else:  # "conta é 15000" is a bill's amount as often as an account: a plain word needs more
            typed = m.group("account").lower() not in ("conta", "cc")  # "conta corrente", "c/c", "poupança"
            ok = digits >= 4 and (checked or near) or digits >= 5 and typed
        if not ok:
            continue
        yield _group(m, "BANK_ACCOUNT")
        if m.group("second") is not None:  # "ag/cc 1234/56789-0": the account after the branch
            yield _group(m, "BANK_ACCOUNT", "second")


# Brazil's PIX keys after "pix" or "chave": a random key (a UUID), a CPF or CNPJ (with or without its
# dots), a phone ("(11) 91234-5678", "11912345678"); an e-mail key goes by the e-mail rule.
_PIX_KEYWORD = re.compile(
    r"(?<![\w<>])(?:chave(?:[ \t]+(?:pix|aleat[óo]ria|do[ \t]+pix))?|pix)(?![^\W\d_])", re.IGNORECASE
)
_PIX_VALUE = re.compile(
    r"[^\d\n<]{0,30}?(?<![\w.+/-])(?:"
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})"
    r"|(?P<cnpj>\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2})"
    r"|(?P<phone>\+?55[ \t]?\(?\d{2}\)?[ \t]?\d{4,5}[ \t-]?\d{4}|\(\d{2}\)[ \t]?\d{4,5}[ \t-]?\d{4}"
    r"|\d{2}[ \t]9[ \t]?\d{4}[ \t-]?\d{4})"
    r"|(?P<number>\d{10,11})(?![\d.-])"
    r"|(?P<cpf>\d{3}\.?\d{3}\.?\d{3}-?\d{2}))(?![\w-]|[.,]\d)",
    re.IGNORECASE,
)


def _find_pix_keys(text: str) -> Iterator[Span]:
    for m in _PIX_KEYWORD.finditer(text):
        v = _PIX_VALUE.match(text, m.end())
        if v is None:
            continue
        group = v.lastgroup or ""
        kind = group
        if group == "number":  # a CPF's 11 digits by its check digits, else a phone with its area code
            digits = v.group(group)
            kind = "cpf" if len(digits) == 11 and _id_checks()["cpf"](digits) else "phone"
        label = {"uuid": "BANK_ACCOUNT", "phone": "PHONE"}.get(kind, "ID_NUMBER")
        yield (v.start(group), v.end(group), label)


# A UK sort code and account number as banks print them, without a word: "12-34-56 12345678".
_SORT_CODE_AND_ACCOUNT = re.compile(r"(?<![\w.,/+<-])\d\d-\d\d-\d\d[ \t,;/]{1,3}\d{8}(?![\w/]|[.,-]\d)")


def _check_account_20(m: re.Match[str]) -> Span | None:
    digits = _digits(m.group(0))
    return _whole("BANK_ACCOUNT", digits[0] in "34" and digits[5:8] in _ACCOUNT_CURRENCIES, m)


# ---- crypto seed phrases: 12–24 words of one BIP-39 list ---------------------------------------
# A run of 12+ words of one list ("abandon ability able ...", "ábaco abdomen abeja ...", "あいこくしん
# あいさつ ..."), separated by spaces, commas, numbering or line breaks (so a phrase split over two
# messages is one run). Accents may be left out (the Spanish and French lists are told apart without
# them). Plain English rarely strings 12 list words together; such a run is a seed phrase when its BIP-39
# checksum holds, when the text names a seed (seed/mnemonic/wallet/сид-фраза/助记词/...), or when it holds
# fewer than 5 of the list's commonest words. Prose in the other languages breaks such runs even sooner
# (their little words, "de", "la", "que", are in no list); their runs need the checksum or a seed word.
_SEED_LISTS = (
    "english",
    "spanish",
    "french",
    "italian",
    "portuguese",
    "czech",
    "japanese",
    "korean",
    "chinese_simplified",
    "chinese_traditional",
)
"""The official BIP-39 lists `mnemonic` ships (its Russian and Turkish lists are no standard's)."""
# letter classes, not IGNORECASE: faster; one pattern a script, so a search can skip to a letter of it
_SEED_SHAPE_LATIN = re.compile(_seed_shape(_SEED_LATIN, 3, python=True))
_SEED_SHAPE_CJK = re.compile(_seed_shape(_SEED_CJK, 1, python=True) + "|" + _SEED_GLUED_SHAPE)
_SEED_SHAPE = re.compile(_SEED_SHAPE_LATIN.pattern + "|" + _SEED_SHAPE_CJK.pattern)


def _seed_shaped(text: str) -> bool:
    """12 words in a row, in a script of the BIP-39 lists (or Chinese after its seed word)."""
    if _SEED_SHAPE_LATIN.search(text) is not None:
        return True
    return not text.isascii() and _SEED_SHAPE_CJK.search(text) is not None


_SEED_WORD = re.compile(f"[{_SEED_LATIN}]+|[{_SEED_KANA}]+|[{_SEED_HANGUL}]+|[{_SEED_HAN}]")
_SEED_GAP = re.compile(_SEED_SEP)
_SEED_GLUED = re.compile(
    f"(?:{_SEED_GLUED_KEYWORD})[^{_SEED_HAN}\\n]{{0,6}}(?P<value>[{_SEED_HAN}]{{12,26}})(?![{_SEED_HAN}])"
)
_SEED_KEYWORD = re.compile(
    r"seed|mnemonic|recovery|backup|secret[ \t]+(?:words|phrase)|wallet|metamask|ledger|trezor|сид|мнемон"
    r"|фраз|кош[её]л|слов"
    # the wallets' own words in other languages: "frase semilla", "phrase de récupération", "frase de
    # recuperação", "Wiederherstellungsphrase", "herstelzin", "fraza odzyskiwania", "kurtarma ifadesi",
    # "frase di recupero", "obnovovací fráze", "ニーモニック", "복구 구문", "助记词"
    r"|semilla|semente|recupera|récupéra|recupero|frase[ \t]+secreta|phrase[ \t]+secrète|mn[ée]moni"
    r"|wiederherstell|herstelzin|odzyskiw|kurtarma|gizli[ \t]+(?:kelime|ifade)|відновл|гаманц|сід"
    r"|billetera|cartera|carteira|portafogli|portefeuille|obnov|fr[áa]ze|pen[ěe][žz]enk"
    r"|ニーモニック|シード|復元|ウォレット|リカバリー|니모닉|시드|복구|지갑|助记词|助記詞|种子|種子|钱包|錢包|恢复|恢復",
    re.IGNORECASE,
)
_SEED_LENGTHS = frozenset({12, 15, 18, 21, 24})
# List words that name the phrase before it ("seed phrase: ...", "frase semilla: ..."): not part of it.
_SEED_LEAD_WORDS = frozenset(
    "seed phrase secret word key frase semilla palabras clave secreta mots parole chiave segreta palavras "
    "semente chave slova fraze".split()
)
_SEED_MIN_WORDS = 12


def _seed_key(word: str) -> str:
    """`word` as the lists are looked up: lower case and composed; Latin letters without their accents
    (people type "abaco" for "ábaco", and each list stays unambiguous without them)."""
    word = word.lower()
    if word.isascii():
        return word
    if word[0] < "\u1100":
        return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", word)


@functools.cache
def _bip39_index(language: str) -> dict[str, int]:
    """A BIP-39 list as shipped by the `mnemonic` package: each word (`_seed_key`) and its index."""
    path = importlib.resources.files("mnemonic") / "wordlist" / f"{language}.txt"
    return {_seed_key(word): i for i, word in enumerate(path.read_text("utf-8").split())}


@functools.cache
def _bip39_masks() -> dict[str, int]:
    """Every word of every list, with a bit for each list it is in (bit i: `_SEED_LISTS[i]`)."""
    masks: dict[str, int] = {}
    for bit, language in enumerate(_SEED_LISTS):
        for key in _bip39_index(language):
            masks[key] = masks.get(key, 0) | 1 << bit
    return masks


def bip39_checksum_ok(words: list[str], language: str = "english") -> bool:
    """The checksum the last word of a 12/15/18/21/24-word BIP-39 phrase carries."""
    index = _bip39_index(language)
    keys = [_seed_key(w) for w in words]
    if len(keys) not in _SEED_LENGTHS or any(k not in index for k in keys):
        return False
    bits = "".join(format(index[k], "011b") for k in keys)
    n_check = len(bits) // 33
    entropy = int(bits[:-n_check], 2).to_bytes(len(bits) // 33 * 4, "big")
    digest = format(int.from_bytes(hashlib.sha256(entropy).digest(), "big"), "0256b")
    return bits[-n_check:] == digest[:n_check]


# The list's words that are also everyday English (the intersection with the commonest English words).
_SEED_EVERYDAY = frozenset(
    """you that have this they say will one all there what about when make can like time just know
    people into year good other then now only come over also use two work first way want because any
    give day""".split()
)


def _seed_like(text: str, words: list[str], language: str) -> bool:
    if _SEED_KEYWORD.search(text):
        return True
    if len(set(words)) < _SEED_MIN_WORDS // 2:
        return False  # a phrase repeated over and over ("hello call hello call ..."), not random words
    if language == "english" and sum(w in _SEED_EVERYDAY for w in words) < 5:
        return True
    return any(
        bip39_checksum_ok(words[i : i + n], language)
        for n in (24, 21, 18, 15, 12)
        for i in range(len(words) - n + 1)
    )


def _seed_case_ok(word: str) -> bool:
    """Typed as a word is: "abandon", "Abandon", "ABANDON" (not "aBandon", a name in code)."""
    return word == word.lower() or word == word.upper() or word[1:] == word[1:].lower()


def _seed_lead(words: list[re.Match[str]], keys: list[str], i: int) -> bool:
    """Whether word `i`, first in a run, names the phrase rather than starts it: "seed", "frase",
    "recupero" ("frase di recupero: ..."), or the last character of a word glued to the one before it
    ("助记词：的 一 是 ...": "词" is in the Chinese list)."""
    key = keys[i]
    glued = i > 0 and words[i - 1].end() == words[i].start()
    return key in _SEED_LEAD_WORDS or _SEED_KEYWORD.search(key) is not None or glued


def _find_seed_phrases(text: str) -> Iterator[Span]:
    masks = _bip39_masks()
    words = list(_SEED_WORD.finditer(text))
    keys = [_seed_key(w.group(0)) if _seed_case_ok(w.group(0)) else "" for w in words]
    bits = [masks.get(key, 0) for key in keys]
    spans: list[Span] = []
    for bit, language in enumerate(_SEED_LISTS):
        flag = 1 << bit
        if sum(1 for b in bits if b & flag) < _SEED_MIN_WORDS:
            continue
        run: list[int] = []  # indices into `words`
        for i in [*range(len(words)), None]:
            if i is not None and bits[i] & flag:
                gap = (words[i - 1].end(), words[i].start()) if i else (0, 0)
                if run and run[-1] == i - 1 and _SEED_GAP.fullmatch(text, *gap):
                    run.append(i)
                    continue
            if len(run) >= _SEED_MIN_WORDS and _seed_like(text, [keys[j] for j in run], language):
                first = 0  # "seed phrase: abandon ..." keeps "seed phrase:" when the rest is a whole phrase
                while (
                    len(run) - first > _SEED_MIN_WORDS
                    and len(run) - first not in _SEED_LENGTHS
                    and _seed_lead(words, keys, run[first])
                ):
                    first += 1
                spans.append((words[run[first]].start(), words[run[-1]].end(), "SEED_PHRASE"))
            run = [i] if i is not None and bits[i] & flag else []
    spans += _glued_seed_phrases(text)
    yield from sorted(spans)


def _glued_seed_phrases(text: str) -> Iterator[Span]:
    """Chinese words typed without spaces after the word that names them: "助记词：的一是在不了有和人这中大"
    (the phrase may start after a word or two: "助记词是…"). The checksum decides."""
    for m in _SEED_GLUED.finditer(text):
        value = m.group("value")
        for skip in range(3):
            chars = list(value[skip:])
            if len(chars) in _SEED_LENGTHS and any(
                bip39_checksum_ok(chars, language) for language in _SEED_LISTS[-2:]
            ):
                yield (m.start("value") + skip, m.end("value"), "SEED_PHRASE")
                break


# ---- keyword + machine-made value: "api key: 9f8e7d...", "токен abc...", "secret=..." ------------
_KEY_KEYWORD = re.compile(
    r"(?<![^\W_])(?<![<>])(?<!<API_)(?<!<PRIVATE_)(?<!<SECRET_)"
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
                end = c.end() + len(rest.group(0).rstrip(_VALUE_TRAILING)) if rest else c.end()
            last_end = end
            yield (c.start(), end, kind)


# ---- bare machine-made strings, no keyword: 32+ chars, upper, lower and digits, high entropy -----
_BARE = re.compile(r"(?<![A-Za-z0-9_+/=.~<-])[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_+/=-])")


_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{25,35}")


def wallet_address(token: str) -> bool:
    """A public crypto address (kept: it is shared to receive money and lets no one spend it): Bitcoin
    base58check/bech32 (python-stdnum), Tron's base58check `T...`, Ethereum's `0x` + 40 hex digits."""
    if _ETH_ADDRESS.fullmatch(token):
        return True
    from stdnum import bitcoin

    if bitcoin.is_valid(token):
        return True
    if token.startswith("T") and _BASE58.fullmatch(token):
        raw = bitcoin.b58decode(token)
        return (
            len(raw) == 25
            and raw[0] == 0x41
            and hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]
        )
    return False


def _check_bare(m: re.Match[str]) -> Span | None:
    t = m.group(0)
    ok = (
        any(c.isupper() for c in t)
        and any(c.islower() for c in t)
        and any(c.isdigit() for c in t)
        and shannon_entropy(t) >= 4.0
        and not wallet_address(t)
    )
    return _whole("TOKEN", ok, m)


# ---- contact data --------------------------------------------------------------------------------
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_EMAIL = re.compile(
    r"(?<![\w.%+-])(?<!//)[\w.%+-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")*\.[^\W\d_]{2,24}(?![\w-])"
)
# Typed with spaces around the @ ("ivan.petrov @ mail.ru"): both spaces, so "ping @ivan.petrov" (a mention)
# is no address.
_EMAIL_SPACED = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}[ \t]@[ \t]" + _LABEL + r"(?:\." + _LABEL + r")*\.[^\W\d_]{2,24}(?![\w-])"
)
# Spelled out to dodge scrapers: "ivan [at] gmail [dot] com", "ivan(at)mail(dot)ru", "ivan {собака} mail.ru",
# and without brackets: "ivan собака mail точка ru", "ivan at gmail dot com".
_B = r"[ \t]*[\[({<][ \t]*"
_E = r"[ \t]*[\])}>][ \t]*"
_AT = r"(?:" + _B + r"(?:at|собака|собачка)" + _E + r"|(?P<bare_at>[ \t]+(?:at|собака|собачка)[ \t]+))"
_DOT = r"(?:" + _B + r"(?:dot|точка)" + _E + r"|(?P<bare_dot>[ \t]+(?:dot|точка)[ \t]+)|\.)"
_DOT_USER = r"(?:" + _B + r"(?:dot|точка)" + _E + r"|[ \t]+(?:dot|точка)[ \t]+)"
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.%+-])(?P<user>(?:[\w%+-]{1,30}" + _DOT_USER + r")*[\w.%+-]{1,64})" + _AT
    + r"(?P<domain>" + _LABEL + r"(?:" + _DOT + _LABEL + r")+)(?![\w-])",
    re.IGNORECASE,
)  # fmt: skip
_EMAIL_PROVIDERS = re.compile(
    r"(?:gmail|googlemail|yandex|ya|mail|inbox|list|bk|rambler|yahoo|outlook|hotmail|live|icloud|me|proton"
    r"|protonmail|pm|gmx|aol|zoho|tutanota|fastmail)\b",
    re.IGNORECASE,
)
_SPELLED_TLDS = frozenset("ру рф ком нет орг ru com net org".split())
_PRONOUNS = frozenset("i me you him her it us we they them meet see call".split())
_ASCII_LABELS = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def _find_spelled_emails(text: str) -> Iterator[Span]:
    for m in _EMAIL_SPELLED.finditer(text):
        span = _check_spelled_email(m)
        if span is not None:
            yield span


def _check_spelled_email(m: re.Match[str]) -> Span | None:
    if m.group("bare_at") is None:
        return (m.start(), m.end(), "EMAIL")  # brackets around "at": spelled out on purpose
    # " at " and " собака " are ordinary words: the address must look like one (ASCII name and domain,
    # an alphabetic top-level label) and a spelled-out "dot" or a known mail provider must say so.
    labels = re.split(
        r"[ \t]*[\[({<]?[ \t]*(?:dot|точка)[ \t]*[\])}>]?[ \t]*|\.", m.group("domain"), flags=re.I
    )
    if m.group("user").lower() in _PRONOUNS:
        return None  # "see you at home dot com"
    user = re.sub(r"[ \t]*[\[({<]?[ \t]*(?:dot|точка)[ \t]*[\])}>]?[ \t]*", ".", m.group("user"), flags=re.I)
    if not (user.isascii() and all(_ASCII_LABELS.fullmatch(x) for x in labels if x)):
        return _check_cyrillic_spelled_email(m)
    if not labels[-1].isalpha() or not 2 <= len(labels[-1]) <= 12:
        return None
    spelled_dot = "dot" in m.group("domain").lower() or "точка" in m.group("domain").lower()
    if not spelled_dot and _EMAIL_PROVIDERS.match(labels[0]) is None:
        return None
    return (m.start(), m.end(), "EMAIL")


def _check_cyrillic_spelled_email(m: re.Match[str]) -> Span | None:
    """ "ivan собака яндекс точка ру": a Latin name, then a domain spelled in Cyrillic ending in a known
    top-level label ("моя собака большая точка зрения" has no Latin name and no such ending)."""
    if m.group("bare_at") is None or not m.group("user").isascii():
        return None
    labels = re.split(r"[ \t]+(?:dot|точка)[ \t]+|\.", m.group("domain"), flags=re.I)
    if len(labels) < 2 or labels[-1].lower() not in _SPELLED_TLDS:
        return None
    return (m.start(), m.end(), "EMAIL")


# International: "+" and 10–15 digits in groups ("+7 (912) 345-67-89", "+44 20 7946 0958", "+14155552671").
# Russian trunk prefix 8: "8 912 345 67 89", "8(495)123-45-67", "89123456789"; North American:
# "(555) 123-4567", "555-123-4567", "1-800-555-1234"; Russian local "123-45-67", "(495) 123-45-67";
# European trunk 0: "020 7946 0958", "030 12345678".
_S = r"(?:[ \t]?\n[ \t]?|[ \t.-])?"  # a line break may split a number (two lines, two messages)
_N = r"(?:[ \t]?\n[ \t]?|[ -])"
_PHONE = re.compile(
    r"(?<![\w+])\+\d(?:(?:[ \t]?\n[ \t]?|[ \t.-])?+\(?+\d++\)?+)++(?![\w/-]|[.,]\d)"  # possessive: linear
    r"|(?<![\w+/.,:-])(?:"
    r"8" + _S + r"\(?\d{3}\)?" + _S + r"\d{3}" + _S + r"\d{2}" + _S + r"\d{2}"
    r"|[78]9\d{9}"
    r"|1[ .-][2-9]\d\d[ .-]\d{3}[ .-]\d{4}"  # North American: area codes start with 2-9
    r"|\([2-9]\d\d\)[ \t]?\d{3}[ \t.-]\d{4}"
    r"|[2-9]\d\d([.-]|[ \t]?\n[ \t]?)\d{3}\1\d{4}"
    r"|(?:\(\d{3,5}\)[ \t]?)?\d{3}-\d{2}-\d{2}"
    r"|\(?9\d\d\)?"
    + _N
    + r"\d{3}"
    + _N
    + r"?\d{2}"
    + _N
    + r"?\d{2}"  # Russian mobile without the 8/+7: 912 345 67 89
    r"|[2-9]\d\d [2-9]\d\d \d{4}"  # with spaces only when the exchange starts with 2-9, too: 415 555 2671
    r"|0\d{2,4}" + _N + r"?\d{3,4}" + _N + r"?\d{3,4}"
    r"|0\d{2}" + _N + r"\d{3}" + _N + r"\d{2}" + _N + r"\d{2}"  # 067 123 45 67
    r"|0[1-9](?: \d{2}){4}|0[1-9](?:\.\d{2}){4}"  # 06 12 34 56 78 (one separator throughout)
    r"|0\d{3}" + _N + r"\d{3}" + _N + r"\d{2}" + _N + r"\d{2}"  # Turkey: 0532 123 45 67
    # Spain without +34: 612 34 56 78 (no thousands are grouped in twos), one separator throughout: a
    # number before a date ("room 600 01.01.99") is none
    r"|[6-9]\d\d(?: \d\d){3}|[6-9]\d\d(?:\.\d\d){3}"
    r"|01[5-7]\d" + _N + r"?\d{7,8}"  # 0151 23456789
    # Brazil without +55: the area code in brackets, or a mobile's 9 after it: (11) 91234-5678, (21)
    # 3456-7890, 11 91234-5678 (a bare 91234-5678 is a US ZIP+4 too)
    r"|\(\d{2}\)[ \t]?(?:9[ \t]?)?\d{4}[ \t.-]?\d{4}|\d{2}[ \t]9[ \t]?\d{4}-\d{4}"
    r")(?![\w/-]|[.,:]\d)"
)


# Grouped like a number of thousands ("601 234 567", "347 123 4567") a phone needs a word that names it,
# right before it: "mój numer 601 234 567", "llámame al 678 901 234", "numero: 347 123 4567".
_PHONE_NAMED = re.compile(
    r"(?<![^\W_])(?:phone|tel|telefon\w*|tel[ée]fono|telefone|telefono|телефон\w*|тел|моб\w*|mobile?"
    r"|m[óo]vil|cell\w*|celular|handy|whatsapp|viber|number|numer|numero|n[úu]mero|nummer|num[ée]ro|номер"
    r"|ll[aá]m\w*|chiam\w*|ligue?\w*|zadzwo\w*|dzwo\w*|call|anrufen|ruf|звони\w*|набери|дзвони\w*"
    r"|appelle\w*|numaram\w*)(?![^\W\d_])"
    r"[^\w\n<]{0,4}(?:(?:me|is|es|est|ist|è|é|jest|to|это|al|on|at|an|unter|sous|au|на|по|pod|no|nr)"
    r"[^\w\n<]{1,4}){0,2}"
    r"(?<![\w+])(?P<value>\d{2,4}(?:[ .-]\d{2,4}){2,4})(?![\w-]|[.,:/]\d)",
    re.IGNORECASE,
)


def _check_named_phone(m: re.Match[str]) -> Span | None:
    return _group(m, "PHONE") if 9 <= len(_digits(m.group("value"))) <= 12 else None


def _check_phone(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    if "\n" in text:
        # A complete number on one line does not take the next line's digits with it.
        head = text[: text.index("\n")].rstrip()
        if sum(c.isdigit() for c in head) >= (11 if head[0] in "+78" else 10):
            text = head
    digits = sum(c.isdigit() for c in text)
    span = (m.start(), m.start() + len(text), "PHONE")
    if text.startswith("+"):
        return span if 10 <= digits <= 15 else None
    if text.startswith("0"):
        return span if 10 <= digits <= (12 if text.startswith("01") else 11) else None
    if _YEAR_RANGE.search(text):
        return None  # "temporada (12) 2024-2025": a number and a span of years, not Brazil's (12) 2024-2025
    return span


_YEAR_RANGE = re.compile(r"\)[ \t]?(?:19|20)\d\d[ \t.-](?:19|20)\d\d$")


# ---- money ---------------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w.,+/-])(?:\d(?:[ \t-]|[ \t]?\n[ \t]?)?){12,18}\d(?![\w/]|[.,-]\d)")
_YEAR = re.compile(r"(?:19|20)\d\d")
_GROUP_SPLIT = re.compile(r"[ \t\n-]+")
_LINE_BREAK = re.compile(r"[ \t]?\n[ \t]?")


def _card_grouping(text: str) -> bool:
    groups = _GROUP_SPLIT.split(text)
    if len(groups) == 1:
        return True
    # Cards are written 4-4-4-4(-1..4), 4-6-5 (Amex) or 4-6-4 (Diners); other groupings are lists of
    # numbers, and a list of years ("2019 2020 2021 2022") is never a card.
    sizes = [len(g) for g in groups]
    card_like = sizes[:-1] == [4] * (len(sizes) - 1) or sizes in ([4, 6, 5], [4, 6, 4])
    return card_like and not all(_YEAR.fullmatch(g) for g in groups)


# Lengths other than 16–19 belong to a few networks: 13 to Visa, 14 to Diners Club, 15 to Amex and old JCB.
_CARD_SHORT = {
    13: ("4",),
    14: ("300", "301", "302", "303", "304", "305", "36", "38", "39"),
    15: ("34", "37", "1800", "2131"),
}
# "номер карты 2200 7001 2345 6789", "тинькофф 5536 9137 1234 5678": 16 digits written in fours, or called
# a card, are a card even when the check digit is off (a typo in it, or a number made up for a test).
_CARD_WORD = re.compile(
    r"(?<![^\W\d_])(?<!<)(?:card|карт[аыуеойи]?|карточк\w{0,3}|visa|master[ \t]?card|maestro|amex"
    r"|tarjeta|karte)"  # not the "<CARD>" of a card already replaced
    r"(?![^\W\d_])[^\d\n<]{0,24}$",
    re.IGNORECASE,
)
_NOT_A_CARD = re.compile(
    r"(?:track\w*|трек\w*|order|заказ\w*|invoice|счёт|счет|№|#|no\.)[ \t:]*$", re.IGNORECASE
)


def _card_network(digits: str) -> bool:
    """Whether 16 digits with a wrong check digit start as a payment network's cards do: Visa 4;
    Mastercard 51-55, 2221-2720; Mir 2200-2204; Maestro 50, 56-58, 6; JCB 35."""
    head = int(digits[:4])
    return digits[0] in "456" or digits[:2] == "35" or 2200 <= head <= 2204 or 2221 <= head <= 2720


def _card_span(string: str, start: int, end: int) -> Span | None:
    """`string[start:end]` as a card number, if it is one."""
    text = string[start:end]
    digits = _digits(text)
    if not (13 <= len(digits) <= 19) or digits[0] not in "23456":
        return None
    groups = _GROUP_SPLIT.split(text)
    named = _CARD_WORD.search(string, max(0, start - 40), start) is not None
    if not named and len(groups) >= 3 and sum(bool(_YEAR.fullmatch(g)) for g in groups[1:]) >= 2:
        return None  # a number and a list of years ("room 2151 1900 1900 1900"), whatever its check digit
    if not luhn_ok(digits):
        # 16 digits written in fours ("5536 9137 1234 5678"), or called a card: a card with a typo in it
        in_fours = len(groups) == 4 and all(len(g) == 4 for g in groups) and _card_network(digits)
        # ...unless it is named as something else: "order 4000 1234 5678 9011"
        other = _NOT_A_CARD.search(string, max(0, start - 16), start) is not None
        if len(digits) != 16 or other or not (named or in_fours):
            return None
    if len(digits) in _CARD_SHORT and not digits.startswith(_CARD_SHORT[len(digits)]):
        return None
    if text.isdigit() and _NOT_A_CARD.search(string, max(0, start - 16), start):
        return None  # "трек 36363179089602", "order #4000123456789010": a number named as something else
    # A line break (two lines, or two messages) may fall between groups or inside one: "4111 11\n11 ...".
    ok = _card_grouping(text) or ("\n" in text and _card_grouping(_LINE_BREAK.sub("", text)))
    return (start, end, "CARD") if ok else None


_LAST_GROUP = re.compile(r"(?:[ \t-]|[ \t]?\n[ \t]?)\d{1,4}$")


def _find_cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        start, end = m.span()
        span = _card_span(text, start, end)
        # The expiry or code typed on after the number ("4111 1111 1111 1111 08 26", "... 1111 123") runs
        # into it: then the number is the leading groups (what follows goes as the card's tail).
        for _ in range(2):
            if span is not None:
                break
            cut = _LAST_GROUP.search(text, start, end)
            if cut is None or len(_digits(text[start : cut.start()])) < 13:
                break
            end = cut.start()
            span = _card_span(text, start, end)
        if span is not None:
            yield span


# In capitals or all in lower case ("iban: de89 3704 ..."), in groups of four split by spaces, dashes or a
# line break.
# What follows a card number is its expiry and security code: "<CARD> 12/26 737", "<CARD>, exp 09/25,
# код 123", "<CARD>\n12/26\n123". Runs once the number is a placeholder (the next pass of `_scrub`).
_CARD_TAIL_LEAD = r"[ \t,;|]*(?:\n[ \t]*)?"
_CARD_TAIL = re.compile(
    r"<CARD>(?:"
    + _CARD_TAIL_LEAD
    + r"(?P<exp_kw>(?:exp\w*|valid\w*(?:[ \t]+(?:thru|through|until|till))?|срок\w*|до|действ\w*"
    r"|g[üu]ltig\w*|bis|cad\w*|venc\w*|val\.?)[ \t.:]*)?"
    r"(?P<exp>(?:0[1-9]|1[0-2])(?:[ \t]?[/.\\-][ \t]?(?:20)?\d\d|\d\d|[ \t](?:20)?\d\d))(?![\d/.]|-\d))?"
    r"(?:" + _CARD_TAIL_LEAD + r"(?:(?:cvv2?|cvc2?|csc|cvn|cid|код|code|pin|пин)[ \t.:=-]*)?"
    r"(?P<cvv>\d{3,4})(?![\w.,:/-]\d|\d|[^\W\d_]))?",
    re.IGNORECASE,
)


def _find_card_tails(text: str) -> Iterator[Span]:
    for m in _CARD_TAIL.finditer(text):
        # Typed right after the number, an expiry or a code needs no word: "<CARD> 0826 123", "<CARD> 08 26",
        # "<CARD>\n123". Only an amount stays ("<CARD>, 1500 руб", "<CARD> 1200 EUR").
        exp, cvv = m.group("exp"), m.group("cvv")
        if exp is not None and m.group("exp_kw") is None and _AMOUNT_AFTER.match(text, m.end("exp")):
            exp = None
        if exp:
            yield _group(m, "CARD", "exp")
        if cvv is None:
            continue
        named = text[m.end("exp") if m.group("exp") else m.start() + 6 : m.start("cvv")].strip(" \t,;|\n")
        if named or not _AMOUNT_AFTER.match(text, m.end("cvv")):
            yield _group(m, "CARD", "cvv")


# Four groups of four split by dots: "4111.1111.1111.1111" (a card; a version number has no Luhn digit).
_CARD_DOTTED = re.compile(r"(?<![\w.,+/-])[2-6]\d{3}\.\d{4}\.\d{4}\.\d{4}(?![\w/]|[.,-]\d)")


def _check_card_dotted(m: re.Match[str]) -> Span | None:
    return _whole("CARD", luhn_ok(_digits(m.group(0))), m)


# A crypto private key: 64 hex digits, bare or after "0x" (Ethereum's). A SHA-256 digest or a transaction
# hash has the same shape: kept when named as one.
_HEX_KEY = re.compile(r"(?<![\w/.#-])(?:0x)?[0-9a-fA-F]{64}(?![\w/.-])")
_HASH_WORD = re.compile(
    r"(?:sha\w*|hash\w*|checksum|digest|commit|tx\w*|transaction|block|хэш\w*|хеш\w*|транзакц\w*|блок\w*"
    r"|контрольн\w*)[^\w\n]{0,6}(?:(?:is|was|это|est|ist|es)[^\w\n]{1,6})?$",
    re.IGNORECASE,
)


def _check_hex_key(m: re.Match[str]) -> Span | None:
    hexes = m.group(0).removeprefix("0x").lower()
    ok = (
        any(c.isdigit() for c in hexes)
        and any(c.isalpha() for c in hexes)
        and shannon_entropy(hexes) >= 3.0
        and _HASH_WORD.search(m.string, max(0, m.start() - 30), m.start()) is None
    )
    return _whole("PRIVATE_KEY", ok, m)


_IBAN_SEP = r"(?:[ \t]?\n[ \t]?|[ \t-])"
_IBAN = re.compile(
    r"(?<![A-Za-z0-9-])(?:[A-Z]{2}[ \t]?\d{2}(?:" + _IBAN_SEP + r"?[A-Z0-9]{4}){2,7}"
    r"(?:" + _IBAN_SEP + r"?[A-Z0-9]{1,4})?(?![a-z0-9])"
    r"|[a-z]{2}\d{2}(?:"
    + _IBAN_SEP
    + r"?[a-z0-9]{4}){2,7}(?:"
    + _IBAN_SEP
    + r"?[a-z0-9]{1,4})?(?![A-Za-z0-9]))"
)
_IBAN_GAPS = re.compile(r"[\s-]")
# Poland's account number (NRB) as banks print it, "61 1090 1014 0000 0712 1981 2874": the IBAN without
# "PL", so its mod-97 check digits hold once the letters are put back.
_NRB = re.compile(r"(?<![\w.,/+<-])\d\d(?:[ \t-]\d{4}){6}(?![\w/]|[.,-]\d)")


def _check_nrb(m: re.Match[str]) -> Span | None:
    return _whole("IBAN", iban_ok("PL" + _digits(m.group(0))), m)


def _check_iban(m: re.Match[str]) -> Span | None:
    text = m.group(0)
    compact = _IBAN_GAPS.sub("", text).upper()
    want = IBAN_LENGTHS.get(compact[:2])
    if want and len(compact) > want:
        # The pattern ran on into what follows ("... 0130 00 OK"): keep only the country's length.
        seen = 0
        for i, ch in enumerate(text):
            seen += not (ch.isspace() or ch == "-")
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
    "bearer": ("bearer ", "bearer: "),
    "openai": ("sk-",),
    "stripe": ("_live_", "_test_"),
    "sendgrid": ("sg.",),
    "google_api": ("aiza",),
    "google_client_secret": ("gocspx-",),
    "aws_key_id": ("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "aipa", "anpa", "anva", "apka"),
}
_DIGIT_RUN = re.compile(r"\d[\d \t\n().+/-]{5,}\d")

# The spelled-out "at" in brackets, or a bare " at "/" собака " followed by a name and a (spelled) dot.
_EMAIL_SPELLED_GATE = re.compile(
    r"[\[({<][ \t]*(?:at|собака|собачка)[ \t]*[\])}>]"
    r"|[ \t](?:at|собака|собачка)[ \t]+[\w-]+(?:\.|[ \t]+(?:dot|точка)[ \t])",
    re.IGNORECASE,
)

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
    # a 12-word phrase of Chinese characters takes 12 characters and a word to name it
    Rule("seed_phrase", "SEED_PHRASE", _SEED_SHAPE, finder=_find_seed_phrases, min_length=15),
    Rule("email", "EMAIL", _EMAIL, needs=("@",)),
    Rule("email_spaced", "EMAIL", _EMAIL_SPACED, needs=(" @ ", "\t@")),
    Rule(
        "email_spelled_out",
        "EMAIL",
        _EMAIL_SPELLED_GATE,
        finder=_find_spelled_emails,
        needs=("at)", "at]", "at}", "at>", "at )", "at ]", " at ", "собак"),
    ),
    Rule(
        "id_number",
        "ID_NUMBER",
        _ID_KEYWORD,
        finder=_find_id_numbers_by_keyword,
        needs=(
            "паспорт",
            "passport",
            "загран",
            "закордон",
            "pasaport",
            "passeport",
            "passaport",
            "reisepass",
            "ausweis",
            "id card",
            "id-card",
            "idcard",
            "identit",
            "id-карт",
            "idкарт",
            "ід-карт",
            "ідкарт",
            "айди",
            "nir",
            "nss",
            "sécu",
            "secu",
            "ипн",
            "іпн",
            "рнокпп",
            "серия",
            "серии",
            "series",
            "снилс",
            "snils",
            " инн",
            "инн ",
            "инн:",
            " inn",
            "inn ",
            "inn:",
            "tax id",
            "taxpayer",
            "ssn",
            "social",
            "insurance",
            "ni number",
            "ni no",
            "nino",
            "licen",
            "водительск",
            "удостовер",
            " sin",
            "sin ",
            "sin:",
            "dni",
            " nie",
            "nie ",
            "nie:",
            "nif",
            "steuer",
            "idnr",
            "pesel",
            "cpf",
            "cnpj",
            "aadhar",
            "aadhaar",
            "kimlik",
            "tckn",
            "tc no",
            "fisc",
            "cf",
            "c.f",
            "contribuinte",
            "nipc",
        ),
    ),
    Rule(
        "bank_account",
        "BANK_ACCOUNT",
        _BANK_KEYWORD,
        finder=_find_bank_by_keyword,
        needs=(
            "бик",
            "bik",
            "sort code",
            "/с",
            "\\с",
            "расч",
            "счет",
            "счёт",
            "acc",
            "routing",
            "a/c",
            "aba",
            "rtn",
            "blz",
            "bankleitzahl",
            "konto",
            "рахун",
            "р/р",
            "cuenta",
            "compte",
            "conta",
            "conto",
            "konta",
            "rachun",
            "nrb",
            "hesap",
            "rekening",
            "účet",
            "ucet",
            "számla",
            "szamla",
            "мфо",
            "sort",
            "bsb",
            "rib",
            "kto",
            "účt",
            "uct",
            "tili",
            "clabe",
            "cbu",
            "cvu",
            "cci",
            "c/c",
            "cta",
            "račun",
            "racun",
            "λογαριασ",
            "口座",
            "账",
            "帐",
            "帳",
            "계좌",
            "حساب",
            "חשבון",
        ),
    ),
    Rule(
        "bank_account_br",
        "BANK_ACCOUNT",
        _BR_BANK,
        finder=_find_br_bank,
        needs=("ag", "conta", "c/c", "c/p", "cc", "c.c.", "poupan"),
    ),
    Rule("pix_key", "BANK_ACCOUNT", _PIX_KEYWORD, finder=_find_pix_keys, needs=("pix", "chave")),
    Rule(
        "access_code",
        "ACCESS_CODE",
        _ACCESS_KEYWORD,
        finder=_find_access_codes,
        needs=(
            "домоф",
            "подъезд",
            "парадн",
            "двер",
            "калитк",
            "ворот",
            "шлагбаум",
            "сейф",
            "сигнализ",
            "замк",
            "замок",
            "гараж",
            "ячейк",
            "door",
            "intercom",
            "gate",
            "entr",
            "building",
            "buzzer",
            "keypad",
            "box",
            "safe",
            "alarm",
            "garage",
            "lock",
            "get in",
            "зайти",
            "войти",
            "combo",
            "combinat",
            "комбинац",
            "шифр",
            "digicode",
            "interphone",
            "türcode",
            "turcode",
            "torcode",
            "portal",
            "porte",
            "puerta",
            "portão",
            "portao",
            "tür",
            "під",
            "klatk",
            "domofon",
            "bram",
            "furtk",
            "drzwi",
            "portone",
            "cancell",
            "citofon",
            "porta",
            "kapı",
            "kapi",
            "deur",
            "poort",
            "immeuble",
            "bâtiment",
            "batiment",
            "eingang",
        ),
    ),
    Rule(
        "totp_secret",
        "API_KEY",
        _TOTP,
        _check_totp,
        needs=(
            "totp",
            "2fa",
            "mfa",
            "otp",
            "authenticat",
            "аутентифик",
            "key",
            "secret",
            "ключ",
            "секрет",
            "schlüssel",
            "schlussel",
            "clave",
            "clé",
            "cle",
            "chiave",
            "klucz",
            "anahtar",
        ),
    ),
    Rule(
        "password",
        "PASSWORD",
        _PW_ANY,
        finder=_find_passwords,
        needs=(
            "pass",
            "pwd",
            "pw",
            "psw",
            "pasw",
            "contrase",
            "парол",
            "порол",
            "пасс",
            "pin",
            "пин",
            "пін",
            "clave",
            "mdp",
            "senha",
            "kennwort",
            "hasło",
            "haslo",
            "wachtwoord",
            "wifi",
            "wi-fi",
            "network key",
            "security key",
            "wpa",
            "ключ сети",
            "ключ безопасности",
            "wlan",
            "вай",
            "gfhjk",
            "зфыы",
            "згв",
            "şifre",
            "sifre",
            "parola",
            "ssid",
            "network",
            "netzwerk",
            "réseau",
            "reseau",
            "rete",
            "sieć",
            "siec",
            "сеть",
            "сети",
            "мереж",
            "\U0001f510",
            "\U0001f511",
            "\U0001f5dd",
        ),
    ),
    Rule(
        "user_pass",
        "PASSWORD",
        _USER_PASS,
        _check_user_pass,
        needs=(
            "cred",
            "login",
            "логин",
            "логін",
            "учетк",
            "доступ",
            "zugangsdaten",
            "identifiants",
            "admin:",
            "administrator:",
            "root:",
            "guest:",
            "ubuntu:",
            "postgres:",
        ),
    ),
    Rule(
        "recovery_key",
        "PASSWORD",
        _RECOVERY_KEY,
        _check_recovery_key,
        needs=("recovery", "backup", "restore", "emergency", "резерв", "восстанов"),
    ),
    Rule(
        "one_time_code",
        "PASSWORD",
        _OTP,
        lambda m: _group(m, "PASSWORD"),
        needs=("code", "код", "otp", "2fa"),
    ),
    Rule(
        "code",
        "PASSWORD",
        re.compile(_CODE_WORD + r"|to[ \t]+verif|to[ \t]+confirm", re.IGNORECASE),
        finder=_find_codes,
        needs=("code", "код", "códig", "codig", "codice", "kod", "otp", "verif", "confirm"),
    ),
    Rule(
        "card_security_code",
        "CARD",
        _CVV,
        _check_cvv,
        needs=(
            "cvv",
            "cvc",
            "csc",
            "свв",
            "цвв",
            "the back",
            "on back",
            "reverse",
            "оборот",
            "обратн",
            "задн",
            "спине",
            "security",
            "verification",
            "сзади",
            "cryptogramme",
            "seguran",
            "segurid",
            "prüf",
        ),
    ),
    Rule(
        "keyword_secret",
        "API_KEY",
        _KEY_KEYWORD,
        finder=_find_keyword_secrets,
        needs=("key", "token", "secret", "aws", "credential", "ключ", "токен", "секрет"),
    ),
    Rule("id_number_shape", "ID_NUMBER", _ID_SHAPE, _check_id_shape, needs_digits=True),
    Rule("nino_shape", "ID_NUMBER", _NINO_SHAPE, _check_id_shape),
    Rule("codice_fiscale_shape", "ID_NUMBER", _CF_SHAPE, _check_cf_shape, min_length=16),
    Rule("bank_account_20", "BANK_ACCOUNT", _ACCOUNT_20, _check_account_20, needs_digits=True),
    Rule("sort_code_and_account", "BANK_ACCOUNT", _SORT_CODE_AND_ACCOUNT, needs_digits=True),
    Rule("iban", "IBAN", _IBAN, _check_iban),
    Rule("nrb", "IBAN", _NRB, _check_nrb, needs_digits=True),
    Rule("card", "CARD", _CARD, finder=_find_cards, needs_digits=True),
    Rule("card_dotted", "CARD", _CARD_DOTTED, _check_card_dotted),
    Rule("card_tail", "CARD", _CARD_TAIL, finder=_find_card_tails, needs=("<card>",)),
    Rule("phone", "PHONE", _PHONE, _check_phone, needs_digits=True),
    Rule(
        "phone_named",
        "PHONE",
        _PHONE_NAMED,
        _check_named_phone,
        needs_digits=True,
        needs=(
            "phone",
            "tel",
            "моб",
            "mobil",
            "móvil",
            "movil",
            "cell",
            "celular",
            "handy",
            "whatsapp",
            "viber",
            "num",
            "núm",
            "nummer",
            "номер",
            "llam",
            "llám",
            "chiam",
            "ligu",
            "zadzwo",
            "dzwo",
            "call",
            "anrufen",
            "ruf",
            "звони",
            "набери",
            "дзвони",
            "appelle",
        ),
    ),
    Rule("hex_private_key", "PRIVATE_KEY", _HEX_KEY, _check_hex_key, min_length=64),
    Rule("high_entropy", "TOKEN", _BARE, _check_bare),
)

_Mark = tuple[int, int, int, int, str]
"""A placeholder in the text being scrubbed: (start, end) there, (start, end) in the original, kind."""


def _to_original(x: int, marks: list[_Mark], at_end: bool) -> int:
    """Position `x` of the partly scrubbed text, as an offset into the original text."""
    shift = 0
    for start, end, o_start, o_end, _ in marks:
        if end <= x:
            shift = o_end - end
        elif start < x:
            return o_end if at_end else o_start  # inside a placeholder: the new span swallows it whole
        else:
            break
    return x + shift


def _track(marks: list[_Mark], replaced: list[Span]) -> list[_Mark]:
    """`marks` after `replaced` (spans of the text the marks describe) became placeholders."""
    out: list[_Mark] = []
    shift, i = 0, 0
    for start, end, kind in replaced:
        while i < len(marks) and marks[i][1] <= start:
            m = marks[i]
            out.append((m[0] + shift, m[1] + shift, m[2], m[3], m[4]))
            i += 1
        o_start, o_end = _to_original(start, marks, False), _to_original(end, marks, True)
        while i < len(marks) and marks[i][0] < end:
            i += 1  # swallowed by the new span
        width = len(kind) + 2
        out.append((start + shift, start + shift + width, o_start, o_end, kind))
        shift += width - (end - start)
    out += [(m[0] + shift, m[1] + shift, m[2], m[3], m[4]) for m in marks[i:]]
    return out


def _apply(
    text: str, counts: Counter[str], marks: list[_Mark] | None = None
) -> tuple[str, list[_Mark] | None]:
    # Guards look at the text as it came in: replacing secrets only ever removes keywords and digits.
    lowered = text.lower()
    digits = _DIGIT_RUN.search(text) is not None
    for rule in RULES:
        if rule.needs_pattern is not None and rule.needs_pattern.search(lowered) is None:
            continue
        if (rule.needs_digits and not digits) or len(text) < rule.min_length:
            continue
        if rule.pattern.search(text) is None:
            continue
        replaced: list[Span] = []
        # Spans that overlap become one (two readings of a value may end apart: "Guest_Net123" and
        # "Guest_Net123!"), so no tail of a secret is left behind.
        for start, end, kind in sorted(rule.spans(text), key=lambda s: (s[0], -s[1])):
            if start >= end:
                continue
            if replaced and start < replaced[-1][1]:
                if end > replaced[-1][1]:
                    replaced[-1] = (replaced[-1][0], end, replaced[-1][2])
                continue
            replaced.append((start, end, kind))
        parts: list[str] = []
        pos = 0
        for start, end, kind in replaced:
            parts += (text[pos:start], f"<{kind}>")
            counts[kind] += 1
            pos = end
        if parts:
            parts.append(text[pos:])
            text = "".join(parts)
            if marks is not None:
                marks = _track(marks, replaced)
    return text, marks


def _scrub(text: str, track: bool, checked: bool = False) -> tuple[str, Counter[str], list[Span]]:
    """The scrubbed text, counts by kind and spans (when `track`); `checked`: `maybe_secret` (or its RE2
    twin) already said yes."""
    counts: Counter[str] = Counter()
    marks: list[_Mark] | None = [] if track else None
    if not text or not (checked or maybe_secret(text)):
        return text, counts, []
    for _ in range(8):  # re-scrub until stable: a replacement can expose a neighbouring secret
        scrubbed, marks = _apply(text, counts, marks)
        if scrubbed == text:
            break
        text = scrubbed
    return text, counts, [(m[2], m[3], m[4]) for m in marks or ()]


def scrub_secrets_with_counts(text: str) -> tuple[str, Counter[str]]:
    """`text` with every secret replaced by its placeholder, and how many of each kind were replaced."""
    scrubbed, counts, _ = _scrub(text, track=False)
    return scrubbed, counts


def scrub_secrets_with_spans(text: str) -> tuple[str, list[Span]]:
    """`text` with every secret replaced, and where each placeholder's value was: (start, end, kind)
    offsets into `text`, in order (a report can name positions without repeating any value)."""
    scrubbed, _, spans = _scrub(text, track=True)
    return scrubbed, spans


def scrub_secrets(text: str) -> str:
    """`text` with every secret (emails, phones, cards, IBANs, bank accounts, national ID numbers,
    passwords, door codes, seed phrases, keys, tokens, private keys, URLs with credentials) replaced by a
    typed placeholder such as `<EMAIL>`; everything else kept."""
    return _scrub(text, track=False)[0]


def _maybe_secret_batch(texts: list[str]) -> list[bool]:
    """`maybe_secret` over a batch, through RE2 when pyarrow is installed (an order of magnitude faster)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:  # pragma: no cover - pyarrow comes with pandas here
        return [maybe_secret(t) for t in texts]
    array = pa.array(texts, type=pa.large_string())
    sure = pc.match_substring_regex(array, _MAYBE_RE2).to_numpy(zero_copy_only=False)
    # Runs of 12 words are most long messages in a language with spaces: the word lists decide those.
    shaped = pc.match_substring_regex(array, _SEED_SHAPE_SRC).to_numpy(zero_copy_only=False)
    return [bool(s) or (bool(w) and maybe_secret(t)) for s, w, t in zip(sure, shaped, texts, strict=True)]


def scrub_many(texts: Iterable[str]) -> tuple[list[str], Counter[str]]:
    """Scrub a batch of texts; returns the scrubbed texts (same order) and the total counts by kind.

    Same result as `[scrub_secrets(t) for t in texts]`, faster on big batches.
    """
    out, total, _ = scrub_many_with_spans(texts, track=False)
    return out, total


def scrub_many_with_spans(
    texts: Iterable[str], track: bool = True
) -> tuple[list[str], Counter[str], list[list[Span]]]:
    """`scrub_many`, plus each text's replaced spans as `scrub_secrets_with_spans` gives them (empty lists
    when `track` is false)."""
    texts = list(texts)
    total: Counter[str] = Counter()
    out = list(texts)
    spans: list[list[Span]] = [[] for _ in texts] if track else []
    for i, maybe in enumerate(_maybe_secret_batch(texts)):
        if maybe:
            out[i], counts, found = _scrub(texts[i], track, checked=True)
            total.update(counts)
            if track:
                spans[i] = found
    return out, total, spans
