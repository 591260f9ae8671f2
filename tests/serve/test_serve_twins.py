"""Several twins on one base in one server (TWIN_TWINS, TWIN_MAX_TWINS, /v1/admin/twins), on the real tiny
model: the request's `model` picks the twin and each twin answers exactly as a one-twin server with its
adapter merged; the admin endpoints add and remove twins (while another twin streams), refuse what cannot
be served with a 4xx a person can act on, and need TWIN_ADMIN_KEY; settings refuse impossible twin setups.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from serve_helpers import ADAPTER_FILE, make_adapter, make_settings, user, uvicorn_in_thread

from finetune.twin import HPARAMS_FILE, TwinError
from serve.app import create_app
from serve.runner import Runner
from serve.service import TwinService, build_service
from serve.settings import Settings

CHAT = "/v1/chat/completions"
TWINS = "/v1/admin/twins"
API_KEY = "api-key-for-chats"
ADMIN_KEY = "admin-key-for-twins"
AS_CLIENT = {"Authorization": f"Bearer {API_KEY}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAX_TWINS = 3
MESSAGES = [
    [user("Are you free on friday?", name="Anna")],
    [user("hey"), {"role": "assistant", "content": "hi!"}, user("want to grab sushi later?", name="Boris")],
]
MAX_TOKENS = 16
ADAPTER_SCALE = 0.3
"""Large enough that two random adapters' greedy replies part ways on the tiny model."""


@dataclass(frozen=True)
class Adapters:
    alice: Path
    bob: Path
    carol: Path
    dave: Path


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    """Four random adapters of the tiny base without an adapted head (the twins share the base's head)."""
    root = tmp_path_factory.mktemp("twins")
    made = {
        name: make_adapter(tiny_checkpoint, root / name, seed=seed, scale=ADAPTER_SCALE, head=False).parent
        for seed, name in enumerate(("alice", "bob", "carol", "dave"), start=1)
    }
    return Adapters(**made)


def started(settings: Settings) -> TwinService:
    service = build_service(settings)
    service.engine.start()
    assert service.engine.wait_ready(timeout=120), service.engine.load_error
    return service


@pytest.fixture(scope="module")
def multi(tiny_checkpoint: Path, adapters: Adapters) -> Iterator[tuple[Settings, TwinService]]:
    """One server of several twins: alice's adapter as TWIN_MODEL_NAME's "twin", bob's from TWIN_TWINS;
    room for one more; API and admin keys set."""
    settings = make_settings(
        tiny_checkpoint, adapters.alice, twins={"bob": adapters.bob}, max_twins=MAX_TWINS,
        api_key=API_KEY, admin_key=ADMIN_KEY,
    )  # fmt: skip
    service = started(settings)
    yield settings, service
    service.engine.stop()


@pytest.fixture(scope="module")
def client(multi: tuple[Settings, TwinService]) -> Iterator[TestClient]:
    with TestClient(create_app(*multi)) as client:
        yield client


@pytest.fixture(scope="module")
def alone(tiny_checkpoint: Path, adapters: Adapters) -> Iterator[dict[str, TestClient]]:
    """One-twin servers (TWIN_MAX_TWINS=0: the adapter merged into the base, no admin key) of alice's
    adapter as "twin" and of bob's as "bob", by twin name."""
    served: dict[str, tuple[Settings, TwinService]] = {}
    try:
        for name, path in (("twin", adapters.alice), ("bob", adapters.bob)):
            settings = make_settings(tiny_checkpoint, path, max_twins=0, model_name=name)
            served[name] = (settings, started(settings))
        with TestClient(create_app(*served["twin"])) as a, TestClient(create_app(*served["bob"])) as b:
            yield {"twin": a, "bob": b}
    finally:
        for _, service in served.values():
            service.engine.stop()


