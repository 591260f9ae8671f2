"""Hostile and malformed requests against the real app on the real tiny model: every one is answered with
a 4xx (never a 5xx or a traceback) whose one-line message names the field and what is allowed, and no
error echoes a secret or much of what was sent. A hypothesis property test throws random JSON at the chat
endpoint; a client that hangs up mid-stream frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import make_settings, user

from serve.app import MAX_MESSAGE_CHARS, create_app
from serve.service import TwinService, build_service
from serve.settings import Settings

CHAT = "/v1/chat/completions"
TWINS = "/v1/admin/twins"
JSON = {"content-type": "application/json"}
API_KEY = "hostile-api-key-0123456789"
ADMIN_KEY = "hostile-admin-key-0123456789"
AS_CLIENT = {"Authorization": f"Bearer {API_KEY}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HI = user("hi")
TEXT_PART = {"type": "text", "text": "hi"}
MARKER = "PRIVATE-CONTENT-MARKER"
OPENAI_KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY"
"""Looks like an OpenAI key, so the scrubber knows it for one."""
ERROR_TYPES = {"invalid_request_error", "authentication_error", "not_found_error"}


def assert_clean_4xx(r: Any, status: int | None = None, said: str | None = None) -> dict[str, Any]:
    """A 4xx with the API's error shape, a short message and no traceback; `said` in the message."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if status is not None:
        assert r.status_code == status, r.text[:500]
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    error = body["error"]
    assert error["type"] in ERROR_TYPES, body
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= MAX_MESSAGE_CHARS
    assert len(r.content) < 20_000, len(r.content)  # no echo of a large body
    if said is not None:
        assert said in error["message"], error["message"]
    return body


def post_raw(client: TestClient, data: bytes | str, headers: dict[str, str] | None = None) -> Any:
    return client.post(CHAT, content=data, headers={**JSON, **(headers or {})})


# ---- bodies that are not a chat request --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "said"),
    [
        (b"", 422, "body: Field required"),
        (b"{", 422, "body: JSON decode error at character 1"),
        (b'{"messages": []} trailing', 422, "Extra data"),
        (b'{"messages": [HI]}', 422, "JSON decode error"),
        (b"[1, 2]", 422, "body: Input should be a valid dictionary"),
        (b'"hi"', 422, "body: Input should be a valid dictionary"),
        (b"5", 422, "body: Input should be a valid dictionary"),
        (b"null", 422, "body: Input should be a valid dictionary"),
        (b"true", 422, "body: Input should be a valid dictionary"),
        (b"{\"a\": \"\x80\"}", 400, "not UTF-8 text"),
        (b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', 400, "not UTF-8 text"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nests arrays or objects too deep"),
        (b'{"x":' * 30_000 + b"1" + b"}" * 30_000, 400, "nests arrays or objects too deep"),
        (b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", 400, "too many digits"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\x00', 422, "JSON decode error"),
    ],
    ids=[
        "empty", "truncated", "trailing-data", "not-json", "list", "string", "number", "null", "true",
        "not-utf8", "bad-utf8-in-string", "deep-arrays", "deep-objects", "5000-digit-number", "trailing-nul",
    ],
)  # fmt: skip
def test_bodies_that_are_not_a_chat_request(client: TestClient, raw: bytes, status: int, said: str) -> None:
    assert_clean_4xx(post_raw(client, raw), status, said)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json, text/plain", 415),
        ("application/" + "x" * 10_000, 415),
        ("APPLICATION/JSON", 200),
        ("application/json; charset=utf-8", 200),
    ],
    ids=["none", "text", "form", "multipart", "two-types", "huge-type", "upper-case", "charset"],
)
def test_content_types(client: TestClient, content_type: str | None, status: int) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post(CHAT, content=json.dumps({"messages": [HI], "max_tokens": 2}), headers=headers)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        body = assert_clean_4xx(r, status, "Content-Type: application/json")
        assert "x" * 200 not in body["detail"]  # the header is quoted, not all of it


