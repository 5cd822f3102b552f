"""`--config babelsip.toml`: the `run` options, read from a TOML file.

The file's keys are not listed here: they are the `run` parser's own
actions, so a flag added to `babelsip run` is a configuration key at once,
checked by the same `type=` callable (and so with the same message). A key
is the flag's dest (`--tcp-max-connections` -> `tcp_max_connections`),
accepted at top level or in its section (SECTIONS):

    [server]
    listen = ["udp:127.0.0.1:5060"]
    [tcp]
    max_connections = 2048          # the same as tcp_max_connections = 2048

A flag on the command line overrides the file; `append` flags take a list,
`store_true` flags a boolean. Relative paths in the file are relative to the
file's directory. Every problem is a ConfigFileError naming file:line: key;
tomllib reports no line for a value, so `find_line` finds it in the text.

Pure functions over text and an ArgumentParser: no sockets, no trio.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Section:
    """A TOML table and the dests it holds."""
    name: str
    dests: tuple[str, ...] = ()      # dests placed here by name
    strip: str = ""                  # dests starting with it, key without it: tcp_x -> [tcp] x
    prefixes: tuple[str, ...] = ()   # dests starting with one of these, key unchanged


SECTIONS = (
    Section("server", dests=("listen", "routes", "relay_to", "store", "workers", "domain", "advertise",
                              "user", "group", "worker_user")),
    Section("registrar", dests=("min_expires", "max_expires", "default_expires", "max_contacts")),
    Section("auth", strip="auth_"),
    Section("nat", dests=("keepalive", "stun")),
    Section("tcp", strip="tcp_"),
    Section("log", strip="log_"),
    Section("management", prefixes=("ctl_", "http", "management_", "mgmt_", "metrics_")),
)

# Not settable in the file: what names the file, and argparse's own.
NOT_KEYS = frozenset({"config", "help", "version", "command"})

# A value of one of these is a filesystem path (resolved against the file's
# directory) even when its action has no type=Path: e.g. `--ctl-socket PATH`.
PATH_METAVARS = frozenset({"DIR", "FILE", "PATH"})


class ConfigFileError(Exception):
    def __init__(self, file: str, line: int | None, key: str | None, message: str,
                 column: int | None = None):
        super().__init__(message)
        self.file, self.line, self.key, self.message = file, line, key, message
        self.column = column

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.line and self.column:
            where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


# ---------------------------------------------------------------- keys


def key_of(dest: str) -> tuple[str | None, str]:
    """(section, key) a dest is written as in its table; (None, dest) for one
    without a section (it lives at top level)."""
    for section in SECTIONS:
        if dest in section.dests or any(dest.startswith(p) for p in section.prefixes):
            return section.name, dest
        if section.strip and dest.startswith(section.strip) and len(dest) > len(section.strip):
            return section.name, dest[len(section.strip):]
    return None, dest


def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action for every option the file may set."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in NOT_KEYS and a.dest is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}


# ---------------------------------------------------------------- lines

_HEADER = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=""")
_PART = re.compile(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)""")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(m.group(1) if m.group(1) is not None else m.group(2) if m.group(2) is not None
                 else m.group(3) for m in _PART.finditer(dotted))


def find_line(text: str, path: tuple[str, ...]) -> int | None:
    """The line (1-based) where the key or table `path` is defined: the line
    of `[tcp]` then `max_connections =`, or of a dotted `tcp.max_connections =`.
    When the path itself is not written out (a key inside an inline table),
    the line of its longest written prefix. A scan, not a parser: lines inside
    multi-line strings could mislead it, which a configuration does not hold."""
    table: tuple[str, ...] = ()
    best, best_len = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("#"):
            table = _parts(header.group(1))
            defined = table
        else:
            key = _KEY.match(line)
            if not key or line.lstrip().startswith("#"):
                continue
            defined = table + _parts(key.group(1))
        if defined == path:
            return number
        if len(defined) > best_len and path[:len(defined)] == defined:
            best, best_len = number, len(defined)
    return best


# ---------------------------------------------------------------- values


def _convert_one(action: argparse.Action, value, base: Path):
    """One TOML value through the flag's own type= callable (so the message
    is the flag's), as a string, the way argparse hands it the command line."""
    if isinstance(value, bool) or isinstance(value, (dict, list)) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {_expected(action)}, got {_toml_kind(value)}")
    if action.type is None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {_toml_kind(value)}")
    text = str(value)
    converted = text
    if action.type is not None:
        try:
            converted = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", repr(action.type))
            raise ValueError(f"invalid {name} value: {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ValueError(f"invalid choice: {converted!r} (choose from {choices})")
    if _is_path(action):
        converted = type(converted)(base / converted) if isinstance(converted, Path) else \
            os.path.join(base, converted)
    return converted


def _is_path(action: argparse.Action) -> bool:
    return action.type is Path or action.metavar in PATH_METAVARS


def _expected(action: argparse.Action) -> str:
    return "a string" if action.type in (None, str, Path) or _is_path(action) else "a value"


def _toml_kind(value) -> str:
    return {bool: "a boolean", dict: "a table", list: "an array", str: "a string",
            int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def convert(action: argparse.Action, value, base: Path):
    """A TOML value as the flag would have set it, or ValueError(message)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_kind(value)}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._StoreConstAction):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_kind(value)}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]   # one value is a list of one
        return [_convert_one(action, item, base) for item in items]
    return _convert_one(action, value, base)


# ---------------------------------------------------------------- the file


def load_config(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict:
    """dest -> value for every key of the file at `path`, each checked by the
    option of `parser` (the `run` subparser) it sets. ConfigFileError otherwise."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigFileError(name, None, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(name, raw[:exc.start].count(b"\n") + 1, None, "not UTF-8 text") from None
    return parse_config(text, name, parser, base=Path(os.path.abspath(path)).parent)


def parse_config(text: str, name: str, parser: argparse.ArgumentParser, *, base: Path) -> dict:
    """`load_config` on text already read: `name` is only for messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(name, text, exc) from None
    actions = settable_actions(parser)
    by_key: dict[tuple[str | None, str], str] = {}
    for dest in actions:
        by_key[key_of(dest)] = dest
    sections = {s.name for s in SECTIONS}
    values: dict[str, object] = {}
    where: dict[str, tuple[str, ...]] = {}

    def error(path: tuple[str, ...], message: str) -> ConfigFileError:
        return ConfigFileError(name, find_line(text, path), ".".join(path), message)

    def take(path: tuple[str, ...], dest: str, value) -> None:
        if dest in values:
            raise error(path, f"set twice (also as {'.'.join(where[dest])})")
        try:
            values[dest] = convert(actions[dest], value, base)
        except ValueError as exc:
            raise error(path, str(exc)) from None
        where[dest] = path

    for key, value in document.items():
        if key in sections and isinstance(value, dict):
            for inner, inner_value in value.items():
                dest = by_key.get((key, inner))
                if dest is None:
                    elsewhere = [s for s, k in by_key if k == inner and s not in (None, key)]
                    if elsewhere:
                        raise error((key, inner), f"unknown key in [{key}] (it belongs in [{elsewhere[0]}])")
                    raise error((key, inner), _unknown(f"key in [{key}]",
                                                       inner, [k for s, k in by_key if s == key]))
                take((key, inner), dest, inner_value)
        elif key in actions:
            take((key,), key, value)
        elif key in sections:
            raise error((key,), f"expected a table ([{key}]), got {_toml_kind(value)}")
        elif isinstance(value, dict):
            raise error((key,), _unknown("table", key, sorted(sections)))
        else:
            raise error((key,), _unknown("key", key, sorted(actions) + sorted(sections)))
    _check_exclusive(parser, values, [where[d] for d in values], text, error)
    return values


def _unknown(what: str, key: str, known) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _check_exclusive(parser, values, paths, text, error) -> None:
    """The file may not set two options the command line would refuse
    together: the later of the two is the error."""
    where = dict(zip(values, paths))
    for group in parser._mutually_exclusive_groups:
        given = [where[a.dest] for a in group._group_actions if a.dest in values]
        if len(given) > 1:
            first, second = sorted(given, key=lambda p: find_line(text, p) or 0)[:2]
            raise error(second, f"not allowed with {'.'.join(first)}")


def _syntax_error(name: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigFileError:
    # Python 3.14 gives lineno/colno; before, only the "(at line L, column C)"
    # or "(at end of document)" text: the end is the last line.
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
    column = getattr(exc, "colno", None) or (int(found.group(2)) if found else None)
    if found:
        message = message[:found.start()]
    elif message.endswith("(at end of document)"):
        message = message[:-len("(at end of document)")].rstrip()
        line = line or max(1, len(text.splitlines()))
    message = getattr(exc, "msg", None) or message
    return ConfigFileError(name, line, None, f"TOML syntax: {message}", column=column)


# ---------------------------------------------------------------- with the command line


def given_on_command_line(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser,
                          argv: list[str] | None) -> set[str]:
    """The dests of `sub` (a subparser of `parser`) that `argv` sets: argv
    parsed again with every default of `sub` suppressed, so an option left
    out leaves no attribute behind."""
    saved = [(action, action.default) for action in sub._actions]
    try:
        for action in sub._actions:
            action.default = argparse.SUPPRESS
        namespace = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(namespace))


def merge(args: argparse.Namespace, values: dict, given: set[str],
          parser: argparse.ArgumentParser) -> None:
    """Set the file's values on `args` under the flags given: a flag given
    replaces its key (a list too), and one member of a mutually exclusive
    group given (--relay-to) drops the file's other members (routes)."""
    overridden = set(given)
    for group in parser._mutually_exclusive_groups:
        dests = {a.dest for a in group._group_actions}
        if dests & given:
            overridden |= dests
    for dest, value in values.items():
        if dest not in overridden:
            setattr(args, dest, value)


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def where_set(path: str | os.PathLike, dest: str) -> str:
    """'file:line: key' for the key of a file already loaded that set `dest`,
    for a problem found later (a routes folder that is not there)."""
    section, key = key_of(dest)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    for written in ((section, key), (dest,)) if section else ((dest,),):
        line = find_line(text, written)
        if line is not None and len(written) == len(find_path(text, line)):
            return f"{path}:{line}: {'.'.join(written)}"
    return f"{path}: {dest}"


def find_path(text: str, line: int) -> tuple[str, ...]:
    """The key path defined on `line` (its table's, for a header)."""
    table: tuple[str, ...] = ()
    for number, content in enumerate(text.splitlines(), 1):
        header = _HEADER.match(content)
        key = None if header else _KEY.match(content)
        if header:
            table = _parts(header.group(1))
        if number == line:
            return table if header else table + (_parts(key.group(1)) if key else ())
    return ()


# What `check` takes from the file besides checking all of it: its routes.
CHECK_TAKES = ("routes",)


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args(argv), with `--config FILE`'s values beneath the
    flags. `run` takes every key; `check` checks every key against `run`'s
    options and takes its routes. `args.config_values` holds what the file
    set. A bad file: `babelsip: error: file:line: key: message` on stderr
    and exit 2 for `run`; the same line on stdout and exit 1 for `check`
    (its problems go to stdout)."""
    args = parser.parse_args(argv)
    args.config_values = {}
    if getattr(args, "config", None) is None:
        return args
    run = subparser(parser, "run")
    try:
        values = load_config(args.config, run)
    except ConfigFileError as exc:
        if args.command == "check":
            print(exc)
            raise SystemExit(1)
        print(f"babelsip: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    args.config_values = values
    own = subparser(parser, args.command)
    given = given_on_command_line(parser, own, argv if argv is not None else sys.argv[1:])
    if args.command == "run":
        merge(args, values, given, run)
    else:
        merge(args, {k: v for k, v in values.items() if k in CHECK_TAKES}, given, own)
    return args
