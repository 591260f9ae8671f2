"""common/cli.py: the one way every stage builds its command line, checked on the parser and on each stage.

Every stage's `-h` lists each setting as a kebab-case flag with the default its owner declares; an
unknown flag and a bad value are one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

from common.cli import EXIT_INTERRUPTED, Parser, parse_dataclasses, parse_settings, run, run_function


def unwrapped(text: str) -> str:
    return " ".join(text.split())  # argparse wraps help at the terminal width


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------- the parser
PARSED: dict[str, Any] = {}


def command(
    out: Path = Path("data/raw"),
    gap_hours: float = 24.0,
    limit: int | None = None,
    keep_forwarded: bool = False,
    compile: bool | None = None,
    mode: Literal["fast", "slow"] = "fast",
) -> dict[str, Any]:
    """A stage-like command.

    Args:
        out: where to write
        gap_hours: hours of silence
        limit: at most this many
        keep_forwarded: keep them
        compile: compile (none: decide later)
        mode: how
    """
    PARSED.clear()
    PARSED.update(out=out, gap_hours=gap_hours, limit=limit, keep_forwarded=keep_forwarded)
    PARSED.update(compile=compile, mode=mode)
    return dict(PARSED)


def parse(argv: list[str]) -> dict[str, Any]:
    assert run_function(command, argv, prog="prog") == 0
    return dict(PARSED)


def test_kebab_flags_underscore_spelling_and_switches() -> None:
    assert parse([]) == command()
    got = parse(["--gap-hours", "3", "--limit=5", "--keep-forwarded", "--no-compile", "--mode", "slow"])
    assert got == command(gap_hours=3.0, limit=5, keep_forwarded=True, compile=False, mode="slow")
    assert parse(["--gap_hours=2", "--keep_forwarded", "--no-keep-forwarded", "--limit", "None"]) == command(
        gap_hours=2.0
    )
    assert parse(["--compile"])["compile"] is True


def test_help_shows_kebab_flags_with_help_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_function(command, ["-h"], prog="prog") == 0
    help_text = unwrapped(capsys.readouterr().out)
    assert "--gap-hours GAP_HOURS hours of silence (type: float, default: 24.0)" in help_text
    assert "--keep-forwarded, --no-keep-forwarded keep them (default: False)" in help_text
    assert "--out OUT where to write (type: Path, default: data/raw)" in help_text
    assert "--mode {fast,slow} how (default: fast)" in help_text
    assert "--limit LIMIT at most this many (type: int | None, default: none)" in help_text
    assert "--gap_hours" not in help_text and "--keep_forwarded" not in help_text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gap-hourz", "3"], "error: unrecognized arguments: --gap-hourz 3 (-h lists every flag)"),
        (["--gap-hours", "soon"], "error: --gap-hours: 'soon' is not a number"),
        (["--limit", "x"], "error: --limit: 'x' is not an integer or none"),
        (["--mode", "medium"], "error: --mode: expected one of fast, slow"),
        (["--out"], "error: argument --out: expected one argument"),
        (["--keep-forwarded=yes"], "--keep-forwarded"),
    ],
)
def test_bad_flags_and_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert run_function(command, argv, prog="prog") == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_required_positional_and_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    def desktop(path: Path, me: int | None = None) -> None:
        """Import.

        Args:
            path: the export
            me: your id
        """

    commands = {"desktop": desktop, "stage": command}
    assert run_function(commands, ["desktop"], prog="prog") == 2
    assert one_error_line(capsys.readouterr().err) == "error: the path argument is required"
    assert run_function(commands, ["desktop", "x.json", "--me", "me"], prog="prog") == 2
    assert "--me: 'me' is not an integer" in one_error_line(capsys.readouterr().err)


@dataclass
class Group:
    """A group."""

    checkpoint_dir: Path
    """Required: no default."""
    steps: int = 3
    """Steps to take."""
    lora_query: bool = True
    """Adapt the query."""


def test_dataclass_groups(capsys: pytest.CaptureFixture[str]) -> None:
    (group,) = parse_dataclasses([Group], ["--checkpoint-dir", "ck", "--no-lora-query"], prog="prog")
    assert group == Group(checkpoint_dir=Path("ck"), steps=3, lora_query=False)
    with pytest.raises(SystemExit) as exit_:
        parse_dataclasses([Group], ["--steps", "4"], prog="prog")
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err) == "error: --checkpoint-dir is required"


def test_run_maps_user_errors_and_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    class StageError(Exception):
        pass

    def fail() -> None:
        raise StageError("no such folder: run `make collect` first")

    def interrupt() -> None:
        raise KeyboardInterrupt

    assert run(fail, errors=(StageError,), prefix="stage: ") == 2
    assert capsys.readouterr().err == "stage: no such folder: run `make collect` first\n"
    assert run(interrupt, interrupted="interrupted: run it again") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: run it again\n"
    with pytest.raises(ValueError):  # anything else is a bug: its traceback stays
        run(lambda: int("x"), errors=(StageError,))


def test_parser_is_jsonargparse_with_kebab_names() -> None:
    parser = Parser(prog="prog")
    parser.add_argument("--max_new_tokens", type=int, default=1)
    assert parser.parse_args(["--max-new-tokens", "2"]).max_new_tokens == 2
    assert parser.parse_args(["--max_new_tokens", "3"]).max_new_tokens == 3


class DemoSettings(BaseSettings):
    """A server's settings."""

    model_config = SettingsConfigDict(env_prefix="DEMO_", env_file=".env", extra="ignore")

    port: int = Field(default=8000, ge=0, le=65535, description="TCP port")
    origins: list[str] = Field(default_factory=list, description="allowed origins")
    stop: list[str] | None = Field(default=None, description="stop strings (none: the model's own)")
    compile: bool | None = Field(default=None, description="compile (none: decide later)")
    secret: CliSuppress[str | None] = Field(default=None, description="environment only")


