"""A few seconds of each atheris fuzzer, as `make test` runs them.

`make fuzz` runs them for minutes; this checks that the drivers start,
load the seeds and hold the invariants for a bounded number of inputs."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install '.[fuzz]', or make test-deps)")

RUNS = 3000      # inputs per target, beyond the seeds
SECONDS = 6      # and at most this long, whichever comes first


@pytest.mark.parametrize("target", ["parser", "proxy"])
def test_fuzzer_smoke(target, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_fuzzer.py"), target, str(tmp_path / "corpus"),
         f"-runs={RUNS}", f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/",
         "-print_final_stats=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS + 60)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "INFO: Instrumenting host.sip.parser" in log, log[-2000:]
    # The seeds were loaded and some inputs ran on top of them.
    assert "stat::number_of_executed_units" in log, log[-2000:]
    executed = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 100, log[-2000:]
    assert not list(tmp_path.glob("crash-*"))