# ---- requests with a wrong field ---------------------------------------------------------------------


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [HI], **fields}


HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    ("no-messages", {"model": "twin"}, 422, "messages: Field required"),
    ("messages-string", {"messages": "hi"}, 422, "messages: Input should be a valid list"),
    ("messages-object", {"messages": {"role": "user"}}, 422, "messages: Input should be a valid list"),
    ("messages-empty", {"messages": []}, 422, "messages: List should have at least 1 item"),
    ("message-number", {"messages": [1]}, 422, "messages.0: Input should be a valid dictionary"),
    ("message-null", {"messages": [None]}, 422, "messages.0: Input should be a valid dictionary"),
    ("message-list", {"messages": [[HI]]}, 422, "messages.0: Input should be a valid dictionary"),
    (
        "role-unknown",
        {"messages": [{"role": "bot", "content": "hi"}]},
        422,
        "'system', 'user' or 'assistant'",
    ),
    (
        "role-tool",
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
        422,
        "messages.0.role",
    ),
    ("role-number", {"messages": [{"role": 1, "content": "hi"}]}, 422, "messages.0.role"),
    ("role-missing", {"messages": [{"content": "hi"}]}, 422, "messages.0.role: Field required"),
    ("content-number", {"messages": [{"role": "user", "content": 5}]}, 422, "messages.0.content"),
    ("content-object", {"messages": [{"role": "user", "content": {"a": 1}}]}, 422, "messages.0.content"),
    ("content-null", {"messages": [{"role": "user", "content": None}]}, 400, "non-empty 'user' message"),
    ("content-blank", {"messages": [user(" \n\t\u200b")]}, 400, "non-empty 'user' message"),
    ("content-only-nul", {"messages": [user("\x00")]}, 400, "non-empty 'user' message"),
    ("parts-empty", {"messages": [{"role": "user", "content": []}]}, 400, "non-empty 'user' message"),
    ("part-string", {"messages": [{"role": "user", "content": ["hi"]}]}, 422, "messages.0.content"),
    (
        "part-image",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
            ]
        },
        422,
        "messages.0.content.0.type: Input should be 'text'",
    ),
    (
        "part-audio",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA"}}]}]},
        422,
        "messages.0.content.0.type: Input should be 'text'",
    ),
    (
        "part-no-text",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        422,
        "text: Field required",
    ),
    ("name-number", {"messages": [{"role": "user", "content": "hi", "name": 5}]}, 422, "messages.0.name"),
    ("last-is-assistant", {"messages": [HI, {"role": "assistant", "content": "yo"}]}, 400, "'user' message"),
    (
        "max_tokens-negative",
        chat(max_tokens=-1),
        422,
        "max_tokens: Input should be greater than or equal to 1",
    ),
    ("max_tokens-zero", chat(max_tokens=0), 422, "max_tokens: Input should be greater than or equal to 1"),
    ("max_tokens-huge", chat(max_tokens=10**30), 400, "max_tokens of 31 digits exceeds this server's cap"),
    ("max_tokens-1e308", chat(max_tokens=1e308), 400, "max_tokens of 309 digits exceeds this server's cap"),
    ("max_tokens-fraction", chat(max_tokens=1.5), 422, "max_tokens: Input should be a valid integer"),
    ("max_tokens-string", chat(max_tokens="5"), 422, "max_tokens: Input should be a valid integer"),
    ("max_tokens-bool", chat(max_tokens=True), 422, "max_tokens: Input should be a valid integer"),
    ("max_completion_tokens-0", chat(max_completion_tokens=0), 422, "max_completion_tokens"),
    (
        "temperature-negative",
        chat(temperature=-0.1),
        422,
        "temperature: Input should be greater than or equal",
    ),
    (
        "temperature-huge",
        chat(temperature=1e300),
        422,
        "temperature: Input should be less than or equal to 2",
    ),
    ("temperature-string", chat(temperature="hot"), 422, "temperature: Input should be a valid number"),
    ("temperature-bool", chat(temperature=False), 422, "temperature: Input should be a valid number"),
    ("top_p-over-1", chat(top_p=1.01), 422, "top_p: Input should be less than or equal to 1"),
    ("top_p-negative", chat(top_p=-1), 422, "top_p: Input should be greater than or equal to 0"),
    ("n-2", chat(n=2), 422, "n: Input should be less than or equal to 1"),
    ("n-0", chat(n=0), 422, "n: Input should be greater than or equal to 1"),
    ("n-null", chat(n=None), 422, "n: Input should be a valid integer"),
    ("stop-many", chat(stop=["x"] * 10_000), 422, "stop: at most 4 strings, got 10000"),
    ("stop-numbers", chat(stop=[1, 2]), 422, "stop: a string or a list of up to 4 strings"),
    ("stop-object", chat(stop={"a": 1}), 422, "stop: a string or a list of up to 4 strings"),
    ("stop-empty-string", chat(stop=""), 422, "stop: each stop string needs 1 to 64 characters, got 0"),
    ("stop-long", chat(stop="x" * 100_000), 422, "stop: each stop string needs 1 to 64 characters"),
    ("stream-string", chat(stream="true"), 422, "stream: Input should be a valid boolean"),
    ("stream-number", chat(stream=1), 422, "stream: Input should be a valid boolean"),
    ("stream-null", chat(stream=None), 422, "stream: Input should be a valid boolean"),
    ("stream_options-list", chat(stream=True, stream_options=[1]), 422, "stream_options"),
    ("model-unknown", chat(model="gpt-4o"), 404, "model 'gpt-4o' does not exist"),
    ("model-number", chat(model=5), 422, "model: Input should be a valid string"),
    ("model-long", chat(model="m" * 100_000), 404, "does not exist"),
    ("model-empty", chat(model=""), 404, "does not exist"),
    ("seed-string", chat(seed="x"), 422, "seed: Input should be a valid integer"),
    ("presence_penalty-huge", chat(presence_penalty=1e9), 422, "presence_penalty: Input should be less"),
    ("logit_bias-string", chat(logit_bias={"5": "x"}), 422, "logit_bias: a map of token ids (digits) to"),
    ("logit_bias-range", chat(logit_bias={"5": 101}), 422, "logit_bias: a map of token ids"),
    ("logit_bias-key", chat(logit_bias={"a": 1}), 422, "logit_bias: a map of token ids"),
    ("logprobs", chat(logprobs=True), 422, "logprobs: log probabilities are not supported"),
    ("top_logprobs", chat(top_logprobs=5), 422, "top_logprobs: log probabilities are not supported"),
    ("logprobs-string", chat(logprobs="yes"), 422, "logprobs: Input should be a valid boolean"),
    (
        "tools",
        chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        422,
        "tools: tool and function calling are not supported",
    ),
    ("tool_choice", chat(tool_choice="required"), 422, "tool_choice: tool and function calling"),
    ("tool_choice-number", chat(tool_choice=0), 422, "tool_choice: tool and function calling"),
    ("tools-object", chat(tools={"type": "function"}), 422, "tools: Input should be a valid list"),
    ("functions", chat(functions=[{"name": "f"}]), 422, "functions: tool and function calling"),
    ("function_call", chat(function_call={"name": "f"}), 422, "function_call: tool and function calling"),
    ("response_format-json", chat(response_format={"type": "json_object"}), 422, "response_format: only"),
    ("response_format-schema", chat(response_format={"type": "json_schema"}), 422, "JSON schemas"),
    ("response_format-string", chat(response_format="json"), 422, "response_format: Input should be a valid"),
    ("modalities-audio", chat(modalities=["text", "audio"]), 422, "modalities: only ['text']"),
    ("audio", chat(audio={"voice": "alloy", "format": "wav"}), 422, "audio: audio output is not supported"),
    ("user-number", chat(user=5), 422, "user: Input should be a valid string"),
    ("many-bad-messages", {"messages": [{"role": "bot"}] * 512}, 422, "(and 511 more)"),
]


