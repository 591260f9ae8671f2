"""A second adversarial probe: secrets typed by someone else (Turkish and Italian password words, a Wi-Fi
key after the network's name, passphrases of plain words, codes given by their purpose, user:password
pairs, letters-only keys, phones grouped like thousands) and the ordinary chat each fix must leave alone."""

from __future__ import annotations

from common.scrub import scrub_secrets

# (text, kind, the secret itself: must be gone after scrubbing)
PROBED: list[tuple[str, str, str]] = [
    # passphrases of plain words after "is:" or a passphrase's colon
    ("password is: correct horse battery staple", "PASSWORD", "horse battery staple"),
    ("the passphrase is: purple monkey dishwasher", "PASSWORD", "monkey dishwasher"),
    ("passphrase: purple monkey dishwasher", "PASSWORD", "monkey dishwasher"),
    # a Wi-Fi key after the network's name, digits after an explicit Wi-Fi label
    ("SSID: X, key: 87654321", "PASSWORD", "87654321"),
    ("SSID HomeNet key 87654321", "PASSWORD", "87654321"),
    ("Network: Vodafone-5G\nKey: 55443322", "PASSWORD", "55443322"),
    ("WLAN-Schlüssel: 8830201944", "PASSWORD", "8830201944"),
    ("PAROLA WIFI: 77889900", "PASSWORD", "77889900"),
    # one-time codes given by what they are for, in groups of three, Polish and Turkish
    ("Use 482913 to verify", "PASSWORD", "482913"),
    ("Enter 739201 to verify your account", "PASSWORD", "739201"),
    ("Код подтверждения 551 903", "PASSWORD", "551 903"),
    ("Twój kod weryfikacyjny to 918273", "PASSWORD", "918273"),
    ("Doğrulama kodunuz: 662781", "PASSWORD", "662781"),
    # recovery codes of two groups, listed
    ("recovery codes: 8f3k2-9dj3l 2kd93-lq0pz 93jdk-2l0dp", "PASSWORD", "93jdk-2l0dp"),
    ("GitHub recovery codes:\na1b2c-d3e4f\ng5h6i-j7k8l", "PASSWORD", "g5h6i-j7k8l"),
    # Turkish and Italian password words
    ("şifre: Kedi1234", "PASSWORD", "Kedi1234"),
    ("şifrem Istanbul34", "PASSWORD", "Istanbul34"),
    ("kullanıcı adı: ahmet, şifre: Ankara06!", "PASSWORD", "Ankara06"),
    ("Parola: Roma1990", "PASSWORD", "Roma1990"),
    ("parola d'ordine: Pizza2021!", "PASSWORD", "Pizza2021"),
    # credentials as user:password, both named then both given
    ("admin:Admin123! for the router", "PASSWORD", "Admin123"),
    ("creds: jdoe:Summer2024", "PASSWORD", "Summer2024"),
    ("login/pass: petrov / Sekret55", "PASSWORD", "Sekret55"),
    # "sk-" keys of letters only
    ("sk-abcdefghijklmnopqrstuvwxyzABCD", "API_KEY", "abcdefghijklmnopqrstuvwxyzABCD"),
    ("openai key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "API_KEY", "AbCdEfGhIjKlMnOpQrStUvWx"),
    # phones: Spain and Turkey without the country code, grouped like thousands after a word naming them
    ("612 34 56 78", "PHONE", "34 56 78"),
    ("0532 123 45 67 arayın", "PHONE", "123 45 67"),
    ("mi móvil es 612 34 56 78", "PHONE", "34 56 78"),
    ("llámame al 678 901 234", "PHONE", "901 234"),
    ("mój numer 601 234 567", "PHONE", "234 567"),
    ("numero: 347 123 4567", "PHONE", "123 4567"),
]

ORDINARY: list[str] = [
    "the password has 12345678 in it",
    "his password has 3 numbers",
    "пароль содержит 8 цифр",
    "hasło: zapomniałem",
    "password is: see the doc",
    "the password is: wrong",
    "passphrase: same as before",
    "the network key thing is annoying",
    "network outage 2024, key results attached",
    "ssid and key are on the router sticker",
    "moved the code to 2024",
    "use 2 to verify",
    "enter 2024 to continue",
    "şifre nedir?",
    "parola chiave",
    "admin:8080",
    "root:x:0:0:root:/root:/bin/bash",
    "login: admin:password",
    "recovery codes are well-known",
    "sk-learn-contrib-imbalanced-learn",
    "sk-LearnToCodeWithPythonToday",
    "number of visitors 120 000 130 000",
    "population 8 336 817",
    "call at 10 30 45",
    "1 2 3 4 go",
    "12 34 56 78 go",
    "sizes 36 38 40 42 44",
    "Tel Aviv - Jerusalem 60 km",
]


def test_probed_values_keep_the_message() -> None:
    assert scrub_secrets("password is: correct horse battery staple") == "password is: <PASSWORD>"
    assert scrub_secrets("SSID: HomeNet, key: 87654321") == "SSID: HomeNet, key: <PASSWORD>"
    assert scrub_secrets("Use 482913 to verify") == "Use <PASSWORD> to verify"
    assert scrub_secrets("login/pass: petrov / Sekret55") == "login/pass: <PASSWORD>"
    assert scrub_secrets("admin:Admin123! for the router") == "admin:<PASSWORD> for the router"
