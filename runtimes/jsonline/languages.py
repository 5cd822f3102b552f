"""How to start a worker per language: a small pluggable table.

Each `Language` turns a RuntimeSpec into an argv (its `prepare` hook may do
work first, e.g. compile Java once per generation into a cache) and says how
much address space the worker needs at least: a JVM reserves far more
virtual memory than it uses, so RLIMIT_AS must be generous for it.
`register()` lets an SDK replace or add an entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio

from host.routes.runtime import LoadError, RuntimeSpec

SDK_ROOT = Path(__file__).resolve().parents[2] / "sdk"
# Stands between the host and an `exec` route, which may know nothing of the
# lifeline (sdk/PROTOCOL.md §9): it SIGKILLs the route's process group when
# the host dies. Standard library only: `-I -S` skip site and PYTHON* (~15 ms).
GUARD = SDK_ROOT / "python" / "babelsip_sdk" / "lifeline.py"
JAVA_MAIN = "babelsip.Runner"   # the Java SDK's runner class: `Runner <RouteClass>`


@dataclass(frozen=True)
class Language:
    name: str
    prepare: Callable[[RuntimeSpec, Path], Awaitable[list[str]]]  # (spec, state_dir) -> argv
    min_memory_mb: int                    # RLIMIT_AS floor
    env: dict = field(default_factory=dict)


async def _python(spec: RuntimeSpec, state: Path) -> list[str]:
    return [sys.executable, "-m", "babelsip_sdk.runner", str(spec.path)]


async def _perl(spec: RuntimeSpec, state: Path) -> list[str]:
    perl_sdk = SDK_ROOT / "perl"
    return ["perl", f"-I{perl_sdk}", str(perl_sdk / "runner.pl"), str(spec.path)]


async def _exec(spec: RuntimeSpec, state: Path) -> list[str]:
    if not os.access(spec.path, os.X_OK):
        raise LoadError(spec.path, None, "not executable (chmod +x, and start with a #! line)")
    return [sys.executable, "-I", "-S", str(GUARD), str(spec.path)]


def _java_heap_mb(spec: RuntimeSpec) -> int:
    return max(spec.memory_mb, 64)


async def _java(spec: RuntimeSpec, state: Path) -> list[str]:
    """javac once per distinct source set and cache the classes: the SDK in one
    directory (compiled once per SDK version), each route generation in its own
    against it, so a reload recompiles one file (~1 s, not ~4 s with the SDK).
    Source launch costs ~0.9 s per start (FACTS.md), precompiled ~40 ms."""
    sdk_sources = sorted((SDK_ROOT / "java").rglob("*.java"))
    sdk_key = _digest(sdk_sources)
    sdk_classes = await _javac(state / "java-cache" / f"sdk-{sdk_key}", sdk_sources, None, spec)
    route_key = _digest([Path(spec.path)], sdk_key)
    route_classes = await _javac(state / "java-cache" / f"route-{route_key}", [Path(spec.path)],
                                 sdk_classes, spec)
    return ["java", f"-Xmx{_java_heap_mb(spec)}m", "-Xss512k", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            "-cp", f"{route_classes}{os.pathsep}{sdk_classes}", JAVA_MAIN, Path(spec.path).stem]


def _digest(sources: list[Path], salt: str = "") -> str:
    digest = hashlib.sha256(salt.encode())
    for src in sources:
        digest.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


# javac itself is a short-lived JVM: C1 only and the serial GC start it faster.
JAVAC = ["javac", "-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-encoding", "UTF-8"]


async def _javac(cache: Path, sources: list[Path], classpath: Path | None, spec: RuntimeSpec) -> Path:
    """Compile `sources` into `cache` unless it exists; return `cache`."""
    if cache.is_dir():
        return cache
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cp = ["-cp", str(classpath)] if classpath is not None else []
    result = await trio.run_process([*JAVAC, *cp, "-d", str(tmp), *map(str, sources)],
                                    capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _javac_error(spec, result.stderr.decode(errors="replace"))
    try:
        tmp.rename(cache)
    except OSError:  # another generation compiled the same sources first
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _javac_error(spec: RuntimeSpec, stderr: str) -> LoadError:
    # javac reports "File.java:12: error: message"
    for text in stderr.splitlines():
        head, sep, rest = text.partition(": error: ")
        if sep:
            file, _, line = head.rpartition(":")
            return LoadError(file, int(line) if line.isdigit() else None, rest)
    return LoadError(spec.path, None, "javac failed: " + stderr.strip()[-500:])


LANGUAGES: dict[str, Language] = {
    "python": Language("python", _python, 256, {"PYTHONPATH": str(SDK_ROOT / "python"),
                                                 "PYTHONDONTWRITEBYTECODE": "1",
                                                 # glibc reserves 64 MiB of address space per
                                                 # thread arena; RLIMIT_AS makes that count
                                                 "MALLOC_ARENA_MAX": "2"}),
    "perl": Language("perl", _perl, 256),
    "java": Language("java", _java, 4096),
    # Any executable: runtimes such as V8 or Go reserve a lot of address space
    # up front (V8 ~1 GiB), so the RLIMIT_AS floor is generous, as for Java.
    "exec": Language("exec", _exec, 4096),
}


def register(language: Language) -> None:
    LANGUAGES[language.name] = language


def language_for(spec: RuntimeSpec) -> Language:
    try:
        return LANGUAGES[spec.runtime]
    except KeyError:
        raise LoadError(spec.path, None, f"no stdio runtime for {spec.runtime!r} "
                        f"(known: {', '.join(sorted(LANGUAGES))})") from None
