"""Gaps the earlier probes left: bank account numbers without an IBAN (in many languages, the word before or
after, with a bank's code), a card's expiry and code typed after the number with no word, seed phrases with
repeated words named in other languages, and Wi-Fi names that are no password. Each rule next to the
ordinary chat it must leave alone."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrub_checks import assert_found

from common.scrub import PLACEHOLDER, scrub_many, scrub_secrets

LEGAL = "legal winner thank year wave sausage worth useful legal winner thank yellow"  # BIP-39 test vector
VELVET = "velvet brush volcano ignore cupboard siren grief assault love bomb sniff genius"

# (text, kind, what must be gone)
FOUND: list[tuple[str, str, str]] = [
    # German BBAN: Bankleitzahl + Kontonummer, no IBAN
    ("BLZ 37040044 Kto 532013000", "BANK_ACCOUNT", "532013000"),
    ("Kto.-Nr. 532013000, BLZ 370 400 44", "BANK_ACCOUNT", "532013000"),
    ("Kto 1234567 BLZ 37040044", "BANK_ACCOUNT", "1234567"),  # 7 digits after a word for the number
    ("BLZ 37040044, 532013000", "BANK_ACCOUNT", "532013000"),  # the account right after the bank's code
    ("meine Kontonummer lautet 0532 0130 00", "BANK_ACCOUNT", "0130"),
    # the word after the number
    ("532013000 is my account number", "BANK_ACCOUNT", "532013000"),
    ("0532013000 (Konto), Sparkasse", "BANK_ACCOUNT", "0532013000"),
    ("1234-5678-90 — my account", "BANK_ACCOUNT", "5678"),
    ("12345678901 — мой счёт в Тинькофф", "BANK_ACCOUNT", "12345678901"),
    # other languages
    ("acct no. 1234 5678 90", "BANK_ACCOUNT", "5678"),
    ("numéro de compte : 0001 2345 678", "BANK_ACCOUNT", "2345"),
    ("mi número de cuenta es 0049-1500-0512-3456", "BANK_ACCOUNT", "1500"),
    ("номер счёта 4230 1810 5", "BANK_ACCOUNT", "1810"),
    ("rekeningnummer 1234567", "BANK_ACCOUNT", "1234567"),
    ("numero di conto 000012345678", "BANK_ACCOUNT", "12345678"),
    ("číslo účtu 2400123456", "BANK_ACCOUNT", "2400123456"),
    ("tilinumero 123456-785", "BANK_ACCOUNT", "123456-785"),
    ("c/c 123456789012", "BANK_ACCOUNT", "123456789012"),
    ("我的账号 6222 0212 3456 7890", "BANK_ACCOUNT", "3456"),
    ("口座番号 1234567", "BANK_ACCOUNT", "1234567"),
    ("계좌번호 110-123-456789", "BANK_ACCOUNT", "456789"),
    # UK sort code + account, US routing + account, Australia's BSB
    ("sort code 12-34-56 12345678", "BANK_ACCOUNT", "12345678"),
    ("sort code: 12 34 56, acc 12345678", "BANK_ACCOUNT", "12 34 56"),
    ("pay 12-34-56 87654321 by friday", "BANK_ACCOUNT", "87654321"),
    ("routing 021000021 account 123456789", "BANK_ACCOUNT", "123456789"),
    ("routing: 021000021 / 123456789", "BANK_ACCOUNT", "123456789"),
    ("BSB 062-000, 12345678", "BANK_ACCOUNT", "12345678"),
    # a card's expiry and code typed after the number, no word
    ("4111 1111 1111 1111 0826", "CARD", "0826"),
    ("4111 1111 1111 1111 08/26 123", "CARD", "123"),
    ("4111 1111 1111 1111 08 26", "CARD", "1111 08"),  # the card itself leaked: "08 26" ran into it
    ("4111 1111 1111 1111 08 26 123", "CARD", "123"),
    ("4111 1111 1111 1111 123", "CARD", "1111 1111"),  # and with the code alone
    ("4111111111111111 0826 737", "CARD", "737"),
    ("5536 9137 1234 5678, 0827, 4321", "CARD", "4321"),
    ("visa 4111-1111-1111-1111\n0826\n123", "CARD", "0826"),
    # seed phrases with repeated words, named in other languages, numbered with bullets, pasted as a list
    ("seed: " + " ".join(["abandon"] * 12), "SEED_PHRASE", "abandon"),
    ("my recovery phrase is " + " ".join(["zoo"] * 24), "SEED_PHRASE", "zoo"),
    (f"mnemonic: {LEGAL}", "SEED_PHRASE", "sausage"),
    ("frase semilla: " + " ".join(["abandon"] * 11 + ["about"]), "SEED_PHRASE", "abandon"),
    ("phrase de récupération : " + " ".join(["zoo"] * 12), "SEED_PHRASE", "zoo"),
    ("Wiederherstellungsphrase: " + ", ".join(["legal"] * 12), "SEED_PHRASE", "legal"),
    ("frase de recuperação " + " ".join(["wrong"] * 12), "SEED_PHRASE", "wrong"),
    ("seed • " + " • ".join(VELVET.split()), "SEED_PHRASE", "cupboard"),
    (f"mnemonic = {json.dumps(LEGAL.split())}", "SEED_PHRASE", "sausage"),  # a list pasted from code
    # Wi-Fi: a key after the network's name, a key after a bare "wifi"
    ("WiFi Guest_Net Kotik2019", "PASSWORD", "Kotik2019"),
    ("wifi Kx8#mP2qLz", "PASSWORD", "Kx8#mP2qLz"),
    ("вайфай Kotik_2019", "PASSWORD", "Kotik_2019"),
]

# Ordinary chat next to each rule: numbers that are prices, years, counts, phone-like text; account words
# without a number; lists of words after "seed"; Wi-Fi names.
KEPT: list[str] = [
    "my account is great",
    "account for 12 people",
    "12345678 accounts were created this year",
    "перевёл на счёт 15 000 000 рублей",
    "на счету 12 500 000 руб",
    "account balance 12 500 000 USD",
    "счёт 12345678.50 оплачен",
    "Kontostand 1 234 567 EUR",
    "Konto gesperrt seit 2023",
    "the routing table has 12345678 entries",
    "ABA therapy 3 times a week",
    "sort the list 12-34-56 first",
    "in 2024 we paid 1 299 000 ₽ for it",
    "call me at 10:30, room 1204",
    "order 12-34-56 shipped",
    "compte 3 jours",
    "tili on tyhjä",
    "card 1234 valid",
    "reference 0826 1234",
    "WiFi Guest_Net works",
    "the wifi Guest network is slow",
    "wifi at home works fine",
    "wifi TP-Link_5G drops every hour",
    "wifi Home-WiFi is back",
    "seed the lawn and water the grass every morning before the sun gets too hot",
    "seed list: apple banana cherry grape lemon mango orange peach plum pear lime kiwi",
    "seed: tomato, carrot, onion, garlic, pepper, cabbage, pumpkin, melon, potato, bean, corn, lettuce",
    "hello call hello call hello call hello call hello call hello call hello call",
    "love love love love love love love love love love love love",  # a chorus, no seed word
]


@pytest.mark.parametrize(
    ("text", "kind", "secret"), FOUND, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(FOUND)]
)
def test_found(text: str, kind: str, secret: str) -> None:
    assert_found(text, kind, secret)


@pytest.mark.parametrize("text", KEPT)
def test_kept(text: str) -> None:
    assert scrub_secrets(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("BLZ 37040044 Kto 532013000", "BLZ <BANK_ACCOUNT> Kto <BANK_ACCOUNT>"),
        ("532013000 is my account number", "<BANK_ACCOUNT> is my account number"),
        ("routing: 021000021 / 123456789", "routing: <BANK_ACCOUNT> / <BANK_ACCOUNT>"),
        ("12-34-56 12345678", "<BANK_ACCOUNT>"),
        ("4111 1111 1111 1111 08 26 123", "<CARD> <CARD> <CARD>"),
        ("4111 1111 1111 1111 1500 руб", "<CARD> 1500 руб"),  # an amount after the card stays
        ("карта 4111 1111 1111 1111, остаток 1500", "карта <CARD>, остаток 1500"),
        ("скинул 1500 на 4111 1111 1111 1111 вчера", "скинул 1500 на <CARD> вчера"),
        ("4111 1111 1111 1111, 1200 EUR", "<CARD>, 1200 EUR"),
        ("seed phrase: " + " ".join(["abandon"] * 12), "seed phrase: <SEED_PHRASE>"),  # the name stays
        ("seed: seed " + " ".join(["zoo"] * 11), "seed: <SEED_PHRASE>"),  # a phrase may start with "seed"
        ("WiFi Guest_Net, pass: welcome2024", "WiFi Guest_Net, pass: <PASSWORD>"),
    ],
)
def test_the_message_keeps_its_shape(text: str, scrubbed: str) -> None:
    assert scrub_secrets(text) == scrubbed


SNIPPETS = st.sampled_from([t for t, _, _ in FOUND] + KEPT)
NOISE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(SNIPPETS, NOISE), min_size=1, max_size=6), st.sampled_from(["", " ", "\n", ", "]))
def test_idempotent_and_batch_equals_one_by_one(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    once = scrub_secrets(text)
    assert scrub_secrets(once) == once
    assert PLACEHOLDER.sub("", once).count(">") <= text.count(">")  # no placeholder cut in half
    assert scrub_many([text])[0] == [once]