@pytest.mark.parametrize(("payload", "status", "said"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_fields_are_4xx_naming_the_field(
    client: TestClient, payload: dict[str, Any], status: int, said: str
) -> None:
    body = assert_clean_4xx(post_raw(client, json.dumps(payload)), status, said)
    if status == 422:
        assert len(body["detail"]) <= 20  # 512 bad messages do not make 512 entries


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (
            rb'{"messages": [{"role": "user", "content": "half \ud800 a pair"}]}',
            "messages.0.content: holds an",
        ),
        (rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}', "unpaired"),
        (rb'{"messages": [{"role": "user", "content": "hi", "name": "\ud800"}]}', "messages.0.name"),
        (rb'{"messages": [{"role": "\ud800", "content": "hi"}]}', "messages.0.role"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "stop": "\udc00"}', "stop"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"\ud800": "x"}}', "logit_bias"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "model": "\ud800"}', "does not exist"),
    ],
    ids=["content", "text-part", "name", "role", "stop", "logit_bias-key", "model"],
)
def test_unpaired_surrogates_are_4xx(client: TestClient, raw: bytes, said: str) -> None:
    r = post_raw(client, raw)
    assert_clean_4xx(r, said=said)
    r.content.decode("utf-8")  # the error itself is valid UTF-8


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": [{"role": "user", "content": [TEXT_PART, TEXT_PART]}]},
        {"messages": [{"role": "developer", "content": "be brief"}, HI]},
        {"messages": [HI, {"role": "assistant", "content": None}, HI]},
        {"messages": [user("a\x00b \u202e\u200f\ufeff \U0001f469\u200d\U0001f467 \uffff")]},
        {"messages": [user("hi", name="\u202eAnna###")]},
        chat(stop="\x00"),
        chat(stop=[]),
        chat(max_tokens=3.0),
        chat(seed=10**40, presence_penalty=-2, frequency_penalty=2, logit_bias={"5": -100}),
        chat(logprobs=False, top_logprobs=0, tools=[], tool_choice="none", functions=[], function_call=None),
        chat(response_format={"type": "text"}, modalities=["text"], audio=None),
        chat(unknown_field={"deep": [[[1]]]}, user="u" * 1000, metadata={"a": "b"}, store=False),
        chat(temperature=0, top_p=0),
        chat(temperature=1e-300, top_p=1e-300),
        chat(stream_options={"include_usage": True}),
    ],
    ids=[
        "text-parts", "developer-role", "assistant-null-content", "odd-unicode", "odd-name", "nul-stop",
        "no-stops", "integral-float", "ignored-openai-fields", "unsupported-fields-off", "text-format",
        "unknown-fields", "greedy-zero-top_p", "tiny-temperature", "stream_options-without-stream",
    ],
)  # fmt: skip
def test_odd_but_valid_requests_are_served(client: TestClient, fields: dict[str, Any]) -> None:
    r = client.post(CHAT, json={"max_tokens": 4, **fields})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_oversized_bodies_are_413(client: TestClient) -> None:
    big = json.dumps({"messages": [user("x" * 3_000_000)]})
    assert_clean_4xx(post_raw(client, big), 413, "TWIN_MAX_BODY_BYTES")
    many = json.dumps({"messages": [user("y" * 1000)] * 5000})
    assert_clean_4xx(post_raw(client, many), 413)


