r"""routes.toml: which route takes which request, and how each route runs.

The file is optional. Without it the route `main` handles every initial
request with the default settings below. Route names are file stems compared
case-insensitively (`Main.java` is the route `main`), so names in this file
are case-insensitive too.

    # DIR/routes.toml
    default = "main"            # route for requests no [[match]] takes (default "main")

    # Rules are tried top to bottom; the first whose conditions ALL hold wins.
    # A list inside one condition means "any of these".
    [[match]]
    route = "registrar"
    method = "REGISTER"                     # or ["REGISTER", "OPTIONS"]; case-sensitive

    [[match]]
    route = "acme"
    ruri_host = '^(.+\.)?acme\.example$'    # regex, searched (anchor with ^ $)
    ruri_user = '^\+33'                     # regex on the request-URI user ("" if none)
    source = ["10.0.0.0/8", "2001:db8::/32"]  # CIDR, IPv4 or IPv6
    header = "X-Tenant"                     # header present (or a list: all present)
    header_regex = { name = "X-Tenant", pattern = "^acme$" }  # or a list of such

    [routes.main]                           # per-route settings, all optional
    runtime = "luajit"          # default by extension: .lua lua54, .py python,
                                # .pl perl, .java java, .remote tcp, executable+shebang exec
    deadline = 0.5              # seconds one event may take (default 1.0)
    fallback = 503              # answer when the script fails: a code (default 500),
    # fallback = { code = 503, reason = "Service Unavailable", retry_after = 30 }
    # fallback = { relay = "sip:backup@192.0.2.10" }   # or a list of targets
    restart = { intensity = 5, period = 10, retry_every = 30 }
                                # at most 5 restarts in 10 s, then the route is
                                # failed and retried every 30 s and on file change
    pool = 2                    # workers (external runtimes, default 2)
    memory_mb = 64              # Lua memory cap / worker address space (default 64)
    options = { }               # runtime-specific settings, passed through
    confine = { write = ["/var/spool/x"], network = false }
                                # worker runtimes only: Landlock and no-network
                                # jail (host/privileges/confinement.py)
    shared_store = false        # true: this route's store keys are the shared
                                # namespace, seen by every route with the option;
                                # false (default): under the prefix "route:NAME:",
                                # so routes do not see each other's keys

Any mistake — bad TOML, an unknown key, a bad regex or CIDR, a route with no
file — is a `ConfigError` naming the file and line. On reload a bad file is
reported and the working table stays in force.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from host.routes.table import DEFAULT_ROUTE, Match, RouteTable
from host.routes.verbs import Decision
from host.privileges.confinement import Confinement, ConfinementError, check_runtime, parse_confine
from host.supervision.policy import RestartPolicy

CONFIG_NAME = "routes.toml"

# Runtimes the registry knows how to build; an extension picks one by default.
RUNTIMES = frozenset({"lua54", "luajit", "python", "perl", "java", "exec", "tcp"})

# RFC 3261 §21 reason phrases for the codes a fallback is likely to use.
REASONS = {
    403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    480: "Temporarily Unavailable", 486: "Busy Here", 500: "Server Internal Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    603: "Decline",
}


class ConfigError(Exception):
    """routes.toml (or the folder) is wrong; `line` may be None when unknown."""

    def __init__(self, file: str | Path, line: int | None, message: str):
        self.file, self.line, self.message = str(file), line, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Fallback:
    """What a call gets when its route cannot decide: a reply, or a relay."""

    code: int = 500
    reason: str = REASONS[500]
    retry_after: int | None = None          # adds Retry-After (RFC 3261 §20.33)
    relay: tuple[str, ...] = ()             # non-empty: relay here instead of replying

    def decision(self) -> Decision:
        """A fresh Decision each time: the engine may edit what it gets."""
        if self.relay:
            return Decision(verb="relay", targets=list(self.relay))
        headers = [("Retry-After", str(self.retry_after))] if self.retry_after is not None else []
        return Decision(verb="reply", code=self.code, reason=self.reason, headers=headers)


@dataclass(frozen=True)
class RouteSettings:
    runtime: str | None = None              # None: chosen by the file's extension
    deadline: float = 1.0
    fallback: Fallback = Fallback()
    restart: RestartPolicy = RestartPolicy()
    pool: int = 2
    memory_mb: int = 64
    options: tuple = ()                     # sorted (key, value) pairs
    shared_store: bool = False              # kv keys unprefixed (RuntimeSpec.store_prefix)
    confine: Confinement | None = None      # worker jail (host/privileges/confinement.py)

    def runtime_fields(self) -> tuple:
        """The settings a running runtime was built with: changing any of them
        needs a new generation; the others apply to the next event."""
        return (self.runtime, self.deadline, self.pool, self.memory_mb, self.options,
                self.shared_store, self.confine)


@dataclass(frozen=True)
class RoutesConfig:
    table: RouteTable = field(default_factory=RouteTable)
    routes: dict = field(default_factory=dict)   # name -> RouteSettings
    defaults: RouteSettings = RouteSettings()
    file: str | None = None                      # None: no routes.toml

    def settings(self, route: str) -> RouteSettings:
        return self.routes.get(route, self.defaults)


def route_name(stem: str) -> str:
    return stem.lower()


def load_config(directory: Path, *, known_routes: set[str] | None = None,
                defaults: RouteSettings = RouteSettings()) -> RoutesConfig:
    """Read DIR/routes.toml, or the built-in config when there is none."""
    path = Path(directory) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RoutesConfig(defaults=defaults)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    return parse_config(text, path, known_routes=known_routes, defaults=defaults)


def parse_config(text: str, file: str | Path, *, known_routes: set[str] | None = None,
                 defaults: RouteSettings = RouteSettings()) -> RoutesConfig:
    """Parse and check routes.toml text; `known_routes` (names with a file)
    turns a reference to a missing route into an error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        end = text.count("\n") + 1 if "end of document" in str(exc) else None
        raise ConfigError(file, int(line.group(1)) if line else end, f"TOML syntax: {msg}") from None
    return _Parser(text, file, known_routes, defaults).config(data)


