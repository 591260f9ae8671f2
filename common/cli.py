"""Every stage's command line, built one way: typed signatures through jsonargparse (as litgpt does).

- `run_function(main, argv, prog=...)`: the typed signature of `main` is the CLI, its docstring's
  `Args:` the help; a dict of functions gives subcommands (`python -m collect telegram|desktop`).
- `parse_dataclasses(classes, argv, prog=...)`: flat dataclass groups (litgpt's `TrainArgs` style), one
  flag per field, the docstring under the field its help.
- `parse_settings(Settings, argv, prog=...)`: flags generated from a pydantic-settings class, each
  default the value the environment / `.env` gives it; flags win over the environment.
- `run(body, errors=...)`: the exit codes: 0, 2 for a user error (one line, no traceback), 130 on Ctrl-C.

All of them share `Parser`: flags are kebab-case (`--gap-hours`; the underscore spelling is accepted but
not shown), a bool is a switch (`--compile`, `--no-compile`), `-h` shows every flag's default, and a bad
flag or value is one line `error: ...` and exit 2. jsonargparse names flags after the parameters and has
no kebab-case option; its maintainers' answer (jsonargparse issue #301, fixed for dashes in 4.41 by
#736) is a parser subclass that renames options in `add_argument`, which is what `Parser` does.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import jsonargparse
import yaml
from jsonargparse import ActionConfigFile, DefaultHelpFormatter

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PARSER_MODE = "twin"
"""jsonargparse's YAML values, plus `none` (any case) for "no value" besides YAML's `null`."""

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

S = TypeVar("S", bound="BaseSettings")


# ------------------------------------------------------------------------------------------- the parser
yaml_load = jsonargparse.get_loader("yaml")


def load_value(text: str) -> Any:
    """A flag's value as YAML, `--max-steps none` included (a str or Literal flag keeps the text)."""
    return None if text.strip().lower() == "none" else yaml_load(text)


jsonargparse.set_loader(PARSER_MODE, load_value, exceptions=(yaml.YAMLError,))


class Switch(argparse.Action):
    """A bool flag: `--name` sets True, `--no-name` False (like argparse's BooleanOptionalAction)."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = False, **kwargs: Any) -> None:
        kwargs.pop("type", None)
        negations = ["--no-" + o[2:] for o in option_strings if o.startswith("--")]
        super().__init__([*option_strings, *negations], dest, nargs=0, default=default, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        negated = (option_string or "").replace("_", "-").startswith("--no-")
        setattr(namespace, self.dest, not negated)


class Strings(list[str]):
    """A list flag's value as given on this command line (so a repeated flag extends it, not its default)."""


class ListFlag(argparse.Action):
    """A `list[str]` flag read the way pydantic-settings reads one: JSON/YAML (`'["a", "b"]'`), `a,b`,
    or the flag repeated (`--x a --x b`); the first use replaces the default. A `list[str] | None` flag
    also takes `none` (any case) for no value."""

    allows_none = False

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("type", None)
        super().__init__(option_strings, dest, metavar="LIST", **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: str | None = None
    ) -> None:
        text = str(values)
        if self.allows_none and text.strip().lower() in ("none", "null"):
            setattr(namespace, self.dest, None)
            return
        try:
            loaded = yaml_load(text) if text.lstrip().startswith("[") else text.split(",")
        except yaml.YAMLError:
            loaded = None
        if not isinstance(loaded, list):
            parser.error(f'{option_string}: {text!r} is not a list such as a,b or \'["a", "b"]\'')
        current = getattr(namespace, self.dest, None)
        given = current if isinstance(current, Strings) else Strings()
        given.extend(str(item) for item in loaded)
        setattr(namespace, self.dest, given)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help (type and default after each flag's help) with readable type names."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        return text.replace("default: %(default)s", "default: none") if action.default is None else text

    def _get_type_str(self, action: argparse.Action) -> str | None:
        if action.choices or typing.get_origin(getattr(action, "_typehint", None)) is Literal:
            return None  # the {a,b} after the flag says it
        text = super()._get_type_str(action)
        return None if text is None else re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)


