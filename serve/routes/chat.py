"""`POST /v1/chat/completions`: OpenAI's chat completions, plain or streamed (Server-Sent Events).

The request's `model` picks the twin (`serve.twins`; none: TWIN_MODEL_NAME's). The prompt is its
`Prompter.prompt_from_messages` in its adapter's prompt format (with the past
exchanges its memory retrieves for the chat, when the twin has one), tokenized as training tokenized it
(identical to training); generation runs in the engine's worker, which ends a reply
at the end of the person's turn (EOS, or the chat template's end-of-turn token); text, stop strings and the
HTTP shapes are done here. A client that goes away cancels its
generation (its slot is free for the next request before the next decode step).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from common.scrub import scrub_secrets
from prepare.prompt import MAX_CONTEXT_TURNS
from serve.deps import API_PREFIX, ServiceDep, SettingsDep, require_api_key, require_json
from serve.engine import (
    EndReason,
    EngineBusy,
    EngineError,
    EngineNotReady,
    EngineStopped,
    GenerationRequest,
    Sequence,
)
from serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorResponse,
    FinishReason,
    Usage,
)
from serve.service import TwinService, UnknownTwin
from serve.settings import Settings
from serve.text import TextStream
from serve.twins import Twin

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTEXT_TURNS_TRIED = (MAX_CONTEXT_TURNS, 4, 2, 1, 0)
"""Earlier turns kept as context, most first, until the prompt fits TWIN_MAX_INPUT_TOKENS."""
LONG_PROMPT_CHARS = 20_000
"""Prompts longer than this are tokenized in a thread, not on the event loop."""

router = APIRouter(prefix=API_PREFIX, tags=["chat"], dependencies=[Depends(require_api_key)])


@dataclass
class Plan:
    """A validated request, ready for the engine."""

    twin: Twin
    prompt: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]


class ClientGone(Exception):
    pass


def error(code: int, detail: str, retry_after: int | None = None) -> HTTPException:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return HTTPException(code, detail=detail, headers=headers)


async def plan_generation(body: ChatCompletionRequest, service: TwinService, settings: Settings) -> Plan:
    """Check what the schema cannot (model, server limits, chat shape); render and tokenize the prompt."""
    limits = service.limits
    try:
        twin = service.twin(body.model)  # None: the default twin
    except UnknownTwin as e:
        raise error(status.HTTP_404_NOT_FOUND, str(e)) from e
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_new_tokens:
        asked = max_tokens if max_tokens < 10**15 else f"of {len(str(max_tokens))} digits"
        raise error(
            status.HTTP_400_BAD_REQUEST,
            f"max_tokens {asked} exceeds this server's cap of {limits.max_new_tokens} "
            "(TWIN_MAX_NEW_TOKENS): ask for fewer",
        )
    messages = [{"role": m.role, "content": m.text(), "name": m.name} for m in body.messages]
    try:
        memories = twin.recall(messages)  # the person's past exchanges, when the twin has a memory
    except ValueError as e:  # a malformed chat
        raise error(status.HTTP_400_BAD_REQUEST, str(e)) from e
    # the prompt module keeps the last MAX_CONTEXT_TURNS turns; if that is over the token limit, fewer,
    # and at last none and no memories
    attempts = [(turns, memories) for turns in CONTEXT_TURNS_TRIED] + ([(0, [])] if memories else [])
    for turns, shown in attempts:
        try:
            prompt = twin.prompter.prompt_from_messages(messages, max_turns=turns, memories=shown)
        except ValueError as e:  # a malformed chat, or one the chat template refuses
            raise error(status.HTTP_400_BAD_REQUEST, str(e)) from e
        if len(prompt) > LONG_PROMPT_CHARS:
            ids = await asyncio.to_thread(service.encode, prompt, twin)
        else:
            ids = service.encode(prompt, twin)
        if len(ids) <= limits.max_input_tokens:
            break
    else:
        raise error(
            status.HTTP_400_BAD_REQUEST,
            f"the last message alone renders to a {len(ids)}-token prompt; this server accepts at most "
            f"{limits.max_input_tokens} (TWIN_MAX_INPUT_TOKENS): send a shorter message",
        )
    return Plan(
        twin=twin,
        prompt=prompt,
        prompt_ids=ids,
        max_tokens=max_tokens,
        temperature=settings.default_temperature if body.temperature is None else body.temperature,
        top_p=settings.default_top_p if body.top_p is None else body.top_p,
        stop=[*body.stop_list(), *twin.stop],
    )


def submit(service: TwinService, settings: Settings, plan: Plan) -> Sequence:
    request = GenerationRequest(
        prompt_ids=plan.prompt_ids,
        max_new_tokens=plan.max_tokens,
        temperature=plan.temperature,
        top_p=plan.top_p,
        timeout_s=settings.request_timeout,
        twin=plan.twin.slot,
        eos_ids=frozenset(plan.twin.stop_ids),
    )
    retry = settings.retry_after
    if not service.serves(plan.twin):  # removed while its prompt was being built: its slot may be reused
        raise error(status.HTTP_404_NOT_FOUND, f"model {plan.twin.name!r} was removed (see GET /v1/models)")
    try:
        return service.engine.submit(request)
    except EngineNotReady as e:
        raise error(status.HTTP_503_SERVICE_UNAVAILABLE, f"the model is not ready: {e}", retry) from e
    except EngineBusy as e:
        raise error(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"server busy: {e}; retry in {retry} s", retry
        ) from e
    except ValueError as e:
        raise error(status.HTTP_400_BAD_REQUEST, str(e)) from e


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(work: Awaitable[T], request: Request) -> T:
    """Await `work`, or raise ClientGone (cancelling `work`) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone


def engine_failure(e: Exception, settings: Settings) -> HTTPException:
    """What a request that failed in the engine before its answer began gets (a stream that began ends
    with OpenAI's error object instead)."""
    retry = settings.retry_after
    if isinstance(e, EngineBusy):  # waited longer than the request timeout for a slot
        return error(status.HTTP_503_SERVICE_UNAVAILABLE, f"server busy: {e}; retry in {retry} s", retry)
    if isinstance(e, EngineStopped):  # the server is going away: the request itself was fine
        return error(status.HTTP_503_SERVICE_UNAVAILABLE, f"{e}; retry in {retry} s", retry)
    return error(status.HTTP_500_INTERNAL_SERVER_ERROR, str(e))


def openai_finish_reason(end: EndReason | None, stopped_by_text: bool) -> FinishReason:
    """The engine's end reason as OpenAI's finish_reason: "stop" when the reply ended itself (the
    end-of-sequence token, or a stop string found in the text, maybe before the engine ended the
    sequence), "length" when a cap cut it (the engine's "length" and "timeout"). The other end reasons
    never make a reply: the client is gone, or `tokens()` raised."""
    if stopped_by_text or end in ("stop", "stop_string"):
        return "stop"
    return "length"


def log_exchange(settings: Settings, completion_id: str, prompt: str, reply: str) -> None:
    """Only with TWIN_LOG_CONTENT=true, and scrubbed of secrets even then."""
    if settings.log_content:
        log.info("%s prompt=%r reply=%r", completion_id, scrub_secrets(prompt), scrub_secrets(reply))


