"""host/sip stays sans-IO: no networking, clocks, randomness, threads or OS access."""

from __future__ import annotations

import ast
import pathlib

import host.sip

FORBIDDEN = {"trio", "socket", "time", "random", "asyncio", "threading", "select", "os"}
SIP_DIR = pathlib.Path(host.sip.__file__).parent


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_io_imports_in_host_sip():
    modules = sorted(SIP_DIR.rglob("*.py"))
    assert len(modules) >= 5
    offenders = {str(p.relative_to(SIP_DIR)): sorted(imported_roots(p.read_text()) & FORBIDDEN)
                 for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walker_sees_every_import_form():
    src = "import os.path\nfrom time import monotonic\nimport trio as t\n__import__('socket')\nfrom . import x\n"
    assert imported_roots(src) == {"os", "time", "trio", "socket"}