class Parser(jsonargparse.ArgumentParser):
    """jsonargparse's parser with kebab-case flags, bool switches and one-line errors that exit 2."""

    def __init__(
        self, *args: Any, formatter_class: type = HelpFormatter, parser_mode: str = PARSER_MODE, **kwargs: Any
    ) -> None:
        super().__init__(*args, formatter_class=formatter_class, parser_mode=parser_mode, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        # jsonargparse copies this method's source into its argument-group class, so it stays
        # self-contained: module-level helpers only, no closures
        args = tuple(kebab_flag(a) if isinstance(a, str) else a for a in args)
        kind = kwargs.get("type", getattr(kwargs.get("action"), "_typehint", None))
        if args and str(args[0]).startswith("--") and is_bool_type(kind):
            kwargs.pop("type", None)
            kwargs["action"] = Switch
        elif args and str(args[0]).startswith("--") and kind in (list[str], list[str] | None):
            kwargs.pop("type", None)
            kwargs["action"] = ListFlag
            args = tuple(a for a in args if not str(a).endswith("+"))  # jsonargparse's append form
        action = super().add_argument(*args, **kwargs)
        if isinstance(action, ListFlag):
            action.allows_none = kind != list[str]
        for option in getattr(action, "option_strings", ()):
            # the underscore spelling (`--gap_hours`) still works, without a second line in -h
            self._option_string_actions.setdefault("--" + option[2:].replace("-", "_"), action)
        return action

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's own trial parses: it catches this and tries the next
            super().error(message, ex)
        sys.stderr.write(f"error: {self.tidy(message)}\n")
        self.exit(EXIT_USER_ERROR)

    def tidy(self, message: str) -> str:
        """jsonargparse's multi-line messages as one line that names flags the way the user types them."""
        message = " ".join(message.split()).removeprefix("Validation failed: ")
        if required := re.match(r'Key "([\w.]+)" is required', message):
            leaf = required.group(1).rsplit(".", 1)[-1]
            return (
                f"the {leaf} argument is required"
                if leaf in positional_names(self)
                else f"{flag_name(leaf)} is required"
            )
        if message.startswith("Unrecognized arguments: "):
            return f"unrecognized arguments: {message.split(': ', 1)[1]} (-h lists every flag)"
        if bad := re.match(r'Parser key "([\w.]+)":', message):
            key = bad.group(1)
            action = find_action(self, key)
            typehint = getattr(action, "_typehint", None)
            if typehint is not None:
                given = re.search(r"(?:Given|Got) value: (.*?)(?: Errors:.*)?$", message)
                value = f"{given.group(1)!r} is not" if given else "expected"
                return f"{flag_name(key)}: {value} {describe(typehint)}"
            return flag_name(key) + ":" + message[bad.end() :]
        return message


def find_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    """The action that stores `key` (`gap_hours`, or `desktop.since` in a subcommand's parser)."""
    for action in parser._actions:
        if action.dest == key:
            return action
        head, _, rest = key.partition(".")
        sub = getattr(action, "_name_parser_map", {}).get(head)
        if sub is not None and rest:
            return find_action(sub, rest)
    return None


def kebab_flag(option: str) -> str:
    """`--gap_hours` → `--gap-hours`; positional names and short options stay as they are."""
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


def flag_name(key: str) -> str:
    """A parser key (`gap_hours`, `desktop.keep_forwarded`) as the flag the user types (`--gap-hours`)."""
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def positional_names(parser: argparse.ArgumentParser) -> set[str]:
    names = {a.dest for a in parser._actions if not a.option_strings}
    for action in parser._actions:
        for sub in getattr(action, "_name_parser_map", {}).values():
            names |= positional_names(sub)
    return names


def is_union(typehint: Any) -> bool:
    return isinstance(typehint, types.UnionType) or typing.get_origin(typehint) is typing.Union


def is_bool_type(typehint: Any) -> bool:
    """`bool` or `bool | None` (a tri-state switch whose default None means "decide later")."""
    return typehint is bool or (is_union(typehint) and set(typing.get_args(typehint)) == {bool, type(None)})


def describe(typehint: Any) -> str:
    """What a value of `typehint` looks like, for error messages: `an integer or none`, `one of a, b`."""
    if is_union(typehint):
        parts = [describe(a) for a in typing.get_args(typehint) if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in typing.get_args(typehint) else "")
    if typing.get_origin(typehint) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(typehint))
    if typing.get_origin(typehint) is Annotated:  # a type with validators: what it annotates
        return describe(typing.get_args(typehint)[0])
    if typing.get_origin(typehint) is list:
        item = typing.get_args(typehint)[0] if typing.get_args(typehint) else None
        if typing.get_origin(item) is Literal:
            return "a list of " + ", ".join(str(a) for a in typing.get_args(item))
        return 'a list such as ["a", "b"]'
    words = {int: "an integer", float: "a number", str: "a string", Path: "a path", bool: "true or false"}
    return words.get(typehint, str(typehint))