def settings(argv: list[str]) -> DemoSettings:
    return parse_settings(DemoSettings, argv, prog="prog")


def test_settings_flags_default_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "2000")
    (tmp_path / ".env").write_text('DEMO_PORT=8001\nDEMO_ORIGINS=["http://a"]\nDEMO_SECRET=s3cret\n')
    monkeypatch.setenv("DEMO_PORT", "8123")  # the environment wins over .env, flags over both
    got = settings([])
    assert (got.port, got.origins, got.compile, got.secret) == (8123, ["http://a"], None, "s3cret")
    assert settings(["--port", "9000", "--compile"]).port == 9000
    with pytest.raises(SystemExit):
        settings(["-h"])
    help_text = unwrapped(capsys.readouterr().out)
    assert "--port PORT TCP port [env DEMO_PORT] (type: int, default: 8123)" in help_text
    assert (
        "--compile, --no-compile compile (none: decide later) [env DEMO_COMPILE] (default: none)" in help_text
    )
    assert "--origins LIST allowed origins [env DEMO_ORIGINS] (default: ['http://a'])" in help_text
    assert "--secret" not in help_text


@pytest.mark.parametrize(
    ("argv", "origins"),
    [
        (["--origins", "http://a"], ["http://a"]),
        (["--origins", "http://a,http://b"], ["http://a", "http://b"]),
        (["--origins", '["http://a", "http://b"]'], ["http://a", "http://b"]),
        (["--origins", "http://a", "--origins", "http://b"], ["http://a", "http://b"]),
        (["--origins", "[]"], []),
    ],
)
def test_settings_list_flags_read_as_pydantic_settings_reads_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], origins: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_ORIGINS", '["http://default"]')
    assert settings(argv).origins == origins
    # the same forms for an optional list, which also takes none
    stop_argv = [a.replace("--origins", "--stop") for a in argv]
    assert settings(stop_argv).stop == origins
    assert settings([]).stop is None and settings(["--stop", "a", "--stop", "none"]).stop is None


