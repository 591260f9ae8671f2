"""Request and response schemas of the HTTP API: OpenAI's chat-completions shapes (the parts twin serves).

Requests are strict (no "5" for 5) and ignore fields twin does not use (`presence_penalty`, `seed`, ...),
so stock OpenAI clients work unchanged; the OpenAI fields it knows are type-checked all the same. What
would change the reply's shape and cannot be served (tools, JSON mode, log probabilities, audio) is
refused with a 422 naming the field, never silently dropped. `assistant` turns are the person (the twin's
own voice), `user` turns the chat partner, whose name may come in `name`; a `developer` turn is OpenAI's
newer name for a `system` one.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

FinishReason = Literal["stop", "length"]
"""OpenAI's finish_reason: "stop", the reply ended itself (end of sequence or a stop string); "length",
a cap cut it (max_tokens or the request timeout). `serve.routes.chat` maps the engine's end reasons."""


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (as JSON Schema says); 5.5 and "5" stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeNumber = Annotated[int, BeforeValidator(_integral)]


UNPAIRED_SURROGATE = "holds an unpaired surrogate (\\ud800-\\udfff): not valid Unicode, send UTF-8 text"


def unpaired_surrogate(text: str) -> bool:
    """JSON may carry "\\ud800" (half a surrogate pair): that is no text, and no tokenizer takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant"] = Field(
        description="'user': the chat partner; 'assistant': you (the twin); 'system' ('developer'): ignored"
    )
    content: str | list[TextPart] | None = Field(None, description="the message text (or OpenAI text parts)")
    name: Annotated[str, Field(max_length=128)] | None = Field(
        None, description="on 'user' messages: the partner's name, as the prompt calls them"
    )

    @field_validator("role", mode="before")
    @classmethod
    def _developer_is_system(cls, value: Any) -> Any:
        return "system" if value == "developer" else value

    @field_validator("content")
    @classmethod
    def _valid_unicode(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        texts = [part.text for part in value] if isinstance(value, list) else [value or ""]
        if any(unpaired_surrogate(text) for text in texts):
            raise ValueError(UNPAIRED_SURROGATE)
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
MAX_TOP_LOGPROBS = 20
"""OpenAI's bound on top_logprobs."""
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
TOKEN_ID = re.compile(r"[0-9]{1,12}")