# --------------------------------------------------------------------------------------- building CLIs
def run(
    body: Callable[[], object],
    *,
    errors: tuple[type[BaseException], ...] = (),
    prefix: str = "error: ",
    interrupted: str = "interrupted",
) -> int:
    """Run a stage and return its exit code: 0; 2 with one line `{prefix}{message}` for the stage's own
    user errors (`errors`) and bad flags; 130 with `interrupted` on Ctrl-C.
    """
    try:
        body()
    except SystemExit as e:  # the parser's: -h (0) or a bad flag (2, its one line already printed)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors as e:
        print(f"{prefix}{e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def run_function(
    main: Callable[..., Any] | dict[str, Any],
    argv: Sequence[str] | None,
    *,
    prog: str,
    **run_kwargs: Any,
) -> int:
    """`main(**flags)` for a typed function (or one of a dict of them, named by the first argument)."""

    def body() -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        jsonargparse.auto_cli(main, args=args, parser_class=Parser, prog=prog)

    return run(body, **run_kwargs)


def dataclass_parser(classes: Sequence[type], *, prog: str, description: str | None = None) -> Parser:
    """One flat group of flags per dataclass: its docstring the title, each field's docstring the help."""
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a configuration file.")
    for cls in classes:
        parser.add_class_arguments(cls)
    return parser


def parse_dataclasses(
    classes: Sequence[type], argv: Sequence[str] | None, *, prog: str, description: str | None = None
) -> list[Any]:
    """One instance of each of `classes`, from the command line."""
    parser = dataclass_parser(classes, prog=prog, description=description)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return [cls(**{f.name: namespace[f.name] for f in fields(cls)}) for cls in classes]


def parse_settings(cls: type[S], argv: Sequence[str] | None, *, prog: str, epilog: str | None = None) -> S:
    """A pydantic-settings object from its environment (prefix, `.env`) and the command line.

    Every field is a flag except those marked `CliSuppress` (secrets: flags show up in `ps`); a flag's
    default is the value the environment gives, so `-h` shows what a run without flags would use.
    """
    from pydantic import TypeAdapter, ValidationError
    from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource

    parser = Parser(prog=prog, description=cls.__doc__, epilog=epilog)
    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        environment = {**DotEnvSettingsSource(cls)(), **EnvSettingsSource(cls)()}
    except ValueError as e:  # e.g. a list setting that is not JSON
        parser.error(f"the environment: {e}")
    for name, field in cls.model_fields.items():
        if argparse.SUPPRESS in field.metadata:  # pydantic-settings' CliSuppress: environment only
            continue
        env_name = (prefix + name).upper()
        default = field.get_default(call_default_factory=True)
        if name in environment:
            try:
                adapter: TypeAdapter[Any] = TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
                default = adapter.validate_python(environment[name])
            except ValidationError as e:
                parser.error(f"{env_name}: " + "; ".join(err["msg"] for err in e.errors()))
        parser.add_argument(
            "--" + name,
            type=field.annotation,
            default=default,
            help=f"{field.description or ''} [env {env_name}]",
        )
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    flags = {k: namespace[k] for k in cls.model_fields if k in namespace}
    try:
        return cls(**flags)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{flag_name(where)}: {message}" if where else message)
        parser.error("; ".join(problems))
