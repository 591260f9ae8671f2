"""The trained twin: a base checkpoint plus the LoRA adapter `python -m finetune` trained on it.

This module owns that contract, as `prepare/records.py` owns the records: the file names, the adapter's
spec, the one check of a checkpoint folder and the one adapter loader. serve, export, the report and the
training script import it. It imports only yaml and prepare's prompt up front, and torch and litgpt
inside the functions that need them, so a CLI's settings can name `LoraArgs` without loading torch.

- A base checkpoint is a litgpt folder: `model_config.yaml`, `lit_model.pth` and the tokenizer
  (`tokenizer.json` or `tokenizer.model`, with `tokenizer_config.json` / `generation_config.json`
  naming its special tokens).
- A base's family is `finetune.bases`' (`check_supported` refuses any other in one line when a
  checkpoint is loaded here, so finetune, serve, export and the report all refuse it alike).
- The finetune out-dir holds `lit_model_lora_finetuned.pth` (the LoRA tensors only, a flat
  `{name: tensor}` dict under litgpt's names: `transformer.h.0.attn.qkv.lora_A`, ...) and beside it
  `hyperparameters.yaml`: every setting of the run, flat. Its `lora_*` keys (litgpt's `merge_lora` reads
  them), `base_name`, `base_family`, `prompt_format` and, for the chat-template format,
  `chat_template_sha256` and `chat_template_tokens` are the `AdapterSpec`; the template itself is the
  `chat_template.jinja` beside them (so the twin is served with the template it learned even if the base
  folder changes; an altered or missing file is refused). Files written before these keys existed still
  load: the base is then read from the recorded `checkpoint_dir`, and the prompt format is `twin-v1`.
- Memory (`prepare.memory`): `memory_k` in the spec (0, and for adapters that record none: off) is how
  many of the person's past exchanges each training prompt showed; the exchanges (train split only) are
  the `memory.jsonl` beside the adapter, which serve searches for each live chat (`read_memory`).
- The prompt's token ids: `encode_prompt` / `encode_response` are the one tokenization training and
  serving share; `stop_token_ids` says where a reply ends.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import yaml

from finetune.errors import UserError
from prepare.memory import MEMORY_FILE, Memory
from prepare.prompt import (
    CHAT_TEMPLATE,
    PROMPT_FORMAT,
    ChatTemplate,
    ChatTemplateError,
    Prompter,
    PromptFormat,
    special_tokens_of,
)

if TYPE_CHECKING:
    import torch
    from litgpt import lora
    from litgpt.config import Config
    from litgpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model_config.yaml"
WEIGHTS_FILE = "lit_model.pth"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
"""litgpt's `Tokenizer` reads either (the first when both are there)."""
ADAPTER_FILE = "lit_model_lora_finetuned.pth"
HPARAMS_FILE = "hyperparameters.yaml"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Beside the adapter: the chat template a chat-template twin was trained with."""
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINTS_DIR = "checkpoints"
"""In the out-dir: a run's resumable checkpoints (`checkpoints/step-000050.pth`, `finetune.state`)."""
GET_A_CHECKPOINT = (
    "run `make download` for Falcon-7B (checkpoints/tiiuae/falcon-7b), or `make tiny` "
    "(python -m finetune.tiny) for a tiny CPU model (checkpoints/tiny-falcon), and pass that folder "
    "as --checkpoint-dir"
)


class TwinError(UserError):
    """A base checkpoint or adapter that cannot be used; the message says what to fix."""


