"""The shared conformance transcripts against the Java SDK. The worker is
started through sdk/java/babelsip-java, which compiles the SDK and the route
once (cached by content under $TMPDIR) and runs babelsip.Runner, as the host
does."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

TRANSCRIPTS = conformance.transcripts()

pytestmark = pytest.mark.skipif(shutil.which("javac") is None, reason="no JDK")


def test_every_transcript_route_has_a_java_version():
    _, routes, _ = conformance.SDKS["java"]
    # Route names are file stems compared case-insensitively: AllHooks.java is "allhooks".
    names = {p.stem.lower() for p in routes.glob("*.java")}
    wanted = {json.loads(p.read_text().splitlines()[0])["route"] for p in TRANSCRIPTS}
    assert wanted <= names


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_java_sdk(path):
    command, routes, extra = conformance.SDKS["java"]
    ok, text = conformance.run_transcript(path, list(command), routes, {**os.environ, **extra})
    assert ok, text