def test_content_length_that_is_no_number_is_400(client: TestClient) -> None:
    r = client.post(CHAT, content=b"{}", headers={**JSON, "content-length": "-1"})
    assert_clean_4xx(r, 400, "Content-Length")


# ---- what errors say -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": [{"role": "bot", "content": MARKER}]},
        {"messages": [{"role": "user", "content": MARKER * 1000}], "temperature": "x"},
        {"messages": [user(MARKER, name=MARKER * 10)]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "text": MARKER}]}]},
        {"messages": [HI], "stop": [MARKER * 10]},
        {"messages": [HI], "logprobs": MARKER},
        {"messages": [HI], "response_format": {"type": MARKER}},
        {"messages": [HI], MARKER: 1, "n": 5},
        {"messages": [HI], "logit_bias": {MARKER * 1000: "x"}},
        {"messages": [{"role": "user", "content": "x " * 2000 + MARKER}]},
    ],
    ids=[
        "role", "content", "name", "image-part", "stop", "logprobs", "response_format", "unknown-key",
        "logit_bias-key", "too-long-prompt",
    ],
)  # fmt: skip
def test_errors_never_echo_what_was_sent(client: TestClient, payload: dict[str, Any]) -> None:
    r = post_raw(client, json.dumps(payload))
    assert_clean_4xx(r)
    assert MARKER not in r.text