def reply(client: TestClient, messages: list[dict[str, Any]], model: str | None, **params: Any) -> dict:
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, **params}
    if model is not None:
        body["model"] = model
    r = client.post(CHAT, json=body, headers=AS_CLIENT)
    assert r.status_code == 200, r.text
    return r.json()


def text(completion: dict) -> str:
    return str(completion["choices"][0]["message"]["content"])


def model_ids(client: TestClient) -> list[str]:
    r = client.get("/v1/models", headers=AS_CLIENT)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def add(client: TestClient, name: str, adapter: Path | str) -> Any:  # the TestClient's response
    return client.post(TWINS, json={"name": name, "adapter": str(adapter)}, headers=AS_ADMIN)


# ---- routing -----------------------------------------------------------------------------------------


def test_models_and_health_list_every_twin(client: TestClient) -> None:
    assert model_ids(client) == ["twin", "bob"]  # by twin slot
    health = client.get("/health").json()
    assert health["ready"] is True and health["twins"] == ["bob", "twin"]
    assert health["max_twins"] == MAX_TWINS
    cards = client.get(TWINS, headers=AS_ADMIN).json()
    assert cards["max_twins"] == MAX_TWINS
    assert {c["id"]: (c["adapter"], c["lora_rank"]) for c in cards["data"]} == {
        "twin": (cards["data"][0]["adapter"], 4),
        "bob": (cards["data"][1]["adapter"], 4),
    }


def test_each_twin_answers_as_its_adapter_merged_alone(
    client: TestClient, alone: dict[str, TestClient]
) -> None:
    for messages in MESSAGES:
        replies = {}
        for name in ("twin", "bob"):
            multi = reply(client, messages, name)
            assert multi["model"] == name
            single = reply(alone[name], messages, name)
            assert text(multi) == text(single), (name, messages)
            assert multi["choices"][0]["finish_reason"] == single["choices"][0]["finish_reason"]
            assert multi["usage"] == single["usage"]
            replies[name] = text(multi)
        assert replies["twin"] != replies["bob"], "two adapters should not give the same greedy reply"


def test_omitted_model_is_the_default_twin(client: TestClient) -> None:
    default = reply(client, MESSAGES[0], None)
    assert default["model"] == "twin"
    assert text(default) == text(reply(client, MESSAGES[0], "twin"))


