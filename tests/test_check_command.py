"""`babelsip check [--config F] [--routes DIR]`, a real process: good and
broken configurations, and routes folders in each language, every problem
named by file:line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# language: (file, a good route, a broken one, the line of its problem, words of the message)
ROUTES = {
    "lua": ("main.lua", "function on_request(req) req:reply(200) end\n",
            "function on_request(req)\n  req:reply(200\nend\n", 3, "expected"),
    "python": ("main.py", "def on_request(req):\n    req.reply(200)\n",
               "import os\n\ndef on_request(req)\n    req.reply(200)\n", 3, "SyntaxError"),
    "perl": ("main.pl", "sub on_request { my ($req) = @_; $req->reply(200); }\n1;\n",
             "use strict;\n\nmy $x = ;\nsub on_request {}\n1;\n", 3, "syntax error"),
    "java": ("Main.java",
             "import babelsip.*;\npublic class Main implements Route {\n"
             "    public void onRequest(Request req) { req.reply(200); }\n}\n",
             "import babelsip.*;\npublic class Main implements Route {\n"
             "    public void onRequest(Request req) { req.nonsense(); }\n}\n", 3, "cannot find symbol"),
}
NEEDS = {"perl": "perl", "java": "javac"}


def check(*args, state: Path):
    env = dict(os.environ, BABELSIP_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "host", "check", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.mark.parametrize("language", sorted(ROUTES))
def test_check_with_a_config_compiles_its_routes_in_each_language(tmp_path, state, language):
    if language in NEEDS and shutil.which(NEEDS[language]) is None:
        pytest.skip(f"{NEEDS[language]} is not installed")
    name, good, broken, line, words = ROUTES[language]
    routes = tmp_path / "conf" / "routes"
    routes.mkdir(parents=True)
    config = tmp_path / "conf" / "babelsip.toml"
    config.write_text('[server]\nroutes = "routes"   # beside this file\n')
    (routes / name).write_text(good)
    passed = check("--config", config, state=state)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines() == [f"{config}: ok", f"main: ok ({_runtime(language)})"]
    (routes / name).write_text(broken)
    failed = check("--config", config, state=state)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    problem = failed.stdout.splitlines()[-1]
    assert problem.startswith(f"{routes / name}:{line}: ") and words in problem, problem


def _runtime(language: str) -> str:
    return {"lua": "lua54"}.get(language, language)


def test_a_broken_config_is_the_first_problem_with_file_line_and_key(tmp_path, state):
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "main.lua").write_text("function on_request(req) end\n")
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nroutes = "routes"\n\n[registrar]\nmax_contacts = -3\n')
    failed = check("--config", config, state=state)
    assert failed.returncode == 1
    assert failed.stdout.strip() == f"{config}:5: registrar.max_contacts: '-3': must not be negative"
    config.write_text('[server]\nroutes = "routes"\nlisten = ["udp:127.0.0.1:5060"\n')
    failed = check("--config", config, state=state)
    assert failed.returncode == 1 and failed.stdout.startswith(f"{config}:3:") and "TOML syntax" in failed.stdout
    config.write_text('[server]\nroutes = "routes"\n[server.tls]\ncert = "x.pem"\n')
    failed = check("--config", config, state=state)
    assert failed.returncode == 1 and failed.stdout.startswith(f"{config}:3: server.tls: unknown key")


def test_a_routes_folder_named_by_the_config_that_is_not_there(tmp_path, state):
    config = tmp_path / "babelsip.toml"
    config.write_text('# deploy\n[server]\nroutes = "routes"\n')
    failed = check("--config", config, state=state)
    assert failed.returncode == 1
    assert failed.stdout.strip() == f"{config}:3: server.routes: {tmp_path / 'routes'}: not a directory"


def test_routes_on_the_command_line_override_the_configs(tmp_path, state):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "main.lua").write_text("function on_request(req) end\n")
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nroutes = "missing"\n')
    passed = check("--config", config, "--routes", tmp_path / "other", state=state)
    assert passed.returncode == 0 and "main: ok (lua54)" in passed.stdout, passed.stdout + passed.stderr


def test_a_static_mode_config_has_no_routes_to_compile(tmp_path, state):
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nrelay_to = "sip:127.0.0.1:5090"\n')
    passed = check("--config", config, state=state)
    assert passed.returncode == 0 and "static mode" in passed.stdout
    neither = check(state=state)
    assert neither.returncode == 2 and "give --routes DIR" in neither.stderr


def test_the_example_config_passes(state):
    passed = check("--config", "examples/babelsip.toml", state=state)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines() == ["examples/babelsip.toml: ok", "main: ok (lua54)"]


def test_registration_times_that_contradict_each_other_are_a_problem(tmp_path, state):
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nrelay_to = "sip:127.0.0.1:5090"\n\n'
                      '[registrar]\nmin_expires = 600\nmax_expires = 300\n')
    failed = check("--config", config, state=state)
    assert failed.returncode == 1
    assert failed.stdout.strip() == (f"{config}:5: registrar.min_expires: "
                                     "need min_expires <= default_expires <= max_expires")
