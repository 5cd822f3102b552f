"""The fuzz properties over the message corpus, without atheris.

Every corpus file (tests/sip/corpus, where the fuzzers' finds are kept) goes
through the parser check and, in every proxy mode, through a fresh core; the
multi-message seed call flow runs too. A bug the fuzzers found stays fixed
here even where atheris is not installed."""

from __future__ import annotations

import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_targets as targets  # noqa: E402

CORPUS = sorted((HERE.parent / "sip" / "corpus").glob("*/*.sip"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_through_parser_and_every_proxy_mode(path):
    data = path.read_bytes()
    targets.check_parser(data)
    for mode in range(16):
        targets.check_proxy(bytes([mode]) + data)


def test_call_flow_seed_reaches_the_uas_and_back():
    core = targets.new_core(consult=False)
    run = targets.check_proxy(bytes([0]) + targets.SPLIT.join(targets.call_flow()), core)
    # The INVITE was relayed and its 180 matched a client transaction.
    assert run.sent_requests and run.sent_requests[0].startswith(b"INVITE ")
    assert core.stats.forwarded_replies[1] >= 1 and core.stats.forwarded_replies[2] >= 1


def test_a_broken_invariant_is_reported():
    # The check must be able to fail: a core whose receive raises is caught.
    class Broken:
        def receive(self, data, transport, src):
            raise KeyError("boom")
    with pytest.raises(KeyError):
        targets.check_proxy(b"\x00INVITE", Broken())
