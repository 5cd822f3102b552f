"""Each SDK installed the way its ecosystem expects, into a temporary place,
and run from there (not from the checkout) through conformance transcripts:

- Python: the `babelsip-sdk` distribution (sdk/python/pyproject.toml) built
  into a wheel by pip and installed into a fresh venv; `python -m
  babelsip_sdk` then works there with no PYTHONPATH, stdio and `serve`.
  The main distribution ships the same package and no generic top level.
- Perl: `perl Makefile.PL INSTALL_BASE=... && make && make install`, then the
  installed `babelsip-perl-runner`.
- Java: `make -C sdk/java jar` (javac and jar only), a route compiled
  against the jar, and babelsip.Runner started from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

TRANSCRIPTS = {p.stem: p for p in conformance.transcripts()}
ROUTES = REPO / "sdk" / "conformance" / "routes"


def clean_env(**extra) -> dict:
    """The environment without anything that would find the checkout's SDKs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERL5LIB", "CLASSPATH")}
    env.update(extra)
    return env


def run(argv, cwd, timeout=240, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def assert_transcripts(names, argv, routes, env):
    for name in names:
        ok, text = conformance.run_transcript(TRANSCRIPTS[name], list(argv), routes, env)
        assert ok, f"{name}: {text}"


# -- Python ------------------------------------------------------------------

@pytest.mark.filterwarnings(r"ignore:Support for `\[tool.setuptools\]`")
def test_main_distribution_installs_no_generic_top_level_but_the_sdk():
    """pyproject.toml's package discovery: host and runtimes (see README
    "Packaging"), babelsip_sdk mapped from sdk/python; no `sdk`, no `tests`."""
    from setuptools.config.pyprojecttoml import read_configuration
    from setuptools.config import expand

    config = read_configuration(REPO / "pyproject.toml", expand=False)
    find = dict(config["tool"]["setuptools"]["packages"]["find"])
    package_dir: dict = {}
    packages = expand.find_packages(**find, root_dir=str(REPO), fill_package_dir=package_dir)
    top = {p.split(".")[0] for p in packages}
    assert top == {"host", "runtimes", "babelsip_sdk"}
    assert package_dir["babelsip_sdk"] == os.path.join("sdk/python", "babelsip_sdk")
    assert "host.sip" in packages and "runtimes.jsonline" in packages


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory) -> Path:
    """A fresh venv with the babelsip-sdk wheel installed; its python."""
    tmp = tmp_path_factory.mktemp("pysdk")
    src = tmp / "src"
    shutil.copytree(REPO / "sdk" / "python", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300, env=clean_env())
    if build.returncode != 0 and "satisfies the requirement" in build.stderr:
        pytest.skip(f"pip cannot fetch the build backend (setuptools) from its index: "
                    f"{build.stderr.strip()[-300:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list((tmp / "dist").glob("babelsip_sdk-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheels[0])], cwd=tmp, env=clean_env())
    return python


def test_python_sdk_wheel_imports_from_the_venv(sdk_venv):
    out = run([str(sdk_venv), "-c", "import babelsip_sdk; print(babelsip_sdk.__file__)"],
              cwd=sdk_venv.parents[2], env=clean_env()).stdout.strip()
    assert Path(out).is_relative_to(sdk_venv.parents[1]), out   # .../venv/lib/.../site-packages


def test_python_sdk_wheel_runner_passes_conformance(sdk_venv):
    argv = [str(sdk_venv), "-m", "babelsip_sdk.runner", "{route}"]
    assert_transcripts(["handshake", "decisions", "store"], argv, ROUTES / "python", clean_env())


def test_python_sdk_wheel_serves_over_tcp(sdk_venv, tmp_path):
    """`python -m babelsip_sdk serve`, no PYTHONPATH: hello/ready, ping/pong."""
    proc = subprocess.Popen([str(sdk_venv), "-m", "babelsip_sdk", "serve", "--listen", "127.0.0.1:0",
                             str(ROUTES / "python" / "basic.py")],
                            cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10) as conn:
            reader = conn.makefile("rb")
            hello = {"type": "hello", "protocol": 1, "route": "basic",
                     "settings": {"max_line": 1048576, "deadline": 1.0, "ping_interval": 1.0}}
            conn.sendall(json.dumps(hello).encode() + b"\n")
            ready = json.loads(reader.readline())
            assert ready["type"] == "ready" and ready["protocol"] == 1, ready
            conn.sendall(b'{"type": "ping", "id": 7}\n')
            assert json.loads(reader.readline()) == {"type": "pong", "id": 7}
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


# -- Perl --------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("perl") is None or shutil.which("make") is None,
                    reason="perl or make is not installed")
def test_perl_sdk_makemaker_install_runs_conformance(tmp_path):
    probe = subprocess.run(["perl", "-MExtUtils::MakeMaker", "-e", "1"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("ExtUtils::MakeMaker is not installed")
    src = tmp_path / "src"
    shutil.copytree(REPO / "sdk" / "perl", src)
    inst = tmp_path / "inst"
    run(["perl", "Makefile.PL", f"INSTALL_BASE={inst}"], cwd=src)
    run(["make"], cwd=src)
    run(["make", "install"], cwd=src)
    lib = inst / "lib" / "perl5"
    assert (lib / "BabelSIP.pm").is_file() and (lib / "BabelSIP" / "Session.pm").is_file()
    runner = inst / "bin" / "babelsip-perl-runner"
    assert os.access(runner, os.X_OK)
    assert_transcripts(["handshake", "decisions", "store"], [str(runner), "{route}"],
                       ROUTES / "perl", clean_env(PERL5LIB=str(lib)))


# -- Java --------------------------------------------------------------------

@pytest.mark.skipif(any(shutil.which(t) is None for t in ("javac", "jar", "java", "make")),
                    reason="needs a JDK (javac, jar, java) and make")
def test_java_sdk_jar_built_by_make_runs_conformance(tmp_path):
    build = tmp_path / "build"
    run(["make", "-s", "-C", str(REPO / "sdk" / "java"), "jar", f"BUILD={build}"], cwd=tmp_path)
    jar = build / "babelsip.jar"
    listing = run(["jar", "--list", "--file", str(jar)], cwd=tmp_path).stdout.split()
    assert "babelsip/Runner.class" in listing and "babelsip/Route.class" in listing
    classes = tmp_path / "classes"
    run(["javac", "-encoding", "UTF-8", "-cp", str(jar), "-d", str(classes),
         str(ROUTES / "java" / "Basic.java")], cwd=tmp_path)
    argv = ["java", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{classes}{os.pathsep}{jar}", "babelsip.Runner", "Basic"]
    assert_transcripts(["decisions"], argv, None, clean_env())
