"""Replies never go to a host a Via names (issue 7 §2): requests whose Vias
point at a "victim" address are sent to babelsip inside a private network
namespace that owns that address, and nothing may ever arrive there — while
the sender gets its answer. Needs root (`unshare -n`); skips otherwise."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("hostile_via_driver.py")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private network namespace"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                       reason="needs unshare and ip (util-linux, iproute2)"),
]


@pytest.fixture(scope="module")
def results():
    run = subprocess.run(["unshare", "-n", sys.executable, str(DRIVER)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_nothing_reaches_the_victim_and_the_server_keeps_serving(results):
    assert results["_victim_packets"] == 0
    assert results["_alive"] is True


@pytest.mark.parametrize("case, status", [
    ("missing Call-ID", 400), ("bad CSeq", 400), ("Content-Length larger than the body", 400),
    ("SIP/7.0", 505), ("unknown URI scheme", 416), ("Proxy-Require", 420), ("host name in Via", 400),
    ("forged received", 200), ("TCP Via over UDP", 200), ("1800 Vias", 513), ("empty Via elements", 400),
])
def test_each_answer_goes_to_the_sender_and_is_small(results, case, status):
    got = results[case]
    assert got["statuses"] == [status]
    assert got["relayed"] == 0
    assert got["sizes"][0] <= got["request_size"] + 256
    assert got["sizes"][0] < 1024


def test_unreadable_top_via_gets_no_answer(results):
    assert results["unreadable top Via"]["statuses"] == []


def test_a_downstream_rewritten_via_does_not_redirect_the_answer(results):
    assert results["downstream rewrote the caller's Via"]["statuses"] == [100, 486]


def test_stream_answer_stays_on_its_connection(results):
    assert results["TCP request, UDP victim Via"]["statuses"] == [400]