# ------------------------------------------------------------------------------------------- the spec
@dataclass
class LoraArgs:
    """Which layers get LoRA adapters, and their shape (the names are litgpt's `Config` fields)."""

    lora_r: int = 16
    """Rank of the LoRA update matrices."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    lora_query: bool = True
    """Adapt the attention query projection."""
    lora_key: bool = False
    """Adapt the attention key projection."""
    lora_value: bool = True
    """Adapt the attention value projection."""
    lora_projection: bool = False
    """Adapt the attention output projection."""
    lora_mlp: bool = False
    """Adapt the MLP layers."""
    lora_head: bool = False
    """Adapt the output head (lm_head)."""

    @property
    def targets(self) -> tuple[str, ...]:
        """The enabled layer flags (`lora_query`, ...)."""
        return tuple(name for name in LORA_TARGETS if getattr(self, name))

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_r


LORA_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LoraArgs))
LORA_TARGETS: tuple[str, ...] = tuple(f.name for f in fields(LoraArgs) if f.type in ("bool", bool))
# written by every finetune run; lora_dropout has always had a default
REQUIRED_LORA_FIELDS = tuple(name for name in LORA_FIELDS if name != "lora_dropout")


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is: its LoRA settings, the base it was trained on and the prompt format it learned."""

    lora: LoraArgs
    base_name: str | None
    """The base model's litgpt `Config.name` (None: an old adapter whose base cannot be read any more)."""
    base_family: str | None
    """The base's family (`finetune.bases.Family`): falcon, llama, qwen, mistral or gemma."""
    prompt_format: PromptFormat = PROMPT_FORMAT
    """The prompt format the adapter was trained with (prepare.prompt)."""
    chat_template: ChatTemplate | None = None
    """The chat template it was trained with (the chat-template format only)."""
    memory_k: int = 0
    """Past exchanges retrieved into each prompt in training (`prepare.memory`; 0: no memory)."""

    def hparams(self) -> dict[str, Any]:
        """The spec as flat hyperparameters.yaml keys (the template's text goes to its own file)."""
        keys = asdict(self.lora) | {
            "base_name": self.base_name,
            "base_family": self.base_family,
            "prompt_format": self.prompt_format,
            "memory_k": self.memory_k,
        }
        if self.chat_template is not None:
            keys["chat_template_sha256"] = self.chat_template.sha256
            keys["chat_template_tokens"] = dict(self.chat_template.special_tokens)
        return keys

    @property
    def prompter(self) -> Prompter:
        """The prompt format it was trained with, as training rendered it."""
        return Prompter(self.prompt_format, self.chat_template)


def family_name(config: Config) -> str:
    """The supported family of `config` (`finetune.bases.check_supported`: one line naming the supported
    families for any other)."""
    from finetune.bases import check_supported

    return check_supported(config).value


def adapter_spec(lora_args: LoraArgs, config: Config, prompter: Prompter, memory_k: int = 0) -> AdapterSpec:
    """The spec of an adapter with `lora_args` trained on the base `config` with `prompter`'s format (and
    `memory_k` retrieved exchanges in each prompt)."""
    return AdapterSpec(
        lora_args, config.name, family_name(config), prompter.format, prompter.template, memory_k
    )


def save_adapter_spec_files(out_dir: Path, spec: AdapterSpec) -> None:
    """The files beside hyperparameters.yaml that the spec names (the chat template), owner-only."""
    from common.files import write_private_atomic

    if spec.chat_template is not None:
        write_private_atomic(out_dir / CHAT_TEMPLATE_FILE, spec.chat_template.source)


def parse_adapter_spec(hparams: Any, where: Path) -> AdapterSpec:
    """The spec in a hyperparameters.yaml's content; every problem goes into one `TwinError`."""
    if not isinstance(hparams, dict):
        raise TwinError(
            f"{where} is empty or cut short (expected a mapping of hyperparameters): copy the out-dir of the "
            "`python -m finetune` run again, or train again"
        )
    missing = [name for name in REQUIRED_LORA_FIELDS if name not in hparams]
    if missing:
        raise TwinError(
            f"{where} lacks {', '.join(missing)}: point at the out-dir of a `python -m finetune` run"
        )
    problems = []
    for f in fields(LoraArgs):
        value = hparams.get(f.name, getattr(LoraArgs, f.name))
        if f.name in LORA_TARGETS:
            ok = isinstance(value, bool)
        elif f.name == "lora_r":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        if not ok:
            problems.append(f"{f.name}: {value!r}")
    lora_args = LoraArgs(**{name: hparams[name] for name in LORA_FIELDS if name in hparams})
    if not problems and not lora_args.targets:
        problems.append("no LoRA layer is enabled")
    prompt_format = hparams.get("prompt_format", PROMPT_FORMAT)
    if prompt_format not in (known := get_args(PromptFormat)):
        problems.append(f"prompt_format {prompt_format!r} is not one this version knows ({', '.join(known)})")
    memory_k = hparams.get("memory_k", 0)
    if not isinstance(memory_k, int) or isinstance(memory_k, bool) or memory_k < 0:
        problems.append(f"memory_k: {memory_k!r} (a count of exchanges, 0 or more)")
    if problems:
        raise TwinError(f"{where} does not describe a usable adapter: {'; '.join(problems)}")
    base_name, base_family = hparams.get("base_name"), hparams.get("base_family")
    if base_name is None:  # written before the base was recorded: read it from the recorded checkpoint
        base_name, base_family = recorded_base(hparams.get("checkpoint_dir"))
    template = recorded_chat_template(hparams, where) if prompt_format == CHAT_TEMPLATE else None
    return AdapterSpec(
        lora_args, base_name, base_family, cast(PromptFormat, prompt_format), template, memory_k
    )


