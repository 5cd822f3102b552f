"""host/sip stays sans-IO and at the bottom of the layers: no networking,
clocks, randomness, threads or OS access, and nothing from the layers above
it (routes, shell, runtimes), directly or through any module it imports."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import host.sip

FORBIDDEN = {"trio", "socket", "time", "random", "asyncio", "threading", "select", "os"}
# Layers above the core: importing one would bring its I/O along.
ABOVE = ("host.routes", "host.shell", "host.supervision", "host.storage", "runtimes", "sdk")
SIP_DIR = pathlib.Path(host.sip.__file__).parent
ROOT = SIP_DIR.parent.parent
PROJECT = ("host", "runtimes", "sdk")


def imported_modules(source: str, package: str = "") -> set[str]:
    """Absolute names of the modules `source` imports; relative imports are
    resolved against `package` (the importing module's package)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names.add(module)
                # `from . import x` may import the submodule x
                names.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def imported_roots(source: str) -> set[str]:
    return {root for root in (name.split(".")[0] for name in imported_modules(source)) if root}


def _source_of(module: str) -> tuple[pathlib.Path, str] | None:
    """The file of a project module (a package's __init__), None for others."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            package = module if candidate.name == "__init__.py" else module.rpartition(".")[0]
            return candidate, package
    return None


def transitive_imports(module: str) -> dict[str, str]:
    """Every module `module` reaches through project modules -> the project
    module that imports it first (for the failure message)."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        found = _source_of(current)
        if found is None:
            continue
        path, package = found
        for name in imported_modules(path.read_text(), package):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = name.split(".")
            for n in range(1, len(parts) + 1):
                prefix = ".".join(parts[:n])
                if prefix and prefix not in seen:
                    seen[prefix] = current
                    if parts[0] in PROJECT:
                        todo.append(prefix)
    return seen


def _sip_modules() -> list[str]:
    return sorted("host.sip." + p.stem for p in SIP_DIR.glob("*.py")
                  if p.stem not in ("__init__", "_speedups_build"))


def _violations(reached: dict[str, str]) -> list[str]:
    bad = []
    for name, via in reached.items():
        if name.split(".")[0] in FORBIDDEN or any(name == a or name.startswith(a + ".") for a in ABOVE):
            bad.append(f"{name} (imported by {via})")
    return sorted(bad)


def test_no_io_imports_in_host_sip():
    modules = sorted(SIP_DIR.rglob("*.py"))
    assert len(modules) >= 5
    offenders = {str(p.relative_to(SIP_DIR)): sorted(imported_roots(p.read_text()) & FORBIDDEN)
                 for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_io_or_upper_layer_reached_transitively():
    modules = _sip_modules()
    assert "host.sip.proxy" in modules and len(modules) >= 10
    offenders = {m: _violations(transitive_imports(m)) for m in modules}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_importing_the_core_loads_no_upper_layer():
    # What Python really loads (the AST walk above cannot see an import
    # made by a C extension or through importlib): a fresh interpreter.
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in _sip_modules())
            + "print('\\n'.join(sorted(sys.modules)))\n")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=60).stdout.split()
    bad = [m for m in loaded if m.split(".")[0] in ("trio", "lupa", "orjson")
           or any(m == a or m.startswith(a + ".") for a in ABOVE)]
    assert bad == []


def test_the_walker_sees_every_import_form():
    src = "import os.path\nfrom time import monotonic\nimport trio as t\n__import__('socket')\nfrom . import x\n"
    assert imported_roots(src) == {"os", "time", "trio", "socket"}
    assert imported_modules("from ..routes import event\n", "host.sip") >= {"host.routes.event"}


def test_the_transitive_walk_would_catch_an_upper_layer():
    # host.shell.server imports trio and host.routes: the walk must say so.
    found = _violations(transitive_imports("host.shell.server"))
    assert any(v.startswith("trio") for v in found)
    assert any(v.startswith("host.routes") for v in found)
