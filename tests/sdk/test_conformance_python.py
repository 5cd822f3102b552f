"""The shared conformance transcripts against the Python SDK and the Node.js
example worker (written from PROTOCOL.md alone)."""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

TRANSCRIPTS = conformance.transcripts()


def test_there_are_transcripts():
    assert {p.stem for p in TRANSCRIPTS} >= {"handshake", "decisions", "pipelining", "hooks",
                                            "store", "broken", "shutdown_drains", "forward_compat"}


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_python_sdk(path):
    command, routes, extra = conformance.SDKS["python"]
    ok, text = conformance.run_transcript(path, list(command), routes, {**os.environ, **extra})
    assert ok, text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_node_any_executable_worker(path):
    command, routes, _ = conformance.SDKS["node"]
    ok, text = conformance.run_transcript(path, list(command), routes, dict(os.environ))
    assert ok, text


def test_driver_catches_a_wrong_worker(tmp_path):
    """A worker that answers every event with the wrong decision must fail."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def on_request(req):\n    req.reply(500, 'wrong')\n")
    for name in ("basic", "allhooks", "counter", "broken"):
        (tmp_path / f"{name}.py").write_text(wrong.read_text())
    command, _, extra = conformance.SDKS["python"]
    ok, text = conformance.run_transcript(
        conformance.HERE / "transcripts" / "decisions.jsonl", list(command), tmp_path,
        {**os.environ, **extra})
    assert not ok and "expected" in text


def test_matcher_rules():
    binds = {}
    conformance.match({"id": "$c", "x": "*"}, {"id": 5, "x": [1], "extra": 1}, binds)
    assert binds == {"$c": 5}
    with pytest.raises(conformance.Mismatch):
        conformance.match({"id": "$c"}, {"id": 6}, binds)
    conformance.match({"type": "ready", "hooks": ["a", "b"]}, {"type": "ready", "hooks": ["b", "a"]}, {})
    conformance.match({"type": "call", "args": ["k"]}, {"type": "call", "args": ["k", None, None]}, {})
    # decisions compare by meaning through the host's Recorder
    conformance.match({"type": "decision", "id": 1, "verbs": [["relay", ["sip:a"]]]},
                      {"type": "decision", "id": 1, "verbs": [["relay", "sip:a", {"mode": "parallel"}]]},
                      {}, hooks_of={1: "on_request"})
    with pytest.raises(conformance.Mismatch):
        conformance.match({"type": "decision", "id": 1, "verbs": [["relay", ["sip:a"]]]},
                          {"type": "decision", "id": 1, "verbs": [["relay", ["sip:b"]]]},
                          {}, hooks_of={1: "on_request"})
    with pytest.raises(conformance.Mismatch):
        conformance.match({"ok": True}, {"ok": 1}, {})