def recorded_chat_template(hparams: dict[str, Any], where: Path) -> ChatTemplate:
    """The chat template beside `where` (hyperparameters.yaml), checked against its recorded sha256."""
    path = where.parent / CHAT_TEMPLATE_FILE
    expected, tokens = hparams.get("chat_template_sha256"), hparams.get("chat_template_tokens") or {}
    if not isinstance(expected, str) or not isinstance(tokens, dict):
        raise TwinError(
            f"{where} says prompt_format {CHAT_TEMPLATE} but records no chat_template_sha256 / "
            "chat_template_tokens: point at the out-dir of a `python -m finetune` run"
        )
    if not path.is_file():
        raise TwinError(
            f"{path} is missing: the adapter was trained with the chat template that `python -m finetune` "
            "saved there; copy the whole out-dir, or train again"
        )
    template = ChatTemplate(path.read_text(encoding="utf-8"), {str(k): str(v) for k, v in tokens.items()})
    if template.sha256 != expected:
        raise TwinError(
            f"{path} was altered (sha256 {template.sha256[:12]}…, recorded {expected[:12]}…): the twin must "
            "be served with the template it was trained with; restore the file, or train again"
        )
    return template


def recorded_base(checkpoint_dir: Any) -> tuple[str | None, str | None]:
    """(name, family) of the checkpoint a run recorded, or (None, None) if it cannot be read now."""
    from litgpt.config import Config

    if not checkpoint_dir or not (Path(checkpoint_dir) / MODEL_CONFIG_FILE).is_file():
        return None, None
    from finetune.bases import family_of

    try:
        config = Config.from_file(Path(checkpoint_dir) / MODEL_CONFIG_FILE)
    except (OSError, yaml.YAMLError, TypeError, ValueError):
        return None, None
    family = family_of(config)
    return config.name, None if family is None else family.value