_TOP_KEYS = {"default", "match", "routes"}
_MATCH_KEYS = {"route", "method", "ruri_user", "ruri_host", "source", "header", "header_regex"}
_ROUTE_KEYS = {"runtime", "deadline", "fallback", "restart", "pool", "memory_mb", "options",
               "shared_store", "confine"}
_FALLBACK_KEYS = {"code", "reason", "retry_after", "relay"}
_RESTART_KEYS = {"intensity", "period", "retry_every"}


class _Parser:
    def __init__(self, text, file, known_routes, defaults):
        self.file, self.known, self.defaults = file, known_routes, defaults
        self.locate = _Locator(text)

    def fail(self, section: tuple, key: str | None, message: str):
        raise ConfigError(self.file, self.locate(section, key), message)

    def config(self, data: dict) -> RoutesConfig:
        self.unknown_keys(data, _TOP_KEYS, (), "top level")
        default = data.get("default", DEFAULT_ROUTE)
        if not isinstance(default, str) or not default:
            self.fail((), "default", "default must be a route name (a string)")
        default = route_name(default)
        if "default" in data:
            self.check_known(default, (), "default")
        rules = data.get("match", [])
        if not isinstance(rules, list):
            self.fail((), "match", "match must be an array of tables: write [[match]]")
        matches = tuple(self.match(i, rule) for i, rule in enumerate(rules))
        routes_data = data.get("routes", {})
        if not isinstance(routes_data, dict):
            self.fail((), "routes", "routes must be a table: write [routes.NAME]")
        routes = {}
        for name, table in routes_data.items():
            key = route_name(name)
            if key in routes:
                self.fail(("routes", name), None, f"route {key!r} is configured twice (names are case-insensitive)")
            self.check_known(key, ("routes", name), None)
            routes[key] = self.route(name, table)
        return RoutesConfig(RouteTable(matches, default), routes, self.defaults, str(self.file))

    def unknown_keys(self, table: dict, allowed: set, section: tuple, what: str):
        for key in table:
            if key not in allowed:
                self.fail(section, key, f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")

    def check_known(self, route: str, section: tuple, key: str | None):
        if self.known is not None and route not in self.known:
            have = ", ".join(sorted(self.known)) or "none"
            self.fail(section, key, f"route {route!r} has no file in the routes folder (routes: {have})")

    def match(self, index: int, rule) -> Match:
        sec = ("match", index)
        if not isinstance(rule, dict):
            self.fail(sec, None, "each [[match]] must be a table")
        self.unknown_keys(rule, _MATCH_KEYS, sec, "[[match]]")
        route = rule.get("route")
        if not isinstance(route, str) or not route:
            self.fail(sec, "route" if "route" in rule else None, "[[match]] needs route = \"NAME\"")
        route = route_name(route)
        self.check_known(route, sec, "route")
        methods = None
        if "method" in rule:
            methods = frozenset(self.strings(rule["method"], sec, "method"))
        sources = None
        if "source" in rule:
            nets = []
            for cidr in self.strings(rule["source"], sec, "source"):
                try:
                    nets.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError as exc:
                    self.fail(sec, "source", f"source: bad CIDR {cidr!r}: {exc}")
            sources = tuple(nets)
        headers = ()
        if "header" in rule:
            headers = tuple(h.lower() for h in self.strings(rule["header"], sec, "header"))
        regexes = ()
        if "header_regex" in rule:
            items = rule["header_regex"]
            items = [items] if isinstance(items, dict) else items
            if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
                self.fail(sec, "header_regex", "header_regex must be { name = ..., pattern = ... } or a list of them")
            out = []
            for item in items:
                self.unknown_keys(item, {"name", "pattern"}, sec, "header_regex")
                name, pattern = item.get("name"), item.get("pattern")
                if not isinstance(name, str) or not name or not isinstance(pattern, str):
                    self.fail(sec, "header_regex", "header_regex needs a name and a pattern (strings)")
                out.append((name.lower(), self.regex(pattern, sec, "header_regex")))
            regexes = tuple(out)
        return Match(
            route=route, methods=methods,
            ruri_user=self.regex(rule["ruri_user"], sec, "ruri_user") if "ruri_user" in rule else None,
            ruri_host=self.regex(rule["ruri_host"], sec, "ruri_host") if "ruri_host" in rule else None,
            sources=sources, headers=headers, header_regexes=regexes,
            line=self.locate(sec, None),
        )

    def strings(self, value, sec, key) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
            self.fail(sec, key, f"{key} must be a string or a non-empty list of strings")
        return items

    def regex(self, pattern, sec, key) -> re.Pattern:
        if not isinstance(pattern, str):
            self.fail(sec, key, f"{key} must be a regex string")
        try:
            return re.compile(pattern)
        except re.error as exc:
            self.fail(sec, key, f"{key}: bad regex {pattern!r}: {exc}")

    def route(self, name: str, table) -> RouteSettings:
        sec = ("routes", name)
        if not isinstance(table, dict):
            self.fail(sec, None, f"routes.{name} must be a table")
        self.unknown_keys(table, _ROUTE_KEYS, sec, f"[routes.{name}]")
        d = self.defaults
        runtime = table.get("runtime", d.runtime)
        if runtime is not None and runtime not in RUNTIMES:
            self.fail(sec, "runtime", f"unknown runtime {runtime!r} (known: {', '.join(sorted(RUNTIMES))})")
        deadline = table.get("deadline", d.deadline)
        if not _positive(deadline):
            self.fail(sec, "deadline", f"deadline must be a positive number of seconds, got {deadline!r}")
        pool = table.get("pool", d.pool)
        if not _positive_int(pool):
            self.fail(sec, "pool", f"pool must be a positive integer, got {pool!r}")
        memory = table.get("memory_mb", d.memory_mb)
        if not _positive_int(memory):
            self.fail(sec, "memory_mb", f"memory_mb must be a positive integer, got {memory!r}")
        shared = table.get("shared_store", d.shared_store)
        if not isinstance(shared, bool):
            self.fail(sec, "shared_store", f"shared_store must be true or false, got {shared!r}")
        options = table.get("options", None)
        if options is None:
            options = d.options
        elif isinstance(options, dict):
            options = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
        else:
            self.fail(sec, "options", "options must be a table")
        confine = d.confine
        if "confine" in table:
            try:
                confine = parse_confine(table["confine"])
                if runtime is not None:
                    check_runtime(runtime)
            except ConfinementError as exc:
                self.fail(sec, "confine", str(exc))
        return RouteSettings(
            runtime=runtime, deadline=float(deadline), pool=pool, memory_mb=memory, options=options,
            shared_store=shared, confine=confine,
            fallback=self.fallback(table["fallback"], sec) if "fallback" in table else d.fallback,
            restart=self.restart(table["restart"], sec) if "restart" in table else d.restart,
        )

    def fallback(self, value, sec) -> Fallback:
        if _positive_int(value):
            value = {"code": value}
        if not isinstance(value, dict):
            self.fail(sec, "fallback", "fallback must be a code, { code = ..., retry_after = ... } or { relay = ... }")
        self.unknown_keys(value, _FALLBACK_KEYS, sec, "fallback")
        if "relay" in value:
            if set(value) != {"relay"}:
                self.fail(sec, "fallback", "fallback: relay cannot be combined with code/reason/retry_after")
            targets = self.strings(value["relay"], sec, "fallback")
            if not all(":" in t for t in targets):
                self.fail(sec, "fallback", f"fallback: relay targets must be SIP URIs, got {targets!r}")
            return Fallback(relay=tuple(targets))
        code = value.get("code", 500)
        if not _positive_int(code) or not 300 <= code <= 699:
            self.fail(sec, "fallback", f"fallback code must be 300-699, got {code!r}")
        reason = value.get("reason", REASONS.get(code, "Server Internal Error" if code >= 500 else "Failed"))
        if not isinstance(reason, str) or "\r" in reason or "\n" in reason:
            self.fail(sec, "fallback", "fallback reason must be a one-line string")
        retry_after = value.get("retry_after")
        if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0):
            self.fail(sec, "fallback", f"fallback retry_after must be whole seconds >= 0, got {retry_after!r}")
        return Fallback(code=code, reason=reason, retry_after=retry_after)

    def restart(self, value, sec) -> RestartPolicy:
        if not isinstance(value, dict):
            self.fail(sec, "restart", "restart must be { intensity = ..., period = ..., retry_every = ... }")
        self.unknown_keys(value, _RESTART_KEYS, sec, "restart")
        base = self.defaults.restart
        try:
            return RestartPolicy(
                intensity=value.get("intensity", base.intensity),
                period=value.get("period", base.period),
                retry_every=value.get("retry_every", base.retry_every),
            )
        except ValueError as exc:
            self.fail(sec, "restart", str(exc))


