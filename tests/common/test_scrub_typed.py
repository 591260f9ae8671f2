"""Secrets typed the way people type them: typos, other languages, labels on their own line, codes in
groups, card details after the number; and the ordinary chat each new rule must leave alone."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_scrub_probe import ORDINARY as PROBED_ORDINARY
from test_scrub_probe import PROBED

from common.scrub import maybe_secret, scrub_secrets, scrub_secrets_with_counts

HEX_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"

# (text, kind, the secret itself: must be gone after scrubbing)
TYPED: list[tuple[str, str, str]] = [
    # one-time codes: any code word, digits in groups, a letter prefix, the value first
    ("code 482 913", "PASSWORD", "482 913"),
    ("код: 4829-13", "PASSWORD", "4829-13"),
    ("your code is G-482913", "PASSWORD", "482913"),
    ("G-482913 is your Google verification code", "PASSWORD", "482913"),
    ("482913 — ваш код для входа", "PASSWORD", "482913"),
    ("Your WhatsApp code: 482-913", "PASSWORD", "482-913"),
    ("Ваш код: 482 913", "PASSWORD", "482 913"),
    ("Telegram code 48291", "PASSWORD", "48291"),
    ("what's the code?\n482913", "PASSWORD", "482913"),
    ("код пришел\n482913", "PASSWORD", "482913"),
    ("скинь код из смс) 482913", "PASSWORD", "482913"),
    ("код такой 4829", "PASSWORD", "4829"),
    ("Dein Bestätigungscode lautet 482913", "PASSWORD", "482913"),
    ("Tu código de verificación es 482913", "PASSWORD", "482913"),
    ("Votre code de vérification est 482913", "PASSWORD", "482913"),
    ("Seu código de verificação é 482913", "PASSWORD", "482913"),
    ("Код підтвердження: 482913", "PASSWORD", "482913"),
    ("backup codes:\n1234 5678\n9876 5432", "PASSWORD", "9876 5432"),
    # passwords: typos, other languages, a login before, quotes, the keyword alone on its line
    ("psw: Hunter2", "PASSWORD", "Hunter2"),
    ("passwrd: Hunter2", "PASSWORD", "Hunter2"),
    ("pasword: Hunter2", "PASSWORD", "Hunter2"),
    ("paswd hunter22", "PASSWORD", "hunter22"),
    ("пороль: qwerty123", "PASSWORD", "qwerty123"),
    ("парол: Hunter2", "PASSWORD", "Hunter2"),
    ("пароль qwerty", "PASSWORD", "qwerty"),  # a password people use, without a separator
    ("логин ivan92 пароль qwerty", "PASSWORD", "qwerty"),
    ("username admin password admin", "PASSWORD", "password admin"),
    ("пароль 'my secret phrase'", "PASSWORD", "my secret"),
    ("Kennwort: Sonne2020", "PASSWORD", "Sonne2020"),
    ("mi clave es gatito123", "PASSWORD", "gatito123"),
    ("mdp: chaton123", "PASSWORD", "chaton123"),
    ("a senha é gatinho123", "PASSWORD", "gatinho123"),
    ("hasło: kotek123", "PASSWORD", "kotek123"),
    ("wachtwoord: poes123", "PASSWORD", "poes123"),
    ("ПІН 4821", "PASSWORD", "4821"),
    ("wifi 87654321", "PASSWORD", "87654321"),
    ("вайфай 87654321", "PASSWORD", "87654321"),
    ("пароль от вайфая у нас 12345678", "PASSWORD", "12345678"),
    # cards: dots, the expiry and the code after the number, card codes in other languages
    ("4111.1111.1111.1111", "CARD", "4111.1111"),
    ("visa 4111 1111 1111 1111, 09/25, код 123", "CARD", "123"),
    ("card 4111111111111111 12/26 737", "CARD", "737"),
    ("4111 1111 1111 1111\n12/26\n123", "CARD", "12/26"),
    ("carte bleue 4970 1012 3456 7898 cryptogramme 123", "CARD", "123"),
    ("cartão 5555 5555 5555 4444 código de segurança 321", "CARD", "321"),
    # IBANs in lower case or with dashes; bank codes
    ("iban: de89 3704 0044 0532 0130 00", "IBAN", "3704 0044"),
    ("Konto DE89-3704-0044-0532-0130-00", "IBAN", "3704-0044"),
    ("a/c 12345678 sort 12-34-56", "BANK_ACCOUNT", "12345678"),
    ("ABA 021000021 acct# 000123456789", "BANK_ACCOUNT", "021000021"),
    ("Kontonummer 0532013000 BLZ 37040044", "BANK_ACCOUNT", "37040044"),
    ("МФО 305299 рахунок 26001234567890", "BANK_ACCOUNT", "26001234567890"),
    # IDs: passports of letters and digits, Ukraine's tax number, France's social security number
    ("загран 75 1234567", "ID_NUMBER", "1234567"),
    ("Reisepass C01X00T47", "ID_NUMBER", "C01X00T47"),
    ("Personalausweis L01X00T47", "ID_NUMBER", "L01X00T47"),
    ("numéro de passeport 12AB34567", "ID_NUMBER", "12AB34567"),
    ("РНОКПП 3012345678", "ID_NUMBER", "3012345678"),
    ("numéro de sécu 1 85 05 78 006 084 36", "ID_NUMBER", "006 084"),
    # door codes in other languages
    ("Türcode 1234", "ACCESS_CODE", "1234"),
    ("código del portal 1234", "ACCESS_CODE", "1234"),
    ("digicode 1234A", "ACCESS_CODE", "1234A"),
    ("code porte 1234", "ACCESS_CODE", "1234"),
    ("код від під'їзду 1234", "ACCESS_CODE", "1234"),
    # crypto: a private key of 64 hex digits, seed words split by "|" or "/"
    (f"0x{HEX_KEY}", "PRIVATE_KEY", HEX_KEY[:20]),
    (f"приватник от кошелька {HEX_KEY}", "PRIVATE_KEY", HEX_KEY[:20]),
    (
        "seed velvet | brush | volcano | ignore | cupboard | siren | grief | assault | love | bomb"
        " | sniff | genius",
        "SEED_PHRASE",
        "cupboard",
    ),
    (
        "seed velvet/brush/volcano/ignore/cupboard/siren/grief/assault/love/bomb/sniff/genius",
        "SEED_PHRASE",
        "siren",
    ),
    # tokens
    ("Bearer: 8f3kD92jdLs0aP1xQz7wE4rT", "TOKEN", "8f3kD92jdLs0aP1xQz7wE4rT"),
    ("https://example.com/?session=abcdef123456789abcd", "SECRET_URL", "abcdef123456789abcd"),
    # phones written the local way
    ("067 123 45 67", "PHONE", "123 45 67"),
    ("06 12 34 56 78", "PHONE", "34 56 78"),
    ("0151 23456789", "PHONE", "23456789"),
]

# Ordinary chat that looks like what the rules above take: counts after a code word, hashes of 64 hex
# digits, dotted versions, foreign words for "password" in sentences, a login named without a password.
ORDINARY: list[str] = [
    "code 1500 lines long, refactor it",
    "в коде 2000 строк",
    "the code has 1500 lines",
    "error code 80070005",
    "HTTP error code 404",
    "zip code: 94107",
    "code from 2019 is bad",
    "code 2024-05-01",
    "код товара 123456",
    "promo code SAVE2024",
    "your order 123456 is confirmed",
    "the sha256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "tx 0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060",
    "https://etherscan.io/tx/0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060",
    "1234.5678.9012.3456",
    "version 2020.1234.5678.9012",
    "пароль должен быть не менее 8 символов",
    "password must be at least 12 characters long",
    "la clave del éxito es trabajar",
    "das Passwort ist falsch",
    "логин и пароль те же",
    "username and password are in the doc",
    "login ok, password expired",
    "wifi 2.4 GHz and 5 GHz",
    "на карту 1500 скинь",
    "passport valid until 2030",
    "je compte sur toi",
    "Konto gesperrt seit 2023",
    "Der Code ist fertig",
    "el código está listo",
]


TYPED += PROBED  # a second, independent probe's secrets (tests/common/test_scrub_probe.py)
ORDINARY += PROBED_ORDINARY


@pytest.mark.parametrize(
    ("text", "kind", "secret"), TYPED, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(TYPED)]
)
def test_typed_secrets_are_replaced(text: str, kind: str, secret: str) -> None:
    scrubbed, counts = scrub_secrets_with_counts(text)
    assert secret not in scrubbed, scrubbed
    assert counts[kind] >= 1, scrubbed
    assert maybe_secret(text)
    assert scrub_secrets(scrubbed) == scrubbed


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_chat_survives(text: str) -> None:
    assert scrub_secrets(text) == text


def test_card_details_keep_the_message() -> None:
    assert scrub_secrets("visa 4111 1111 1111 1111, 09/25, код 123") == "visa <CARD>, <CARD>, код <CARD>"
    assert scrub_secrets("карта 4111 1111 1111 1111, остаток 1500") == "карта <CARD>, остаток 1500"


def test_code_values_keep_the_message() -> None:
    assert scrub_secrets("your code is G-482913") == "your code is G-<PASSWORD>"
    assert scrub_secrets("логин ivan92 пароль qwerty") == "логин ivan92 пароль <PASSWORD>"


_CODE_WORDS = st.sampled_from(["code", "код", "código", "Code:", "код:", "the code is", "your code is"])
_COUNTED = st.sampled_from(["lines", "строк", "people", "руб", "%", "years"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CODE_WORDS, st.integers(1000, 99_999_999), _COUNTED)
def test_a_number_after_a_code_word_that_counts_something_is_kept(word: str, n: int, unit: str) -> None:
    text = f"{word} {n} {unit}"
    assert scrub_secrets(text) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CODE_WORDS, st.integers(1000, 99_999_999), st.sampled_from(["", ".", "\n", ", ok"]))
def test_a_code_after_a_code_word_is_replaced(word: str, n: int, tail: str) -> None:
    if 1900 <= n <= 2099 and " " in word:
        return  # a year after words ("the code is 2019") may be a year
    assert str(n) not in scrub_secrets(f"{word} {n}{tail}")
