"""The HTTP API through TestClient on the real tiny model: OpenAI shapes, streaming, every client
mistake as a 4xx with a useful detail, auth, CORS, body limit, readiness, and what gets logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, user

from prepare.prompt import prompt_from_messages
from serve.app import create_app
from serve.service import TwinService, build_service
from serve.settings import Settings

CHAT = "/v1/chat/completions"


def chat(client: TestClient, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    r = client.post(CHAT, json={"model": "twin", "messages": messages, **params})
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_health_reports_the_loaded_model(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["ready"] is True
    assert body["model"] == "twin" and body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["startup_seconds"] > 0 and body["max_batch_size"] == 4
    assert (body["max_input_tokens"], body["max_new_tokens"]) == (160, 48)
    # the tiny Falcon-shaped model's blocks are fused; the Triton kernels are GPU-only
    assert body["fused_blocks"] >= 1 and body["triton_kernels"] is False


def test_models_lists_the_twin(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["twin"] and body["data"][0]["object"] == "model"


def test_chat_completion_shape_and_usage(client: TestClient, service: TwinService) -> None:
    messages = [
        {"role": "system", "content": "ignored"},
        user("hey", name="Anna"),
        {"role": "assistant", "content": "hi!"},
        user("Are you free on friday?", name="Anna"),
    ]
    body = chat(client, messages, max_tokens=10, temperature=0)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "twin"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    # the prompt is prepare's prompt module's, with the partner's name from the `name` field
    prompt = prompt_from_messages(messages)
    assert "Anna's new message" in prompt
    assert usage["prompt_tokens"] == len(service.tokenizer.encode(prompt))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 10
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 10


def test_greedy_is_deterministic_and_max_tokens_caps(client: TestClient) -> None:
    messages = [user("Did you see the match?")]
    a = chat(client, messages, max_tokens=6, temperature=0)
    b = chat(client, messages, max_completion_tokens=6, temperature=0)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"]["completion_tokens"] <= 6


def test_stream_matches_the_plain_reply(client: TestClient) -> None:
    messages = [user("Want to grab sushi later?", name="Boris")]
    plain = chat(client, messages, max_tokens=12, temperature=0)
    r = client.post(
        CHAT,
        json={
            "messages": messages,
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == plain["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert (
        len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_a_long_history_keeps_fewer_context_turns(client: TestClient, service: TwinService) -> None:
    history: list[dict[str, Any]] = []
    for i in range(8):
        history += [
            user(f"message number {i} about the concert and the weekend plans"),
            {"role": "assistant", "content": f"reply {i} sure thing, sounds good to me"},
        ]
    messages = [*history, user("so, friday?")]
    full = len(service.tokenizer.encode(prompt_from_messages(messages)))
    assert full > 160  # over TWIN_MAX_INPUT_TOKENS with the prompt module's default 8 turns
    body = chat(client, messages, max_tokens=2)
    fits = [len(service.tokenizer.encode(prompt_from_messages(messages, max_turns=n))) for n in (4, 2, 1, 0)]
    assert body["usage"]["prompt_tokens"] == next(n for n in fits if n <= 160)


def test_stop_strings_cut_the_reply(client: TestClient) -> None:
    messages = [user("How was your day?")]
    full = chat(client, messages, max_tokens=24, temperature=0)["choices"][0]["message"]["content"]
    assert len(full) >= 6, full
    stop = full[3:6]
    body = chat(client, messages, max_tokens=24, temperature=0, stop=[stop, "never-there"])
    assert body["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    streamed = client.post(
        CHAT, json={"messages": messages, "max_tokens": 24, "temperature": 0, "stream": True, "stop": stop}
    )
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in sse_events(streamed.text)[:-1]]
    assert "".join(deltas) == full[: full.index(stop)]


LONG = "word " * 400


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}', 422, "JSON decode error"),
        ("[]", 422, "valid dictionary"),
        ({"messages": "hi"}, 422, "valid list"),
        ({"messages": []}, 422, "at least 1 item"),
        ({}, 422, "Field required"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, 422, "'system', 'user' or 'assistant'"),
        ({"messages": [{"role": "user", "content": 5}]}, 422, "content"),
        ('{"messages": [{"role": "user", "content": "half \\ud800 a pair"}]}', 422, "unpaired surrogate"),
        ('{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}", 400, "error parsing the body"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 422, "valid integer"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
            422,
            "greater than or equal to 1",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12},
            400,
            "exceeds this server's cap of 48",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 422, "less than or equal to 2"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 422, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, 422, "less than or equal to 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 422, "less than or equal to 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 422, "1 to 64 characters, got 0"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stop": "x" * 65},
            422,
            "1 to 64 characters, got 65",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stop": ["."] * 100},
            422,
            "at most 4 strings, got 100",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stop": [5]},
            422,
            "a string or a list of up to 4",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, 404, "serves 'twin'"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            400,
            "must end with a non-empty 'user' message",
        ),
        ({"messages": [{"role": "user", "content": "   "}]}, 400, "must end with a non-empty 'user' message"),
        (
            {"messages": [{"role": "system", "content": "be nice"}]},
            400,
            "must end with a non-empty 'user' message",
        ),
        (
            {"messages": [{"role": "user", "content": LONG}]},
            400,
            "accepts at most 160 (TWIN_MAX_INPUT_TOKENS)",
        ),
    ],
)
def test_client_mistakes_are_4xx_with_a_detail(
    client: TestClient, payload: Any, status: int, detail: str
) -> None:
    if isinstance(payload, str):
        r = client.post(CHAT, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(CHAT, json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert detail in json.dumps(body["detail"]), body
    assert body["error"]["message"]
    assert body["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content: Input should be a valid string or a valid list",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "text": "x"}]}]},
            "messages.0.content.0.type: Input should be 'text'",
        ),
        (
            {"messages": [user("hi")] * 513},
            "messages: List should have at most 512 items after validation, not 513",
        ),
        (
            {"messages": [user("hi", name="n" * 129)]},
            "messages.0.name: String should have at most 128 characters",
        ),
        (
            {"messages": [{"role": "user", "content": 5}], "temperature": 9},
            "temperature: Input should be less than or equal to 2 (and 1 more)",
        ),
    ],
)
def test_the_422_line_names_the_field_and_what_it_should_be(
    client: TestClient, payload: dict[str, Any], message: str
) -> None:
    r = client.post(CHAT, json=payload)
    assert r.status_code == 422
    assert r.json()["error"]["message"] == message


def test_the_stop_limit_is_named_in_the_message(client: TestClient) -> None:
    r = client.post(CHAT, json={"messages": [user("hi")], "stop": [str(i) for i in range(100)]})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "stop: at most 4 strings, got 100"
    assert r.json()["error"]["param"] == "stop"


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"content-type": "text/plain"}, "(got 'text/plain')"),
        ({"content-type": "application/x-www-form-urlencoded"}, "(got 'application/x-www-form-urlencoded')"),
        ({}, "(the request had no Content-Type)"),
    ],
    ids=["text-plain", "form", "none"],
)
def test_a_body_not_sent_as_json_is_415_naming_the_type(
    client: TestClient, headers: dict[str, str], said: str
) -> None:
    body = json.dumps({"messages": [user("hi")]})
    r = client.post(CHAT, content=body, headers=headers)
    assert r.status_code == 415, r.text
    detail = r.json()["detail"]
    assert "'Content-Type: application/json'" in detail and said in detail
    assert r.json()["error"]["type"] == "invalid_request_error"
    # a charset or a +json type is JSON all the same
    for json_type in ("application/json; charset=utf-8", "application/vnd.twin+json"):
        r = client.post(CHAT, content=body, headers={"content-type": json_type})
        assert r.status_code == 200, r.text


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    big = json.dumps({"messages": [user("x" * 1_100_000)]})
    r = client.post(CHAT, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "TWIN_MAX_BODY_BYTES" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(1100):
            yield b"x" * 1000
        yield b'"}]}'

    r = client.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.fixture(scope="module")
def keyed_client(serve_settings: Settings, service: TwinService) -> Iterator[TestClient]:
    settings = serve_settings.model_copy(update={"api_key": __import__("pydantic").SecretStr("s3cret-key")})
    with TestClient(create_app(settings, service)) as client:
        yield client


def test_api_key_is_required_when_set(keyed_client: TestClient) -> None:
    payload = {"messages": [user("hi")], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
        for method, path in (("GET", "/v1/models"), ("POST", CHAT)):
            r = keyed_client.request(
                method, path, json=payload if method == "POST" else None, headers=headers
            )
            assert r.status_code == 401, (headers, path)
            assert r.headers["www-authenticate"] == "Bearer" and "TWIN_API_KEY" in r.json()["detail"]
    good = {"Authorization": "Bearer s3cret-key"}
    assert keyed_client.get("/v1/models", headers=good).status_code == 200
    assert keyed_client.post(CHAT, json=payload, headers=good).status_code == 200
    assert keyed_client.get("/health").status_code == 200  # probes need no key


def test_cors_is_closed_by_default_and_opens_for_listed_origins(
    client: TestClient, serve_settings: Settings, service: TwinService
) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options(CHAT, headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert (
        "access-control-allow-origin"
        not in client.get("/v1/models", headers={"Origin": "https://evil.example"}).headers
    )
    settings = serve_settings.model_copy(update={"cors_origins": ["http://localhost:8501"]})
    with TestClient(create_app(settings, service)) as open_client:
        ok = open_client.options(CHAT, headers={**preflight, "Origin": "http://localhost:8501"})
        assert ok.headers["access-control-allow-origin"] == "http://localhost:8501"
        other = open_client.options(CHAT, headers=preflight)
        assert "access-control-allow-origin" not in other.headers


def test_nothing_private_is_logged_by_default(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    secret = "my card is 4111 1111 1111 1111 and the zebra sleeps"
    with caplog.at_level(logging.DEBUG):
        body = chat(client, [user(secret)], max_tokens=8, temperature=0)
    reply = body["choices"][0]["message"]["content"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "zebra" not in logged and "4111" not in logged
    assert not reply.strip() or reply.strip() not in logged


def test_log_content_logs_scrubbed_text_only(
    serve_settings: Settings, service: TwinService, caplog: pytest.LogCaptureFixture
) -> None:
    settings = serve_settings.model_copy(update={"log_content": True})
    with TestClient(create_app(settings, service)) as client, caplog.at_level(logging.INFO):
        chat(client, [user("mail me at anna.k@example.com about the zebra")], max_tokens=4)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "zebra" in logged and "<EMAIL>" in logged and "anna.k@example.com" not in logged


def test_not_ready_and_failed_models_answer_503(
    tiny_checkpoint: Path, lora_path: Path, tmp_path: Path
) -> None:
    settings = make_settings(tiny_checkpoint, lora_path)
    idle = build_service(settings)  # engine never started: still "loading"
    with TestClient(create_app(settings, idle)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        r = client.post(CHAT, json={"messages": [user("hi")]})
        assert r.status_code == 503 and "not ready" in r.json()["detail"] and r.headers["retry-after"] == "2"
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "hyperparameters.yaml").write_text((lora_path.parent / "hyperparameters.yaml").read_text())
    broken = make_settings(tiny_checkpoint, tmp_path / "broken.pth")
    with TestClient(create_app(broken)) as client:  # the app owns (starts and stops) this engine
        service: TwinService = client.app.state.service  # type: ignore[attr-defined]
        service.engine.wait_ready(60)
        health = client.get("/health").json()
        assert health["status"] == "failed" and health["load_error"]
        assert client.post(CHAT, json={"messages": [user("hi")]}).status_code == 503


def test_queue_timeout_is_503_with_retry_after(serve_settings: Settings, service: TwinService) -> None:
    settings = serve_settings.model_copy(update={"request_timeout": 1e-9, "retry_after": 7})
    with TestClient(create_app(settings, service)) as client:
        r = client.post(CHAT, json={"messages": [user("hi")], "stream": True})
    assert r.status_code == 503 and r.headers["retry-after"] == "7" and "timed out" in r.json()["detail"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/health", "/v1/models", "/v1/chat/completions"} <= set(spec["paths"])
    post = spec["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert {"400", "401", "413", "422", "503"} <= set(post["responses"])