def test_errors_never_echo_a_key_sent_in_the_wrong_place(client: TestClient) -> None:
    for r in (
        post_raw(client, json.dumps(chat(model=OPENAI_KEY))),
        client.post(CHAT, content=b"{}", headers={"content-type": f"text/{OPENAI_KEY}"}),
        client.get(f"/v1/models/{OPENAI_KEY}"),
        client.get(f"/nothing/{OPENAI_KEY}"),
    ):
        assert_clean_4xx(r)
        assert OPENAI_KEY not in r.text and OPENAI_KEY[:20] not in r.text, r.text


# ---- routes, methods and keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "said"),
    [
        ("GET", CHAT, 405, "use POST"),
        ("PUT", CHAT, 405, "use POST"),
        ("DELETE", "/v1/models", 405, "use GET"),
        ("POST", "/health", 405, "use GET"),
        ("GET", "/nope", 404, "no such endpoint"),
        ("GET", "/v1//models", 404, "no such endpoint"),
        ("GET", "/%ff%00", 404, "no such endpoint"),
        ("GET", "/" + "a" * 10_000, 404, "no such endpoint"),
        ("GET", "/v1/models/gpt-4", 404, "model 'gpt-4' does not exist"),
        ("GET", TWINS, 401, "admin endpoints are off"),
        ("POST", TWINS, 401, "admin endpoints are off"),
        ("DELETE", f"{TWINS}/twin", 401, "admin endpoints are off"),
    ],
)
def test_other_routes_and_methods(client: TestClient, method: str, path: str, status: int, said: str) -> None:
    assert_clean_4xx(client.request(method, path), status, said)