def chunk_json(chunk: ChatCompletionChunk, with_usage: bool) -> str:
    """A stream chunk as its `data:` line; `usage` only with `stream_options.include_usage` (as OpenAI)."""
    return json.dumps(chunk.model_dump(exclude=None if with_usage else {"usage"}), ensure_ascii=False)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    dependencies=[Depends(require_json)],
    responses={
        200: {
            "description": "the reply; with `stream: true` an event stream of chat.completion.chunk objects",
            "content": {"text/event-stream": {"schema": ChatCompletionChunk.model_json_schema()}},
        },
        400: {"model": ErrorResponse, "description": "a request the server cannot serve (see detail)"},
        401: {"model": ErrorResponse, "description": "missing or wrong API key"},
        404: {"model": ErrorResponse, "description": "unknown model"},
        408: {"model": ErrorResponse, "description": "the body did not arrive in time (TWIN_BODY_TIMEOUT)"},
        413: {"model": ErrorResponse, "description": "request body too large"},
        415: {"model": ErrorResponse, "description": "the body is not sent as application/json"},
        422: {"model": ErrorResponse, "description": "malformed JSON, wrong field types, a limit broken"},
        503: {
            "model": ErrorResponse,
            "description": "loading, busy or shutting down: retry after Retry-After seconds",
        },
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> ChatCompletion | Response:
    """The twin's reply to the last `user` message, in your voice."""
    plan = await plan_generation(body, service, settings)
    seq = submit(service, settings, plan)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    text = TextStream(service.tokenizer, plan.prompt_ids, plan.stop)
    tokens = seq.tokens()
    try:
        # wait for the first token (or a failure) before answering, so errors still get a status code
        first = await until_disconnected(anext(tokens, None), request)
    except ClientGone:
        seq.cancel()
        return Response(status_code=499)
    except (EngineBusy, EngineError) as e:
        raise engine_failure(e, settings) from e
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = stream_events(settings, seq, tokens, first, text, completion_id, plan, include_usage)
        return EventSourceResponse(events, sep="\n", ping=15)
    try:
        await until_disconnected(collect(seq, tokens, first, text), request)
    except ClientGone:
        seq.cancel()
        return Response(status_code=499)
    except (EngineBusy, EngineError) as e:
        raise engine_failure(e, settings) from e
    log_exchange(settings, completion_id, plan.prompt, text.text)
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=plan.twin.name,
        choices=[
            Choice(
                message=AssistantMessage(content=text.text),
                finish_reason=openai_finish_reason(seq.end_reason, text.stopped),
            )
        ],
        usage=Usage(
            prompt_tokens=len(plan.prompt_ids),
            completion_tokens=text.n_tokens,
            total_tokens=len(plan.prompt_ids) + text.n_tokens,
        ),
    )


async def collect(
    seq: Sequence, tokens: AsyncIterator[list[int]], first: list[int] | None, text: TextStream
) -> None:
    if first is not None:
        text.push(first)
    if not text.stopped and first is not None:
        async for ids in tokens:
            text.push(ids)
            if text.stopped:
                break
    seq.cancel(stop_string=text.stopped)  # free the slot now (no-op when the engine has finished)
    text.flush()


async def stream_events(
    settings: Settings,
    seq: Sequence,
    tokens: AsyncIterator[list[int]],
    first: list[int] | None,
    text: TextStream,
    completion_id: str,
    plan: Plan,
    include_usage: bool,
) -> AsyncIterator[dict[str, str]]:
    created, model = int(time.time()), plan.twin.name

    def event(delta: Delta, finish: FinishReason | None = None) -> dict[str, str]:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[choice])
        return {"data": chunk_json(chunk, include_usage)}

    try:
        yield event(Delta(role="assistant", content=""))
        if first is not None:
            if delta := text.push(first):
                yield event(Delta(content=delta))
            if not text.stopped:
                async for ids in tokens:
                    if delta := text.push(ids):
                        yield event(Delta(content=delta))
                    if text.stopped:
                        break
        seq.cancel(stop_string=text.stopped)
        if tail := text.flush():
            yield event(Delta(content=tail))
        yield event(Delta(), openai_finish_reason(seq.end_reason, text.stopped))
        if include_usage:
            n_prompt = len(plan.prompt_ids)
            usage = Usage(
                prompt_tokens=n_prompt, completion_tokens=text.n_tokens, total_tokens=n_prompt + text.n_tokens
            )
            totals = ChatCompletionChunk(
                id=completion_id, created=created, model=model, choices=[], usage=usage
            )
            yield {"data": chunk_json(totals, with_usage=True)}
        yield {"data": "[DONE]"}
        log_exchange(settings, completion_id, plan.prompt, text.text)
    except (EngineBusy, EngineError) as e:  # after a 200: the stream ends with OpenAI's error object
        failure = ErrorBody(message=str(e) or "generation failed", type="server_error")
        yield {"data": json.dumps({"error": failure.model_dump()}, ensure_ascii=False)}
    finally:
        seq.cancel()  # the client went away (or we are done): free the slot