@pytest.mark.parametrize(
    ("argv", "environment", "expected"),
    [
        (["--port", "70000"], {}, "error: --port: Input should be less than or equal to 65535"),
        (["--secret", "x"], {}, "error: unrecognized arguments: --secret x"),
        ([], {"DEMO_PORT": "many"}, "error: DEMO_PORT: Input should be a valid integer"),
        (["--origins", "[a"], {}, "error: --origins: '[a' is not a list"),
    ],
)
def test_settings_mistakes_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    environment: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        settings(argv)
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err).startswith(expected)


# ------------------------------------------------------------------------------------------- the stages
def signature_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: (MISSING if p.default is inspect.Parameter.empty else p.default)
        for name, p in inspect.signature(function).parameters.items()
    }


def dataclass_defaults(*classes: type) -> dict[str, Any]:
    return {f.name: f.default for cls in classes for f in fields(cls)}


def stage_collect_telegram() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from collect.cli import main, telegram

    return main, ["telegram"], signature_defaults(telegram)


def stage_collect_desktop() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from collect.cli import desktop, main

    return main, ["desktop"], signature_defaults(desktop)


def stage_prepare() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from prepare.__main__ import cli
    from prepare.config import PrepareConfig

    return cli, [], dataclass_defaults(PrepareConfig)


def stage_finetune() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from finetune.__main__ import main
    from finetune.args import GROUPS

    return main, [], dataclass_defaults(*GROUPS)


def stage_tiny() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from finetune.tiny import build, main

    return main, [], signature_defaults(build)


def stage_export() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from finetune.export import ExportArgs, main

    return main, [], dataclass_defaults(ExportArgs)


def stage_report() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from finetune.report import ReportArgs, main

    return main, [], dataclass_defaults(ReportArgs)


def stage_serve() -> tuple[Callable[[list[str]], int], list[str], dict[str, Any]]:
    from serve.__main__ import main
    from serve.settings import Settings

    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
        if name not in ("api_key", "admin_key")  # env only: a flag would show up in `ps`
    }
    return main, [], defaults


STAGES = {
    "collect telegram": (stage_collect_telegram, ["--limit-dialogs", "x"], "--limit-dialogs: 'x' is not"),
    "collect desktop": (stage_collect_desktop, ["x.json", "--me", "x"], "--me: 'x' is not an integer"),
    "prepare": (stage_prepare, ["--seed", "x"], "--seed: 'x' is not an integer"),
    "finetune": (stage_finetune, ["--epochs", "x"], "--epochs: 'x' is not an integer"),
    "finetune.tiny": (stage_tiny, ["--n-layer", "x"], "--n-layer: 'x' is not an integer"),
    "finetune.export": (stage_export, ["--format", "zip"], "--format: expected one of merged, peft"),
    "finetune.report": (stage_report, ["--samples", "x"], "--samples: 'x' is not an integer"),
    "serve": (stage_serve, ["--port", "x"], "--port: 'x' is not an integer"),
}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TWIN_* variables and no .env: serve's flag defaults are then its Settings defaults."""
    for name in [n for n in os.environ if n.startswith("TWIN_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "2000")  # help on one line per flag: no wrap inside a default


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_help_lists_every_setting_with_its_default(
    stage: str, clean_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    main, prefix, defaults = STAGES[stage][0]()
    assert main([*prefix, "-h"]) == 0
    help_text = unwrapped(capsys.readouterr().out)
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if default is MISSING and name == "path":  # collect desktop's positional
            assert "positional arguments: path the export's result.json" in help_text
            continue
        assert f"{flag} " in help_text or f"{flag}," in help_text, flag
        if default is MISSING:
            assert "required" in help_text
            continue
        shown = "none" if default is None else str(default)
        assert f"default: {unwrapped(shown)})" in help_text, (flag, shown)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_refuses_an_unknown_flag_and_a_bad_value_with_one_line(
    stage: str, clean_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    load, bad_value, expected = STAGES[stage]
    main, prefix, _ = load()
    assert main([*prefix, "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in one_error_line(capsys.readouterr().err)
    assert main([*prefix, *bad_value]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