def test_batched_twins_answer_as_each_alone(client: TestClient) -> None:
    """Requests of different twins decoding in the same steps get what each gets alone."""
    expected = {name: text(reply(client, MESSAGES[1], name)) for name in ("twin", "bob")}
    results: dict[str, str] = {}

    def ask(name: str) -> None:
        results[name] = text(reply(client, MESSAGES[1], name))

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("twin", "bob", "twin", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected


def test_unknown_model_is_404_naming_the_twins(client: TestClient) -> None:
    r = client.post(CHAT, json={"model": "gpt-4o", "messages": MESSAGES[0]}, headers=AS_CLIENT)
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "'gpt-4o'" in detail and "'bob'" in detail and "'twin'" in detail and "/v1/models" in detail


# ---- admin: who may ----------------------------------------------------------------------------------


def test_admin_needs_the_admin_key(client: TestClient, adapters: Adapters) -> None:
    body = {"name": "carol", "adapter": str(adapters.carol)}
    for headers in ({}, {"Authorization": "Bearer wrong"}, AS_CLIENT, {"Authorization": ADMIN_KEY}):
        for r in (
            client.get(TWINS, headers=headers),
            client.post(TWINS, json=body, headers=headers),
            client.delete(f"{TWINS}/bob", headers=headers),
        ):
            assert r.status_code == 401, (headers, r.text)
            assert "TWIN_ADMIN_KEY" in r.json()["detail"] and r.headers["WWW-Authenticate"] == "Bearer"
    assert model_ids(client) == ["twin", "bob"]  # nothing was added or removed


def test_a_one_twin_server_has_admin_off(alone: dict[str, TestClient], adapters: Adapters) -> None:
    r = alone["twin"].post(TWINS, json={"name": "carol", "adapter": str(adapters.carol)}, headers=AS_ADMIN)
    assert r.status_code == 401
    assert "admin endpoints are off" in r.json()["detail"]
    assert "TWIN_ADMIN_KEY" in r.json()["detail"]
    assert alone["twin"].get(TWINS).status_code == 401
    assert model_ids(alone["twin"]) == ["twin"]


# ---- admin: adding and removing ---------------------------------------------------------------------


def test_add_chat_and_remove_a_twin(client: TestClient, adapters: Adapters) -> None:
    r = add(client, "carol", adapters.carol)
    assert r.status_code == 201, r.text
    card = r.json()
    assert card["id"] == "carol" and card["adapter"] == str(adapters.carol) and card["lora_rank"] == 4
    assert "carol" in model_ids(client)
    carol = reply(client, MESSAGES[0], "carol")
    assert carol["model"] == "carol"
    assert text(carol) != text(reply(client, MESSAGES[0], "bob"))  # its own adapter, not a neighbour's

    again = add(client, "carol", adapters.dave)
    assert again.status_code == 409 and "'carol' exists" in again.json()["detail"]

    gone = client.delete(f"{TWINS}/carol", headers=AS_ADMIN)
    assert gone.status_code == 200 and gone.json()["id"] == "carol"
    assert "carol" not in model_ids(client)
    after = client.post(CHAT, json={"model": "carol", "messages": MESSAGES[0]}, headers=AS_CLIENT)
    assert after.status_code == 404 and "'carol' does not exist" in after.json()["detail"]
    unknown = client.delete(f"{TWINS}/carol", headers=AS_ADMIN)
    assert unknown.status_code == 404 and "'bob'" in unknown.json()["detail"]


def test_a_re_added_twin_answers_as_before(client: TestClient, adapters: Adapters) -> None:
    """Removing a twin and adding another into its slot leaves no trace of the first."""
    assert add(client, "carol", adapters.carol).status_code == 201
    first = text(reply(client, MESSAGES[1], "carol"))
    assert client.delete(f"{TWINS}/carol", headers=AS_ADMIN).status_code == 200
    assert add(client, "dave", adapters.dave).status_code == 201
    dave = text(reply(client, MESSAGES[1], "dave"))
    assert client.delete(f"{TWINS}/dave", headers=AS_ADMIN).status_code == 200
    assert add(client, "carol", adapters.carol).status_code == 201
    assert text(reply(client, MESSAGES[1], "carol")) == first != dave
    assert client.delete(f"{TWINS}/carol", headers=AS_ADMIN).status_code == 200


def test_a_full_server_is_409(client: TestClient, adapters: Adapters) -> None:
    free = MAX_TWINS - len(model_ids(client))
    added = [f"extra-{i}" for i in range(free)]
    try:
        for name in added:
            assert add(client, name, adapters.carol).status_code == 201
        r = add(client, "one-too-many", adapters.dave)
        assert r.status_code == 409
        assert f"all {MAX_TWINS} twin slots are taken" in r.json()["detail"]
        assert "remove a twin first" in r.json()["detail"]
    finally:
        for name in added:
            client.delete(f"{TWINS}/{name}", headers=AS_ADMIN)
    assert model_ids(client) == ["twin", "bob"]


def test_an_adapter_that_is_not_there_is_400(client: TestClient, tmp_path: Path) -> None:
    r = add(client, "ghost", tmp_path / "no-such-twin")
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert str(tmp_path / "no-such-twin") in detail and "train one first" in detail
    assert "ghost" not in model_ids(client)


def test_an_adapter_of_another_base_is_400_naming_both(
    client: TestClient, adapters: Adapters, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    other = tmp_path / "pythia-twin"
    shutil.copytree(adapters.carol, other)
    hparams = yaml.safe_load((other / HPARAMS_FILE).read_text())
    (other / HPARAMS_FILE).write_text(yaml.safe_dump(hparams | {"base_name": "pythia-14m"}))
    r = add(client, "pythia", other)
    assert r.status_code == 400
    detail = r.json()["detail"]
    base = yaml.safe_load((tiny_checkpoint / "model_config.yaml").read_text())["name"]
    assert "'pythia-14m'" in detail and f"{base!r}" in detail, detail
    assert "pythia" not in model_ids(client)


def test_an_adapter_of_other_shapes_is_400(client: TestClient, adapters: Adapters, tmp_path: Path) -> None:
    """Tensors of another width under the same names (a base of the same name but another size)."""
    other = tmp_path / "wide-twin"
    shutil.copytree(adapters.carol, other)
    tensors = torch.load(other / ADAPTER_FILE, weights_only=True)
    wider = {k: torch.randn(v.shape[0], v.shape[1] + 8) if "lora_A" in k else v for k, v in tensors.items()}
    torch.save(wider, other / ADAPTER_FILE)
    r = add(client, "wide", other)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert str(other) in detail and "does not fit" in detail and "another base" in detail, detail
    assert "wide" not in model_ids(client)
    # the server still answers as it did
    assert reply(client, MESSAGES[0], "bob")["model"] == "bob"


def test_an_adapter_with_a_lora_head_is_400(
    client: TestClient, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    headed = make_adapter(tiny_checkpoint, tmp_path / "headed", seed=9, head=True)
    r = add(client, "headed", headed.parent)
    assert r.status_code == 400 and "lora_head" in r.json()["detail"]
    assert "TWIN_MAX_TWINS=0" in r.json()["detail"]


@pytest.mark.parametrize("name", ["bad name", "a" * 65, "../x", "", ".hidden", "x/y"])
def test_bad_twin_names_are_422(client: TestClient, adapters: Adapters, name: str) -> None:
    r = add(client, name, adapters.carol)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "name"
    assert model_ids(client) == ["twin", "bob"]


# ---- admin: adding while another twin streams ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(multi: tuple[Settings, TwinService]) -> Iterator[str]:
    """The multi-twin app behind a real uvicorn on 127.0.0.1 (in a thread, sharing the started engine)."""
    with uvicorn_in_thread(create_app(*multi)) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def worker_paused(service: TwinService, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold the engine's worker between two decode steps until the block ends; yields an event set once
    another `run_in_worker` call (an admin load) has been queued behind the pause."""
    paused, resume, queued = threading.Event(), threading.Event(), threading.Event()
    run_in_worker = service.engine.run_in_worker

    def queue(fn: Callable[[Runner], Any]) -> Future[Any]:
        future = run_in_worker(fn)
        queued.set()
        return future

    def pause(runner: Runner) -> None:
        paused.set()
        resume.wait(timeout=30)

    run_in_worker(pause)
    monkeypatch.setattr(service.engine, "run_in_worker", queue)
    try:
        assert paused.wait(timeout=30)
        yield queued
    finally:
        resume.set()
        monkeypatch.undo()


def stream_until_content(server: str, request: dict[str, Any]) -> Iterator[dict[str, Any] | str]:
    """A streamed chat on the real server: its chunks one by one (parsed; "[DONE]" as it is)."""
    with httpx.stream("POST", f"{server}{CHAT}", json=request, headers=AS_CLIENT, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                yield data if data == "[DONE]" else json.loads(data)


def began(chunks: list[dict[str, Any]]) -> bool:
    return any(c["choices"][0]["delta"].get("content") for c in chunks)


def streamed_reply(chunks: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The streamed text and the finish reasons sent."""
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    return content, [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]


def in_thread(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=fn()))
    thread.start()
    return thread, result


def begin_greedy_stream(
    server: str, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """(request, the rest of its events, its chunks so far): a greedy streamed reply, read until it has
    begun (its first content)."""
    request = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    events = stream_until_content(server, request)
    chunks: list[dict[str, Any]] = []
    while not began(chunks):
        chunks.append(next(events))  # type: ignore[arg-type]
    return request, events, chunks


def test_adding_a_twin_while_another_streams(
    server: str,
    client: TestClient,
    multi: tuple[Settings, TwinService],
    adapters: Adapters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, service = multi
    messages, max_tokens = MESSAGES[1], 48
    quiet = reply(client, messages, "bob", max_tokens=max_tokens)  # nothing else happening
    assert quiet["usage"]["completion_tokens"] >= 8, quiet  # long enough to add dave in its middle
    request, events, chunks = begin_greedy_stream(server, "bob", messages, max_tokens)
    body = {"name": "dave", "adapter": str(adapters.dave)}
    # bob's reply has begun: between two of its decode steps, dave's adapter is loaded
    with worker_paused(service, monkeypatch) as queued:
        assert service.engine.stats()["active"] == 1, "bob's reply ended before dave was added"
        adder, added = in_thread(
            lambda: httpx.post(f"{server}{TWINS}", json=body, headers=AS_ADMIN, timeout=60)
        )
        assert queued.wait(timeout=30)  # read, checked, and its load waiting for the worker
    adder.join(timeout=60)
    rest = list(events)
    assert added["r"].status_code == 201, added["r"].text
    assert rest[-1] == "[DONE]"
    chunks += rest[:-1]
    assert all(c["model"] == "bob" for c in chunks)
    assert streamed_reply(chunks) == (text(quiet), [quiet["choices"][0]["finish_reason"]])
    # dave serves, and bob still answers as before
    assert reply(client, messages, "dave")["model"] == "dave"
    assert text(reply(client, messages, "bob", max_tokens=max_tokens)) == text(quiet)
    assert client.delete(f"{TWINS}/dave", headers=AS_ADMIN).status_code == 200


def test_a_removed_twin_finishes_its_replies_before_its_slot_is_reused(
    server: str,
    client: TestClient,
    multi: tuple[Settings, TwinService],
    adapters: Adapters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, service = multi
    assert model_ids(client) == ["twin", "bob"]  # one slot free
    assert add(client, "carol", adapters.carol).status_code == 201
    messages, max_tokens = MESSAGES[1], 48
    quiet = reply(client, messages, "carol", max_tokens=max_tokens)
    assert quiet["usage"]["completion_tokens"] >= 8, quiet
    request, events, chunks = begin_greedy_stream(server, "carol", messages, max_tokens)
    body = {"name": "dave", "adapter": str(adapters.dave)}
    with worker_paused(service, monkeypatch) as queued:
        assert service.engine.stats()["active"] == 1, "carol's reply ended before she was removed"
        assert client.delete(f"{TWINS}/carol", headers=AS_ADMIN).status_code == 200
        gone = client.post(CHAT, json={**request, "stream": False}, headers=AS_CLIENT)
        assert gone.status_code == 404  # new requests: at once
        # dave would take carol's slot, which her reply still decodes with
        adder, added = in_thread(
            lambda: httpx.post(f"{server}{TWINS}", json=body, headers=AS_ADMIN, timeout=60)
        )
        assert queued.wait(timeout=30)
    adder.join(timeout=60)
    assert added["r"].status_code == 409, added["r"].text
    assert "retry shortly" in added["r"].json()["detail"]
    rest = list(events)
    assert rest[-1] == "[DONE]"
    chunks += rest[:-1]
    assert streamed_reply(chunks) == (text(quiet), [quiet["choices"][0]["finish_reason"]])
    # her reply is done: the slot is free again
    assert add(client, "dave", adapters.dave).status_code == 201
    assert client.delete(f"{TWINS}/dave", headers=AS_ADMIN).status_code == 200


def test_ranks_over_the_limit_are_refused(
    client: TestClient, tiny_checkpoint: Path, adapters: Adapters, tmp_path: Path
) -> None:
    big = make_adapter(tiny_checkpoint, tmp_path / "big", seed=7, head=False, rank=32).parent
    r = add(client, "big", big)  # the server's TWIN_MAX_LORA_RANK: the default 16
    assert r.status_code == 400
    assert "rank 32 exceeds this server's TWIN_MAX_LORA_RANK=16" in r.json()["detail"]
    assert "restart the server with TWIN_MAX_LORA_RANK" in r.json()["detail"]
    assert "big" not in model_ids(client)
    # at start: the twins given set the default; the setting below them is refused
    settings = make_settings(tiny_checkpoint, adapters.alice, twins={"bob": big})
    assert build_service(settings).engine.config.max_lora_rank == 32
    with pytest.raises(TwinError, match="rank 4 exceeds TWIN_MAX_LORA_RANK=2"):
        build_service(
            make_settings(tiny_checkpoint, adapters.alice, twins={"bob": adapters.bob}, max_lora_rank=2)
        )


def test_removing_the_default_twin(client: TestClient, adapters: Adapters) -> None:
    """Without TWIN_MODEL_NAME's twin, a request without `model` is 404; the others still answer."""
    assert client.delete(f"{TWINS}/twin", headers=AS_ADMIN).status_code == 200
    try:
        r = client.post(CHAT, json={"messages": MESSAGES[0]}, headers=AS_CLIENT)
        assert r.status_code == 404 and "'twin' does not exist" in r.json()["detail"]
        assert reply(client, MESSAGES[0], "bob")["model"] == "bob"
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["twins"] == ["bob"]
        assert model_ids(client) == ["bob"]
    finally:
        assert add(client, "twin", adapters.alice).status_code == 201
    assert reply(client, MESSAGES[0], None)["model"] == "twin"


def test_lora_layers_are_those_of_the_twins_given_at_start(
    tiny_checkpoint: Path, adapters: Adapters, tmp_path: Path
) -> None:
    """Twins adapting q and v only: the server holds those layers (no work for the others), refuses a
    twin adapting more with 400 naming TWIN_LORA_LAYERS, and serves it when the setting lists them."""
    only_qv = {"lora_key": False, "lora_projection": False, "lora_mlp": False}
    qv1, qv2 = (
        make_adapter(tiny_checkpoint, tmp_path / name, seed=seed, scale=ADAPTER_SCALE, head=False, **only_qv)
        for name, seed in (("qv1", 11), ("qv2", 12))
    )
    settings = make_settings(
        tiny_checkpoint, qv1.parent, twins={"qv2": qv2.parent}, max_twins=3, api_key=API_KEY,
        admin_key=ADMIN_KEY,
    )  # fmt: skip
    service = started(settings)
    try:
        assert service.engine.config.lora_layers == ("query", "value")
        with TestClient(create_app(settings, service)) as client:
            assert reply(client, MESSAGES[0], "qv2")["model"] == "qv2"
            r = add(client, "bob", adapters.bob)  # q, k, v, the projection and the MLP
            assert r.status_code == 400
            assert "adapts the LoRA layers key, mlp, projection" in r.json()["detail"]
            assert "TWIN_LORA_LAYERS" in r.json()["detail"]
            assert "bob" not in model_ids(client)
    finally:
        service.engine.stop()
    # none given: every layer; the setting chooses, and refuses a twin given at start that needs more
    bare = build_service(make_settings(tiny_checkpoint, None, admin_key=ADMIN_KEY))
    assert bare.engine.config.lora_layers == ("query", "key", "value", "projection", "mlp")
    wide = make_settings(tiny_checkpoint, qv1.parent, twins={"bob": adapters.bob}, lora_layers=["mlp"])
    with pytest.raises(
        TwinError, match="qv1 adapts the LoRA layers query, value.*list query, value in TWIN_LORA"
    ):
        build_service(wide)
    with pytest.raises(ValidationError, match="lora_layers"):
        make_settings(tiny_checkpoint, qv1.parent, lora_layers=["attention"])


# ---- settings ----------------------------------------------------------------------------------------


def test_lora_layer_names_are_finetunes_switches() -> None:
    """One set of names: the setting's choices, the engine's and finetune's LoRA flags (the head aside)."""
    import typing

    from finetune.twin import LORA_TARGETS
    from serve.engine_config import LORA_LAYERS
    from serve.settings import LoraLayer

    assert typing.get_args(LoraLayer) == LORA_LAYERS
    assert tuple(f"lora_{name}" for name in LORA_LAYERS) == tuple(t for t in LORA_TARGETS if t != "lora_head")


def test_lora_layers_read_as_a_comma_list_or_json(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.cli import parse_settings

    ck = ["--checkpoint-dir", str(tiny_checkpoint)]
    monkeypatch.setenv("TWIN_LORA_LAYERS", "query, value")
    assert parse_settings(Settings, ck, prog="serve").lora_layers == ["query", "value"]
    monkeypatch.setenv("TWIN_LORA_LAYERS", '["mlp"]')
    assert parse_settings(Settings, ck, prog="serve").lora_layers == ["mlp"]
    assert parse_settings(Settings, [*ck, "--lora-layers", "key,mlp"], prog="serve").lora_layers == [
        "key",
        "mlp",
    ]
    for argv, env, said in (
        ([*ck, "--lora-layers", "attn"], "query", "--lora-layers: 'attn' is not a list of query, key, value"),
        (
            ck,
            "query,attn",
            "TWIN_LORA_LAYERS: Input should be 'query', 'key', 'value', 'projection' or 'mlp'",
        ),
    ):
        monkeypatch.setenv("TWIN_LORA_LAYERS", env)
        with pytest.raises(SystemExit):
            parse_settings(Settings, argv, prog="serve")
        assert said in capsys.readouterr().err


def test_settings_refuse_impossible_twin_setups(tiny_checkpoint: Path, adapters: Adapters) -> None:
    with pytest.raises(ValidationError, match=r"TWIN_TWINS names \['bad name'\]: use 1-64 letters"):
        make_settings(tiny_checkpoint, adapters.alice, twins={"bad name": adapters.bob})
    with pytest.raises(ValidationError, match="which is TWIN_MODEL_NAME.*rename one"):
        make_settings(tiny_checkpoint, adapters.alice, twins={"twin": adapters.bob})
    with pytest.raises(ValidationError, match="3 twins given.*TWIN_MAX_TWINS=2: raise TWIN_MAX_TWINS"):
        make_settings(
            tiny_checkpoint, adapters.alice, twins={"bob": adapters.bob, "carol": adapters.carol}, max_twins=2
        )
    with pytest.raises(ValidationError, match="TWIN_MAX_TWINS=1: raise TWIN_MAX_TWINS"):
        make_settings(
            tiny_checkpoint, None, twins={"bob": adapters.bob, "carol": adapters.carol}, max_twins=1
        )
    with pytest.raises(ValidationError, match="not --quantize nf4.*TWIN_MAX_TWINS=0"):
        make_settings(tiny_checkpoint, adapters.alice, max_twins=2, quantize="nf4")
    with pytest.raises(ValidationError, match="not --quantize nf4"):
        make_settings(tiny_checkpoint, adapters.alice, twins={"bob": adapters.bob}, quantize="nf4")
    # what is possible: the default room with TWIN_TWINS or an admin key, none without
    assert make_settings(tiny_checkpoint, adapters.alice, twins={"bob": adapters.bob}).twin_slots() == 8
    assert make_settings(tiny_checkpoint, None, admin_key=ADMIN_KEY).twin_slots() == 8
    assert make_settings(tiny_checkpoint, adapters.alice).twin_slots() == 0
    assert make_settings(tiny_checkpoint, adapters.alice, max_twins=0, quantize="nf4").twin_slots() == 0
