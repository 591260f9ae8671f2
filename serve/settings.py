"""Server settings: one pydantic-settings class; environment variables `TWIN_*` or `python -m serve --flags`.

Every default lives here (the CLI is generated from this class), the engine's (batch size, queue,
compile) taken from `serve.engine_config.EngineConfig`. `get_settings()` builds it once, lazily.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

from common.device import Precision
from common.quantize import Quantize
from serve.engine_config import EngineConfig

LoraLayer = Literal["query", "key", "value", "projection", "mlp"]


def comma_list(value: object) -> object:
    """A comma-separated string ("query,value") as a list; anything else (a JSON list) as it is."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


LoraLayers = Annotated[list[LoraLayer], BeforeValidator(comma_list)]

DEFAULT_CHECKPOINT = Path("checkpoints/tiiuae/falcon-7b")
TWIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""A twin's name (the OpenAI `model` id): letters, digits and . _ : -, at most 64 characters."""


class Settings(BaseSettings):
    """Serve the twin over an OpenAI-compatible HTTP API (every flag is also an env var: TWIN_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="TWIN_",
        env_file=".env",
        extra="ignore",
    )

    checkpoint_dir: Path = Field(
        default=DEFAULT_CHECKPOINT, description="litgpt checkpoint of the base model"
    )
    lora_path: Path | None = Field(
        default=None,
        description="LoRA adapter: finetune's out-dir (out/twin) or the lit_model_lora_finetuned.pth in it; "
        "none: the base model",
    )
    host: str = Field(
        default="127.0.0.1", description="address to bind; beyond loopback only with an API key"
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port")
    api_key: CliSuppress[SecretStr | None] = Field(
        default=None,
        description="clients must send 'Authorization: Bearer <key>' (env TWIN_API_KEY only); "
        "empty or blank: no key (logged as a warning)",
    )
    allow_no_key: bool = Field(
        default=False,
        description="listen beyond loopback without an API key (e.g. behind a proxy that authenticates); "
        "logged as a warning: anyone who reaches the port can chat as you",
    )
    model_name: str = Field(
        default="twin", min_length=1, description="the model id clients ask for (TWIN_LORA_PATH's twin)"
    )
    twins: dict[str, Path] = Field(
        default_factory=dict,
        description='more twins on the same base, each under its own model id: a JSON map {"name": '
        '"out/alice", ...} of finetune out-dirs (served unmerged beside TWIN_LORA_PATH\'s)',
    )
    max_twins: int | None = Field(
        default=None,
        ge=0,
        le=256,
        description="twins held at once on one base, unmerged, each request's model picking one; "
        "default: 8 with TWIN_TWINS or TWIN_ADMIN_KEY, else 0 (one twin, merged into the base: the fastest)",
    )
    max_lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="the largest LoRA rank a twin may have when several are served (memory is reserved "
        "for it per twin); default: 16, or the largest rank of the twins given at start",
    )
    lora_layers: LoraLayers | None = Field(
        default=None,
        description="the LoRA layers several twins may adapt (a list of query, key, value, projection, "
        "mlp: query,value or JSON); layers none of them adapts cost the decode step nothing; default: "
        "those of the twins given at start, all of them with none (a twin added later that adapts more "
        "is refused)",
    )
    admin_key: CliSuppress[SecretStr | None] = Field(
        default=None,
        description="key of the admin endpoints (/v1/admin/twins: add and remove twins while the server "
        "runs), sent as 'Authorization: Bearer <key>' (env TWIN_ADMIN_KEY only); none: admin is off",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the API (JSON list); none: closed"
    )
    log_content: bool = Field(
        default=False, description="log prompts and replies, scrubbed of secrets (off: they are private)"
    )

    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Precision = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU")
    compile: bool | None = Field(
        default=EngineConfig.compile,
        description="compile the decode step (CUDA graphs); default: on for CUDA, off on CPU",
    )
    cpu_threads: int | None = Field(
        default=None, ge=1, description="torch threads when serving on a CPU; default: all cores but one"
    )
    quantize: Quantize = Field(
        default="none",
        description="hold the base in 4-bit NF4 (nf4-dq: double-quantized scalers) with the LoRA on top, "
        "unmerged: ~4.5 GB of weights for Falcon-7B instead of 14.4 (needs torchao)",
    )

    max_input_tokens: int = Field(default=1536, ge=1, description="longest prompt (rendered chat) in tokens")
    max_new_tokens: int = Field(default=512, ge=1, description="cap on max_tokens per request")
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens when a request sets none (capped by max_new_tokens)"
    )
    default_temperature: float = Field(default=0.8, ge=0.0, le=2.0, description="when a request sets none")
    default_top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="when a request sets none")
    prefill_tokens: int | None = Field(
        default=EngineConfig.prefill_token_budget,
        ge=1,
        description="prompt tokens prefilled together in one chunk between two decode steps (prompts that "
        "arrive together share chunks, a long one spans several); default: 4096 on a GPU, 512 on a CPU",
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="folder (owner-only) of the compiled decode step's caches, reused by the next start; "
        "default: .compile-cache in the checkpoint folder",
    )
    max_batch_size: int = Field(
        default=EngineConfig.max_batch_size, ge=1, le=1024, description="requests generating at once (slots)"
    )
    max_queue: int = Field(
        default=EngineConfig.max_queue, ge=0, description="requests that may wait for a slot; more: 503"
    )
    request_timeout: float = Field(
        default=120.0, gt=0, description="seconds a request may take, queue included"
    )
    retry_after: int = Field(default=2, ge=1, description="seconds sent in Retry-After with a 503")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="largest request body accepted")
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds a client has to send a request's headers; then 408 and close"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="seconds a client has to send a request's body; then 408 and close"
    )
    keep_alive_timeout: int = Field(
        default=5, ge=1, description="seconds an idle kept-alive connection stays open"
    )
    memory_k: int | None = Field(
        default=None,
        ge=0,
        description="past exchanges of yours (the adapter's memory.jsonl) retrieved into each prompt; "
        "none: as many as the twin was trained with (its memory_k), 0: memory off",
    )
    default_stop: list[str] | None = Field(
        default=None,
        description="stop strings always applied; none: the prompt format's (twin-v1: its next '###' "
        "heading; chat-template: the end-of-turn marker, e.g. <|im_end|>)",
    )

    _empty_key: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            # `TWIN_API_KEY=` is no key: say so (startup_warnings) instead of a key nobody can send
            self.api_key = None
            self._empty_key = True
        if self.admin_key is not None and not self.admin_key.get_secret_value().strip():
            self.admin_key = None  # an empty admin key is no admin key: admin stays off
        problems = []
        problems += self._twin_problems()
        if not is_loopback(self.host) and self.api_key is None and not self.allow_no_key:
            empty = " (TWIN_API_KEY is set but empty)" if self._empty_key else ""
            problems.append(
                f"refusing to listen on {self.host!r} without an API key{empty}: set TWIN_API_KEY "
                "(clients then send 'Authorization: Bearer <key>'), bind 127.0.0.1, or pass "
                "--allow-no-key if something in front of the server checks who calls"
            )
        if "*" in self.cors_origins and self.api_key is None:
            problems.append(
                "cors_origins '*' needs TWIN_API_KEY: any web page could otherwise talk to your twin"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def twin_slots(self) -> int:
        """Twins the engine holds unmerged (TWIN_MAX_TWINS resolved; 0: one twin, merged)."""
        if self.max_twins is not None:
            return self.max_twins
        if self.twins or self.admin_key is not None:
            return max(8, len(self.twins) + (self.lora_path is not None))
        return 0

    def _twin_problems(self) -> list[str]:
        problems = []
        bad = [name for name in self.twins if not TWIN_NAME.fullmatch(name)]
        if bad:
            problems.append(
                f"TWIN_TWINS names {bad[:3]}: use 1-64 letters, digits and . _ : - (starting with a "
                "letter or digit)"
            )
        if self.model_name in self.twins:
            problems.append(
                f"TWIN_TWINS names {self.model_name!r}, which is TWIN_MODEL_NAME (TWIN_LORA_PATH's twin): "
                "rename one"
            )
        given = len(self.twins) + (self.lora_path is not None and self.twin_slots() > 0)
        if self.twins and given > self.twin_slots():
            problems.append(
                f"{given} twins given (TWIN_LORA_PATH and TWIN_TWINS) but "
                f"TWIN_MAX_TWINS={self.twin_slots()}: raise TWIN_MAX_TWINS"
            )
        if self.twin_slots() and self.quantize != "none":
            problems.append(
                f"several twins on one base are served from a bf16 base, not --quantize {self.quantize}: "
                "drop one of them (TWIN_MAX_TWINS=0 for one twin on an NF4 base)"
            )
        return problems


def compile_cache_dir(settings: Settings) -> Path:
    """Where the compiled decode step's caches live: the setting, or beside the checkpoint's weights."""
    return settings.compile_cache_dir or settings.checkpoint_dir / ".compile-cache"


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator must hear when the server starts: the API is open, or the key is empty."""
    where = f"{settings.host}:{settings.port}"
    warnings = []
    if settings._empty_key:
        warnings.append(
            f"TWIN_API_KEY is set but empty: the API takes no key, anyone who reaches {where} can use it"
        )
    if settings.api_key is None and not is_loopback(settings.host):
        warnings.append(
            f"listening on {where} WITHOUT an API key (--allow-no-key): anyone on the network can chat "
            "as you unless something in front of the server checks who calls"
        )
    return warnings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@lru_cache
def get_settings() -> Settings:
    return Settings()