# ------------------------------------------------------------------------------------------- the base
def check_checkpoint_dir(checkpoint_dir: Path) -> None:
    """Raise a `TwinError` saying how to get one unless `checkpoint_dir` is a litgpt checkpoint folder."""
    if not checkpoint_dir.is_dir():
        raise TwinError(
            f"{checkpoint_dir} is not a litgpt checkpoint (the folder does not exist): {GET_A_CHECKPOINT}"
        )
    missing = [name for name in (MODEL_CONFIG_FILE, WEIGHTS_FILE) if not (checkpoint_dir / name).is_file()]
    if not any((checkpoint_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise TwinError(
            f"{checkpoint_dir} is not a litgpt checkpoint (it lacks {', '.join(missing)}): {GET_A_CHECKPOINT}"
        )


def load_base_config(checkpoint_dir: Path) -> Config:
    """The litgpt config of a checked checkpoint folder of a supported family (`finetune.bases`)."""
    from litgpt.config import Config

    check_checkpoint_dir(checkpoint_dir)
    try:
        config = Config.from_file(checkpoint_dir / MODEL_CONFIG_FILE)
    except (yaml.YAMLError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as e:
        # AttributeError: YAML that is not a mapping (litgpt calls `.update` on it)
        raise TwinError(
            f"{checkpoint_dir / MODEL_CONFIG_FILE} is not a litgpt model config ({one_line(e)}): "
            f"restore it from the model's download, or {GET_A_CHECKPOINT}"
        ) from None
    family_name(config)
    return config


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An exception's message on one line (YAML, torch and tokenizers errors span several), cut short."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    """litgpt's tokenizer of a checked checkpoint folder; an unreadable tokenizer file is a `TwinError`."""
    from litgpt.tokenizer import Tokenizer

    try:
        return Tokenizer(checkpoint_dir)
    except Exception as e:  # tokenizers raises a bare Exception for a corrupt tokenizer.json
        files = ", ".join(
            name
            for name in (*TOKENIZER_FILES, TOKENIZER_CONFIG_FILE, "generation_config.json")
            if (checkpoint_dir / name).is_file()
        )
        raise TwinError(
            f"cannot read the tokenizer of {checkpoint_dir} ({files}): {one_line(e)}; restore those files "
            f"from the model's download, or {GET_A_CHECKPOINT}"
        ) from None


def base_chat_template(checkpoint_dir: Path) -> ChatTemplate | None:
    """The base's own chat template with its special tokens (`tokenizer_config.json`), or None for a
    plain base model."""
    from finetune.bases import read_chat_template

    source = read_chat_template(checkpoint_dir)
    if source is None:
        return None
    config_path = checkpoint_dir / TOKENIZER_CONFIG_FILE
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return ChatTemplate(source, special_tokens_of(tokenizer_config))


PromptFormatChoice = Literal["auto", "twin-v1", "chat-template"]


def choose_prompter(checkpoint_dir: Path, requested: PromptFormatChoice = "auto") -> Prompter:
    """The prompt format for a base: `auto` picks the base's chat template when it has one (an
    instruct/chat model), else twin-v1; a forced chat-template needs a base with a template."""
    template = base_chat_template(checkpoint_dir) if requested != "twin-v1" else None
    if requested == CHAT_TEMPLATE and template is None:
        raise TwinError(
            f"{checkpoint_dir} has no chat template (no `chat_template` in its {TOKENIZER_CONFIG_FILE}, no "
            f"{CHAT_TEMPLATE_FILE}): it is a plain base model; use --prompt-format twin-v1 or auto"
        )
    if template is None:
        return Prompter()
    try:
        if not template.end_of_turn:
            raise ChatTemplateError(
                "the chat template writes nothing after the assistant's reply: there is no end-of-turn "
                "marker for the twin to learn to stop at"
            )
    except ChatTemplateError as e:
        raise TwinError(f"{checkpoint_dir}: {e}; use --prompt-format twin-v1") from None
    return Prompter(CHAT_TEMPLATE, template)


def serving_prompter(checkpoint_dir: Path, spec: AdapterSpec | None) -> Prompter:
    """The prompt format to serve with: the adapter's, or with no adapter the base's own (`auto`; twin-v1,
    with a warning, when the base's chat template cannot be used)."""
    if spec is not None:
        return spec.prompter
    try:
        return choose_prompter(checkpoint_dir)
    except TwinError as e:
        log.warning("serving the base in the twin-v1 prompt format: %s", e)
        return Prompter()


# ------------------------------------------------------------------------------------------- tokens
def encode_prompt(tokenizer: Tokenizer, prompter: Prompter, prompt: str) -> list[int]:
    """The token ids of a rendered prompt: the one tokenization finetune, the report and serve share.

    twin-v1: litgpt's `Tokenizer.encode` (with the BOS its checkpoint heuristics add), as twin-v1 adapters
    were always trained. chat-template: exactly what the Hugging Face tokenizer gives for the rendered text
    with special tokens parsed and none added (`add_special_tokens=False`, as transformers'
    `apply_chat_template` tokenizes): the template writes BOS itself where its model wants one, and
    litgpt's heuristics would add or drop a leading or trailing special token (`<|im_start|>`, EOS).
    """
    if prompter.template is None:
        return [int(i) for i in tokenizer.encode(prompt).tolist()]
    return _template_ids(tokenizer, prompt)


def encode_response(tokenizer: Tokenizer, prompter: Prompter, response: str) -> list[int]:
    """The token ids of a training response (`Prompter.render_record`'s second part), which all carry
    loss: twin-v1 adds the EOS token; chat-template's response already ends with the end-of-turn marker."""
    if prompter.template is None:
        if tokenizer.eos_id is None:
            raise TwinError("the checkpoint's tokenizer has no EOS token (tokenizer_config.json 'eos_token')")
        return [*(int(i) for i in tokenizer.encode(response, bos=False).tolist()), tokenizer.eos_id]
    return _template_ids(tokenizer, response)


def _template_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    if tokenizer.backend != "huggingface":
        raise TwinError(
            "the chat-template prompt format needs the checkpoint's tokenizer.json (special tokens in the "
            "rendered text must be parsed); this checkpoint only has tokenizer.model: use twin-v1"
        )
    return list(tokenizer.processor.encode(text, add_special_tokens=False).ids)


def stop_token_ids(tokenizer: Tokenizer, prompter: Prompter) -> tuple[int, ...]:
    """Tokens that end a reply: the tokenizer's EOS and, for chat-template, the end-of-turn marker
    (`<|im_end|>`, `<|eot_id|>`, ...) when it is one token."""
    ids = [] if tokenizer.eos_id is None else [int(tokenizer.eos_id)]
    if prompter.template is not None and (marker := prompter.template.end_of_turn):
        marker_ids = _template_ids(tokenizer, marker)
        if len(marker_ids) == 1 and marker_ids[0] not in ids:
            ids.append(marker_ids[0])
    return tuple(ids)


def check_base(spec: AdapterSpec, config: Config, checkpoint_dir: Path) -> None:
    """Refuse a base other than the one the adapter was trained on, naming both."""
    if spec.base_name is None:
        log.warning("the adapter does not record its base model: not checked against %s", config.name)
    elif spec.base_name != config.name:
        raise TwinError(
            f"the adapter was trained on {spec.base_name!r}, but {checkpoint_dir} holds {config.name!r}: "
            f"pass the {spec.base_name} checkpoint as --checkpoint-dir"
        )


def lora_config(config: Config, spec: AdapterSpec) -> lora.Config:
    """litgpt's LoRA config: the base `config` with the adapter's layers, for inference (no dropout)."""
    from litgpt import lora

    return lora.Config(**(asdict(config) | asdict(spec.lora) | {"lora_dropout": 0.0}))


# ------------------------------------------------------------------------------------------- the adapter
def resolve_adapter(lora_path: Path) -> Path:
    """The adapter file of `lora_path`: the file itself (also a run's resumable checkpoint), or the one in
    the finetune out-dir it names. A folder that holds no adapter is named for what it is: a run that has
    not finished, a base checkpoint or a Hugging Face model folder."""
    adapter = lora_path / ADAPTER_FILE if lora_path.is_dir() else lora_path
    if adapter.is_file():
        return adapter
    if lora_path.is_dir():
        # step-000050.pth, ... step-1000000.pth: by length, then name, is by step
        steps = (lora_path / CHECKPOINTS_DIR).glob("step-*.pth")
        checkpoints = sorted(steps, key=lambda p: (len(p.name), p.name))
        resume = "let it finish, or continue a stopped run: its `python -m finetune` command plus --resume"
        if checkpoints:
            raise TwinError(
                f"{lora_path} holds a fine-tuning run that has not finished (no {ADAPTER_FILE} yet): "
                f"{resume}; or pass its newest checkpoint, --lora-path {checkpoints[-1]}, to use the twin as "
                "it stands"
            )
        if (lora_path / HPARAMS_FILE).is_file():
            raise TwinError(
                f"{lora_path} holds a fine-tuning run that has not finished and saved nothing yet (no "
                f"{ADAPTER_FILE}, no checkpoint): {resume}"
            )
        if (lora_path / WEIGHTS_FILE).is_file() and (lora_path / MODEL_CONFIG_FILE).is_file():
            raise TwinError(
                f"{lora_path} is a base checkpoint, not a LoRA adapter: pass it as --checkpoint-dir, and the "
                "finetune out-dir as --lora-path, e.g. --lora-path out/twin"
            )
        if (lora_path / "config.json").is_file() or (lora_path / "adapter_config.json").is_file():
            raise TwinError(
                f"{lora_path} is a Hugging Face model or PEFT folder (an export?), not the twin's LoRA "
                "adapter: pass the finetune out-dir it was made from, e.g. --lora-path out/twin"
            )
    raise TwinError(
        f"no LoRA adapter at {lora_path}: train one first (`make train`, or `make demo` for the tiny "
        f"model), then pass its out-dir or the {ADAPTER_FILE} in it, e.g. --lora-path out/twin"
    )


def run_dir(adapter: Path) -> Path:
    """The finetune out-dir an adapter file belongs to (hyperparameters.yaml, metrics.csv, memory.jsonl):
    its folder, or the run's folder above `checkpoints/` for a resumable checkpoint."""
    folder = adapter.parent
    if folder.name == CHECKPOINTS_DIR and not (folder / HPARAMS_FILE).is_file():
        return folder.parent
    return folder


def read_adapter_spec(lora_path: Path) -> AdapterSpec:
    """The spec from the hyperparameters.yaml beside the adapter (file or out-dir); tensors not read."""
    hparams_file = run_dir(resolve_adapter(lora_path)) / HPARAMS_FILE
    if not hparams_file.is_file():
        raise TwinError(
            f"{hparams_file} is missing: the adapter's LoRA settings (rank, alpha, layers) are read from "
            f"the {HPARAMS_FILE} that `python -m finetune` writes next to {ADAPTER_FILE}"
        )
    try:
        hparams = yaml.safe_load(hparams_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TwinError(
            f"{hparams_file} is not valid YAML ({one_line(e)}): copy the out-dir of the `python -m finetune` "
            "run again, or train again"
        ) from None
    return parse_adapter_spec(hparams, hparams_file)


def read_memory(lora_path: Path) -> Memory:
    """The memory saved beside the adapter (file or out-dir): the train split's exchanges, for retrieval."""
    path = run_dir(resolve_adapter(lora_path)) / MEMORY_FILE
    if not path.is_file():
        raise TwinError(
            f"{path} is missing: the memory of past exchanges is the {MEMORY_FILE} that `python -m finetune "
            "--memory-k K` writes beside the adapter; copy the whole out-dir, train with --memory-k, or "
            "serve without memory (TWIN_MEMORY_K=0)"
        )
    try:
        return Memory.load(path)
    except ValueError as e:
        raise TwinError(str(e)) from None


@dataclass(frozen=True)
class Adapter:
    """A trained adapter: its file, its spec and its LoRA tensors (on the CPU, litgpt's names)."""

    path: Path
    spec: AdapterSpec
    tensors: dict[str, torch.Tensor]


def load_adapter(lora_path: Path) -> Adapter:
    """The adapter at `lora_path` (the .pth file or its finetune out-dir), checked: only LoRA tensors."""
    import torch

    path = resolve_adapter(lora_path)
    spec = read_adapter_spec(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: say which one
        raise TwinError(
            f"cannot read the adapter {path}: it is truncated or not a torch file; copy the out-dir of "
            "the `python -m finetune` run again, or train again"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # {"model": {...}}, as a resumable checkpoint holds the LoRA tensors
    if not isinstance(state, dict) or not state or any("lora_" not in str(key) for key in state):
        raise TwinError(
            f"{path} is not a LoRA adapter (expected only lora_A/lora_B tensors): pass the {ADAPTER_FILE} "
            "that `python -m finetune` wrote, or its out-dir"
        )
    broken = [k for k, v in state.items() if isinstance(v, torch.Tensor) and not bool(v.isfinite().all())]
    if broken:
        raise TwinError(
            f"{path} holds NaN or infinite values ({len(broken)} of its {len(state)} tensors, e.g. "
            f"{broken[0]}): the training run diverged (see its metrics.csv); train again with a lower "
            "--learning-rate"
        )
    return Adapter(path, spec, state)


def load_twin(checkpoint_dir: Path, lora_path: Path) -> tuple[Config, Adapter]:
    """The base's config and the adapter, checked against each other (same base name)."""
    config = load_base_config(checkpoint_dir)
    adapter = load_adapter(lora_path)
    check_base(adapter.spec, config, checkpoint_dir)
    return config, adapter


def load_base_weights(checkpoint_dir: Path, config: Config | None = None) -> dict[str, torch.Tensor]:
    """The base's `lit_model.pth`, memory-mapped on the CPU, checked against its model_config.yaml (or
    `config`): an unreadable file, or weights of another shape, is a `TwinError` that names the file."""
    import torch

    path = checkpoint_dir / WEIGHTS_FILE
    redo = f"download or build the checkpoint again ({GET_A_CHECKPOINT})"
    try:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception:  # truncated, empty or not a torch file at all (torch's own words mislead: "mmap ...")
        raise TwinError(f"cannot read {path}: it is truncated or not a torch checkpoint; {redo}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TwinError(f"{path} is not a litgpt state dict (a mapping of names to tensors): {redo}")
    if problem := weights_problem(state, config or load_base_config(checkpoint_dir)):
        raise TwinError(f"{path} does not fit {checkpoint_dir / MODEL_CONFIG_FILE}: {problem}; {redo}")
    return state


def weights_problem(state: dict[str, torch.Tensor], config: Config) -> str | None:
    """What is wrong with `state` as the weights of litgpt's plain GPT(`config`) (None: they fit). Only
    names and shapes are compared (the model is built on the meta device), so this costs no memory."""
    import torch
    from litgpt.model import GPT

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    missing = [k for k in expected if k not in state]
    if missing == ["lm_head.weight"] and "transformer.wte.weight" in state:
        missing = []  # tied embeddings stored once
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]  # fmt: skip
    if not missing and not wrong:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(expected)} tensors are missing (e.g. {missing[0]})")
    if wrong:
        parts.append(f"{len(wrong)} have another shape (e.g. {wrong[0]})")
    return " and ".join(parts)
