"""`babelsip ctl METHOD [ARGS...]`: the management API from a shell.

    babelsip ctl routes.list
    babelsip ctl routes.reload main
    babelsip ctl ul.lookup sip:alice@example.com
    babelsip ctl stats.get_statistics core: tm:
    babelsip ctl --json dlg.list
    babelsip ctl --url http://127.0.0.1:8080 --token-file /etc/babelsip/token core.info

Arguments are JSON values (`5`, `true`, `["a"]`) or, when they do not parse
as JSON, strings; `key=value` arguments are passed by name instead. Output is
a table for a person by default, the JSON result with --json.
Exit status: 0 answered, 1 the method answered an error, 2 could not ask
(no server, refused token, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request

from host.management.jsonrpc import request
from host.management.unix import candidate_paths, existing_socket_path


class CtlError(Exception):
    """The question could not be asked (exit 2)."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="babelsip ctl",
                                description="Call a method of a running server's management API.")
    p.add_argument("--socket", metavar="PATH", help="the server's UNIX socket (default: the first of "
                   + ", ".join(candidate_paths()) + " that exists)")
    p.add_argument("--url", metavar="URL", help="the server's HTTP listener, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", metavar="TOKEN", help="bearer token for --url (else --token-file or "
                                                    "$BABELSIP_HTTP_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("method", help="e.g. core.info, routes.list (system.listMethods lists them)")
    p.add_argument("args", nargs="*", help="JSON values or key=value")
    return p.parse_args(argv)


def params_of(args: list[str]) -> list | dict:
    named = [a for a in args if "=" in a and not a.startswith(("{", "[", '"'))]
    if named and len(named) != len(args):
        raise CtlError("give every argument as key=value, or none")
    if named:
        return {k: _value(v) for k, v in (a.split("=", 1) for a in named)}
    return [_value(a) for a in args]


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def call(opts, payload: bytes) -> dict:
    if opts.url:
        return _call_http(opts, payload)
    path = opts.socket or existing_socket_path()
    if path is None:
        raise CtlError("no server is running here: no management socket at "
                       + " or ".join(candidate_paths()) + " (give --socket PATH or --url URL)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(opts.timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise CtlError(f"no server is running at {path} (nothing answers on the socket)") from None
        except PermissionError:
            raise CtlError(f"{path}: permission denied (the socket belongs to the server's user)") from None
        sock.sendall(payload + b"\n")
        data = bytearray()
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise CtlError(f"{path}: the server closed the connection without answering")
            data += chunk
    except socket.timeout:
        raise CtlError(f"{path}: no answer within {opts.timeout:g} s") from None
    finally:
        sock.close()
    return json.loads(bytes(data).split(b"\n", 1)[0])


def _call_http(opts, payload: bytes) -> dict:
    token = opts.token
    if token is None and opts.token_file:
        try:
            token = open(opts.token_file).read().strip()
        except OSError as exc:
            raise CtlError(f"--token-file {opts.token_file}: {exc.strerror}") from None
    token = token or os.environ.get("BABELSIP_HTTP_TOKEN")
    if not token:
        raise CtlError("--url needs a token: --token, --token-file or $BABELSIP_HTTP_TOKEN")
    url = opts.url.rstrip("/") + "/RPC"
    req = urllib.request.Request(url, data=payload, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=opts.timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise CtlError(f"{url}: the server refused the token (401)") from None
        raise CtlError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise CtlError(f"no server is answering at {opts.url} ({exc.reason})") from None
    except (TimeoutError, socket.timeout):
        raise CtlError(f"{url}: no answer within {opts.timeout:g} s") from None


# ------------------------------------------------------------------ output
def render(result) -> str:
    """A person's view of a result: scalars as `key: value`, lists of
    objects as tables, objects of lists (ul.dump's AoRs) as one table."""
    lines: list[str] = []
    _render(result, lines, "")
    return "\n".join(lines)


def _render(value, lines, title):
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if title:
            lines.append(f"{title}:")
        lines.extend(table(value))
    elif isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
        width = max((len(str(k)) for k in scalars), default=0)
        for k, v in scalars.items():
            lines.append(f"{(title + '.' if title else '') + str(k):<{width}}  {_cell(v)}")
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                name = f"{title}.{k}" if title else str(k)
                if isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
                    rows = [{"key": key, **(item if isinstance(item, dict) else {"value": item})}
                            for key, items in v.items() for item in items]
                    lines.append(f"{name}:")
                    lines.extend(table(rows) if rows else ["  (none)"])
                elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
                    lines.append(f"{name}:")
                    lines.extend(table([{"name": key, **item} for key, item in v.items()]))
                elif isinstance(v, list) and not v:
                    lines.append(f"{name}: (none)")
                else:
                    _render(v, lines, name)
    elif isinstance(value, list):
        lines.append((f"{title}: " if title else "") + ", ".join(_cell(v) for v in value))
    else:
        lines.append((f"{title}: " if title else "") + _cell(value))


# Columns a terminal table leaves out (--json has them): a histogram, a path
# already in the route's name.
HIDDEN_COLUMNS = frozenset({"latency", "file"})


def table(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in HIDDEN_COLUMNS)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    try:
        payload = request(opts.method, params_of(opts.args), 1)
        answer = call(opts, payload)
    except CtlError as exc:
        print(f"babelsip ctl: {exc}", file=sys.stderr)
        return 2
    if "error" in answer:
        err = answer["error"]
        if opts.json:
            print(json.dumps(err, indent=2))
        data = f" ({err['data']})" if err.get("data") is not None else ""
        print(f"babelsip ctl: {opts.method}: error {err['code']}: {err['message']}{data}", file=sys.stderr)
        return 1
    result = answer.get("result")
    print(json.dumps(result, indent=2, sort_keys=True) if opts.json else render(result))
    return 0