def _positive(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0


def _positive_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v > 0


def _freeze(v):
    """Options must be hashable to live in the frozen RuntimeSpec."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


class _Locator:
    """Finds the line of a key for semantic errors by scanning the text:
    tomllib keeps no positions, and "the line of the key" is all an operator
    needs. Sections: () top level, ("match", i) the i-th [[match]],
    ("routes", name) [routes.name] and its sub-tables."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.sections: list[tuple[int, tuple]] = [(0, ())]   # (first index, section)
        count = 0
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if not m or line.lstrip().startswith("#"):
                continue
            parts = tuple(p.strip().strip("\"'") for p in m.group(2).split("."))
            if m.group(1) == "[[" and parts == ("match",):
                self.sections.append((i, ("match", str(count))))
                count += 1
            else:
                self.sections.append((i, parts))

    def __call__(self, section: tuple, key: str | None) -> int | None:
        want = tuple(str(p) for p in section)   # TOML keys are case-sensitive
        ranges = []
        for n, (start, sec) in enumerate(self.sections):
            if (n == 0) if want == () else sec[:len(want)] == want:
                end = self.sections[n + 1][0] if n + 1 < len(self.sections) else len(self.lines)
                ranges.append((start, end, sec))
        if key is not None:
            key_re = re.compile(r"(?:^|[{,])\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
            for start, end, sec in ranges:
                for i in range(start, end):
                    if key_re.search(self.lines[i]):
                        return i + 1
            # A sub-table named after the key: [routes.main.fallback]
            for start, _end, sec in self.sections_named(want + (key,)):
                return start + 1
        if ranges and want:
            return ranges[0][0] + 1
        if not ranges and len(want) > 1:   # written inline: [routes] main = { ... }
            return self(want[:-1], want[-1])
        return None

    def sections_named(self, want: tuple):
        for start, sec in self.sections:
            if sec == want:
                yield start, None, sec