def unsupported(value: Any, served: tuple[Any, ...], what: str) -> Any:
    """`value` when it is absent or one of the `served` values (which ask for nothing twin cannot do),
    else the ValueError `what`: dropping it silently would hand the client a reply of another shape."""
    if value is None or any(type(value) is type(ok) and value == ok for ok in served):
        return value
    raise ValueError(what)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "twin",
                    "messages": [
                        {"role": "user", "name": "Anna", "content": "Are you free on friday?"},
                    ],
                    "max_tokens": 64,
                    "temperature": 0.8,
                }
            ]
        },
    )

    model: str | None = Field(None, description="the served model's id (GET /v1/models); optional")
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=512, description="the chat so far, oldest first"
    )
    max_tokens: WholeNumber | None = Field(
        None, ge=1, description="reply length cap in tokens (server caps it too)"
    )
    max_completion_tokens: WholeNumber | None = Field(
        None, ge=1, description="newer name of max_tokens; wins if both"
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description="0: greedy")
    top_p: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="nucleus sampling mass"
    )
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} strings that end the reply (not included)"
    )
    stream: bool = Field(False, description="send Server-Sent Events chunks, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    n: WholeNumber = Field(1, ge=1, le=1, description="only 1 choice is supported")
    user: str | None = None
    # OpenAI fields accepted and ignored: type-checked as OpenAI checks them
    seed: WholeNumber | None = Field(None, description="accepted and ignored (sampling is not seeded)")
    presence_penalty: Penalty | None = Field(None, description="accepted and ignored")
    frequency_penalty: Penalty | None = Field(None, description="accepted and ignored")
    logit_bias: dict[str, Any] | None = Field(
        None, description="token id -> bias from -100 to 100; accepted and ignored"
    )
    parallel_tool_calls: bool | None = Field(None, description="accepted and ignored (no tools)")
    # OpenAI fields twin cannot serve: refused unless they ask for nothing
    logprobs: bool | None = Field(None, description="not supported: false or absent")
    top_logprobs: WholeNumber | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="not supported: 0 or absent"
    )
    tools: list[Any] | None = Field(None, description="not supported: empty or absent")
    tool_choice: Any = Field(None, description="not supported: 'none', 'auto' or absent (no tools)")
    functions: list[Any] | None = Field(None, description="not supported: empty or absent")
    function_call: Any = Field(None, description="not supported: 'none', 'auto' or absent")
    response_format: dict[str, Any] | None = Field(
        None, description="only {'type': 'text'}: JSON mode and JSON schemas are not supported"
    )
    modalities: list[str] | None = Field(None, description="only ['text']")
    audio: dict[str, Any] | None = Field(None, description="not supported: absent")

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked as OpenAI checks it; the message names no key (a client's key could be anything)."""
        for token, bias in (value or {}).items():
            number = isinstance(bias, int | float) and not isinstance(bias, bool)
            if not (TOKEN_ID.fullmatch(token) and number and -100 <= bias <= 100):
                raise ValueError("a map of token ids (digits) to numbers from -100 to 100")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        return unsupported(
            value, (False, 0), "log probabilities are not supported: leave it out (or false / 0)"
        )

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        return unsupported(
            value, ([],), "tool and function calling are not supported: the twin replies in text"
        )

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        return unsupported(
            value, ("none", "auto"), "tool and function calling are not supported: 'none', 'auto' or absent"
        )

    @field_validator("response_format")
    @classmethod
    def _text_only_format(cls, value: Any) -> Any:
        text = isinstance(value, dict) and value.get("type") == "text"
        return unsupported(
            value,
            (value,) if text else (),
            "only {'type': 'text'}: JSON mode and JSON schemas are not supported",
        )

    @field_validator("modalities")
    @classmethod
    def _text_only_modalities(cls, value: Any) -> Any:
        return unsupported(value, (["text"], []), "only ['text']: the twin does not speak (no audio output)")

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, value: Any) -> Any:
        return unsupported(value, (), "audio output is not supported: leave it out")

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop_limits(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Say which limit a `stop` broke (the str-or-list union alone reports "should be a string")."""
        if isinstance(value, list):
            if len(value) > MAX_STOP_STRINGS:
                raise ValueError(f"at most {MAX_STOP_STRINGS} strings, got {len(value)}")
            texts = value
        else:
            texts = [value]
        for text in texts:
            if isinstance(text, str) and not 1 <= len(text) <= MAX_STOP_CHARS:
                raise ValueError(f"each stop string needs 1 to {MAX_STOP_CHARS} characters, got {len(text)}")
            if value is not None and not isinstance(text, str):
                raise ValueError(f"a string or a list of up to {MAX_STOP_STRINGS} strings")
        return handler(value)

    @model_validator(mode="after")
    def _valid_unicode(self) -> ChatCompletionRequest:
        texts = [(f"messages[{i}].content", m.text()) for i, m in enumerate(self.messages)]
        texts += [(f"messages[{i}].name", m.name or "") for i, m in enumerate(self.messages)]
        texts += [("stop", stop) for stop in self.stop_list()]
        for where, text in texts:
            if unpaired_surrogate(text):
                raise ValueError(f"{where} {UNPAIRED_SURROGATE}")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """What a stream chunk adds; only the fields a chunk sets go on the wire (the last chunk's is `{}`)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` line of a stream (`usage` only with `stream_options.include_usage`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "twin"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "failed", "stopped"]
    ready: bool
    model: str
    device: str | None
    dtype: str | None
    compiled: bool
    fused_blocks: int = Field(0, description="blocks running as serve's fused blocks (the rest: litgpt's)")
    triton_kernels: bool = Field(False, description="one-token steps run serve's Triton kernels")
    compile_error: str | None = None
    load_error: str | None = None
    startup_seconds: float | None = Field(None, description="from server start to ready (load + warm-up)")
    compile_seconds: float | None = Field(
        None, description="of start-up: compiling the decode step and recording its CUDA graphs"
    )
    compile_cache_warm: bool | None = Field(
        None,
        description="the compile caches held an earlier start's artifacts (false: this start compiled "
        "from scratch; none: not compiled)",
    )
    max_batch_size: int
    max_input_tokens: int
    max_new_tokens: int
    active: int = Field(description="requests generating now")
    queued: int = Field(description="requests waiting for a slot")
    prefilling: int = Field(0, description="of the active requests, those whose prompt is being prefilled")
    prefill_chunks: int = Field(0, description="prefill chunks since start (each several prompts' tokens)")
    decode_steps: int = Field(description="decode steps since start (each decodes every generating request)")
    tokens_generated: int
    finished: dict[str, int] = Field(
        description="requests ended since start: stop (EOS), stop_string, length, timeout, cancelled "
        "(client gone), queue_timeout, error"
    )
    memory_exchanges: int = Field(0, description="past exchanges in the twin's memory (0: memory off)")
    memory_k: int = Field(0, description="past exchanges retrieved into each prompt (0: memory off)")
    twins: list[str] = Field(default_factory=list, description="the twins served (the ids of GET /v1/models)")
    max_twins: int = Field(0, description="twins the server can hold at once, unmerged (0: one, merged)")


class AddTwin(BaseModel):
    """`POST /v1/admin/twins`: serve another twin of the same base, from its finetune out-dir."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="the twin's model id (letters, digits and . _ : -)",
    )
    adapter: str = Field(
        min_length=1,
        max_length=4096,
        description="its finetune out-dir (or the lit_model_lora_finetuned.pth in it), a path on the server",
    )


class TwinCard(BaseModel):
    """A twin as the admin endpoints report it."""

    id: str
    adapter: str | None = Field(description="its adapter's path on the server (none: the base model)")
    prompt_format: str
    lora_rank: int | None
    memory_exchanges: int
    memory_k: int
    created: int


class TwinList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TwinCard]
    max_twins: int = Field(description="twins the server can hold at once, unmerged (TWIN_MAX_TWINS)")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx: FastAPI's `detail` plus OpenAI's `error` object (what OpenAI clients show)."""

    detail: Any
    error: ErrorBody