def test_a_model_can_be_retrieved_by_id(client: TestClient) -> None:
    r = client.get("/v1/models/twin")
    assert r.status_code == 200 and r.json()["id"] == "twin" and r.json()["object"] == "model"


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint: Path) -> Iterator[tuple[TestClient, TwinService]]:
    """A server with an API key and an admin key, room for one more twin (the base is the default)."""
    settings = make_settings(tiny_checkpoint, None, max_twins=1, api_key=API_KEY, admin_key=ADMIN_KEY)
    service = build_service(settings)
    service.engine.start()
    assert service.engine.wait_ready(timeout=120), service.engine.load_error
    try:
        with TestClient(create_app(settings, service)) as client:
            yield client, service
    finally:
        service.engine.stop()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {API_KEY}",
        f"Token {API_KEY}",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        f"Bearer {ADMIN_KEY}",
        "Bearer " + "k" * 60_000,
        f"Bearer {API_KEY}".encode("latin-1").decode() + "\xe9",
    ],
    ids=[
        "none", "empty", "scheme-only", "scheme-space", "basic", "token", "longer", "shorter", "admin-key",
        "huge", "latin-1",
    ],
)  # fmt: skip
def test_wrong_api_keys_are_401_without_echo(
    keyed: tuple[TestClient, TwinService], authorization: str | None
) -> None:
    client, _ = keyed
    headers = {} if authorization is None else {"Authorization": authorization.encode("latin-1")}
    for r in (client.get("/v1/models", headers=headers), client.post(CHAT, json=chat(), headers=headers)):
        body = assert_clean_4xx(r, 401, "Authorization: Bearer <TWIN_API_KEY>")
        assert body["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in r.text and "kkkk" not in r.text


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {API_KEY}", f"Basic {ADMIN_KEY}", f"Bearer {ADMIN_KEY}_", "Bearer " + "k" * 60_000],
    ids=["none", "api-key", "basic", "longer", "huge"],
)
def test_admin_needs_its_own_key(keyed: tuple[TestClient, TwinService], authorization: str | None) -> None:
    client, _ = keyed
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", TWINS), ("POST", TWINS), ("DELETE", f"{TWINS}/twin")):
        r = client.request(method, path, json={"name": "x", "adapter": "/x"}, headers=headers)
        assert_clean_4xx(r, 401, "TWIN_ADMIN_KEY")
        assert ADMIN_KEY not in r.text


def hostile_adapters(root: Path) -> dict[str, str]:
    """Adapter paths an admin (or a stolen admin key) may send: each must be a 400, never a 500."""
    made: dict[str, str] = {}
    for name, hparams in {
        "binary-yaml": b"\xff\xfe\x00 not text",
        "secret-yaml": f"key: [{OPENAI_KEY}\n  : :".encode(),
        "not-a-mapping": b"- 1\n- 2\n",
    }.items():
        (root / name).mkdir()
        (root / name / "hyperparameters.yaml").write_bytes(hparams)
        (root / name / "lit_model_lora_finetuned.pth").write_bytes(b"not torch")
        made[name] = str(root / name)
    (root / "yaml-is-a-folder" / "hyperparameters.yaml").mkdir(parents=True)
    made["yaml-is-a-folder"] = str(root / "yaml-is-a-folder")
    made |= {
        "missing": "/no/such/adapter",
        "nul-byte": "/tmp/a\x00b",
        "root": "/",
        "dev-null": "/dev/null",
        "relative": "../../..",
        "long-path": "/" + "a" * 4000,
        "long-name": "/tmp/" + "a" * 300,
    }
    return made


def test_hostile_admin_requests_are_4xx(keyed: tuple[TestClient, TwinService], tmp_path: Path) -> None:
    client, service = keyed
    bodies: list[Any] = [
        [1], None, "x", {}, {"name": "x"}, {"name": 5, "adapter": "/x"}, {"name": "../x", "adapter": "/x"},
        {"name": "a" * 1000, "adapter": "/x"}, {"name": "x", "adapter": ""}, {"name": "x", "adapter": 5},
        {"name": "x", "adapter": "/" * 5000}, {"name": "x", "adapter": "/x", "extra": MARKER * 100},
    ]  # fmt: skip
    for body in bodies:
        assert_clean_4xx(client.post(TWINS, content=json.dumps(body), headers={**AS_ADMIN, **JSON}), 422)
    extra_key = rb'{"name": "x", "adapter": "/x", "\ud800": 1}'
    assert_clean_4xx(client.post(TWINS, content=extra_key, headers={**AS_ADMIN, **JSON}), 422)
    assert_clean_4xx(client.post(TWINS, content=b"name=x", headers=AS_ADMIN), 415)
    for name, adapter in hostile_adapters(tmp_path).items():
        r = client.post(TWINS, json={"name": "newcomer", "adapter": adapter}, headers=AS_ADMIN)
        assert_clean_4xx(r, 400)
        assert OPENAI_KEY not in r.text, name
    for name in ("nobody", "x" * 5000, "%00", "%ff", "a:b.c-d"):
        assert_clean_4xx(client.delete(f"{TWINS}/{name}", headers=AS_ADMIN), 404, "does not exist")
    assert sorted(service.twins) == ["twin"]  # nothing was added on the way


