"""The shared conformance transcripts against the Perl SDK, once per JSON
library it can use (Cpanel::JSON::XS, JSON::XS, and the core JSON::PP)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

TRANSCRIPTS = conformance.transcripts()

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


def _has(module):
    return shutil.which("perl") is not None and subprocess.run(
        ["perl", f"-M{module}", "-e1"], capture_output=True).returncode == 0


BACKENDS = [pytest.param("Cpanel::JSON::XS", marks=pytest.mark.skipif(not _has("Cpanel::JSON::XS"), reason="missing")),
            pytest.param("JSON::XS", marks=pytest.mark.skipif(not _has("JSON::XS"), reason="missing")),
            "PP"]


def test_every_transcript_route_has_a_perl_version():
    _, routes, _ = conformance.SDKS["perl"]
    names = {p.stem.lower() for p in routes.iterdir()}
    wanted = {json.loads(p.read_text().splitlines()[0])["route"] for p in TRANSCRIPTS}
    assert wanted <= names


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_perl_sdk(path, backend):
    command, routes, extra = conformance.SDKS["perl"]
    env = {**os.environ, **extra, "BABELSIP_PERL_JSON": backend}
    ok, text = conformance.run_transcript(path, list(command), routes, env)
    assert ok, text