# ---- random bodies ---------------------------------------------------------------------------------

FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "n", "user", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "tools", "tool_choice", "response_format", "modalities",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "developer", "tool", "text", "twin", "\ud800", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]) | json_values},
        optional={
            "content": st.text(max_size=40)
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}), max_size=2
            )
            | json_values,
            "name": st.text(max_size=10) | json_values,
        },
    ),
    max_size=4,
)
requests = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=6).flatmap(
    lambda fields: st.builds(lambda m: {**fields, "messages": m}, messages) | st.just(fields)
)


def encode(body: Any) -> bytes:
    # NaN and Infinity go out as JSON's non-standard literals; lone surrogates as \\u escapes
    return json.dumps(body, allow_nan=True).encode()


@given(body=requests | json_values)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_random_bodies_never_get_a_server_error(client: TestClient, body: Any) -> None:
    if isinstance(body, dict) and body.get("max_tokens") is None:
        body = {**body, "max_completion_tokens": 2} if "max_completion_tokens" not in body else body
    r = post_raw(client, encode(body))
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert_clean_4xx(r)


# ---- clients that go away, clients that crowd in -----------------------------------------------------


async def call_and_hang_up(app: Any, body: bytes, at_once: bool) -> list[dict[str, Any]]:
    """Call the ASGI app as a server would; the client goes away right after sending its body (`at_once`)
    or once the first chunk of the answer has arrived."""
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    if at_once:
        gone.set()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            gone.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    return sent


@pytest.mark.parametrize(
    ("stream", "at_once"), [(True, False), (True, True), (False, True)], ids=["mid-stream", "stream", "plain"]
)
def test_a_client_that_hangs_up_frees_its_slot(
    serve_settings: Settings, service: TwinService, stream: bool, at_once: bool
) -> None:
    app = create_app(serve_settings, service)
    # a long reply, so that the hang-up comes while it is being generated. At temperature 2 the sampler
    # can still draw the end token within the first few (about 1 call in 60 here), and the reply then
    # ends by itself before the hang-up reaches it: that call did not test the hang-up, so it is made
    # again — what must hold is that a call whose reply was still running is cancelled and freed.
    body = {"messages": [HI], "max_tokens": 48, "temperature": 2.0, "top_p": 1.0, "stream": stream}
    ends = []
    for _ in range(5):
        before = dict(service.engine.stats()["finished"])
        sent = asyncio.run(call_and_hang_up(app, json.dumps(body).encode(), at_once))
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] < 500, sent[0]
        deadline = time.monotonic() + 30
        while service.engine.stats()["active"] or service.engine.stats()["queued"]:
            assert time.monotonic() < deadline, service.engine.stats()
            time.sleep(0.02)
        after = service.engine.stats()["finished"]
        ended = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        if ended == {"cancelled": 1}:
            return
        assert ended == {"stop": 1}, ended  # anything else: the hang-up was mishandled
        ends.append(ended)
    pytest.fail(f"every reply ended by itself before the hang-up: {ends}")


def test_hostile_and_valid_requests_together(client: TestClient) -> None:
    payloads: list[bytes] = [
        json.dumps({"messages": [HI], "max_tokens": 8}).encode(),
        json.dumps({"messages": [HI], "max_tokens": 8, "stream": True}).encode(),
        b"{",
        b"[" * 50_000,
        json.dumps({"messages": [HI], "max_tokens": 10**9}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x " * 5000}]}).encode(),
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda p: post_raw(client, p), payloads * 2))
    assert [r.status_code for r in responses[:2]] == [200, 200]
    assert all(r.status_code < 500 for r in responses), [r.status_code for r in responses]
