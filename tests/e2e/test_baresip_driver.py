"""Sanity tests of the baresip driver (tests/e2e/baresip.py): two real
softphones on 127.0.0.1 call each other directly (no proxy), and a REGISTER
toward a port where nothing listens is reported in bounded time."""

from __future__ import annotations

import re
import socket
import threading
import time
import wave

import pytest

from tests.e2e.baresip import Baresip, RegistrationFailed, account_line, baresip_binary
from tests.e2e.sipp import LOCALHOST, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(baresip_binary() is None,
                       reason="baresip not installed (/usr/bin/baresip, Debian package baresip-core)"),
]


def _phone(tmp_path, name: str, accounts: list[str], **kw) -> Baresip:
    return Baresip(tmp_path / name, sip_port=free_port(), ctrl_port=free_port(),
                   accounts=accounts, **kw)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_direct_call_established_and_closed(tmp_path, transport):
    alice = _phone(tmp_path, "alice", [account_line("alice", transport=transport)])
    bob = _phone(tmp_path, "bob", [account_line("bob", transport=transport)])
    with alice, bob:
        uri = f"sip:bob@{LOCALHOST}:{bob.sip_port}" + (";transport=tcp" if transport == "tcp" else "")
        alice.dial(uri)
        a_up = alice.wait_event("CALL_ESTABLISHED", timeout=5)
        b_up = bob.wait_event("CALL_ESTABLISHED", timeout=5)
        assert a_up["direction"] == "outgoing" and b_up["direction"] == "incoming", (a_up, b_up)
        assert a_up["id"] == b_up["id"]  # the SIP Call-ID, the same on both sides
        assert b_up["accountaor"] == f"sip:bob@{LOCALHOST}"
        assert "ESTABLISHED" in alice.listcalls(), alice.log_tail()
        # RTP flows both ways (ausine source, aubridge sink: no sound card)
        alice.wait_event("CALL_RTPESTAB", timeout=5)
        bob.wait_event("CALL_RTPESTAB", timeout=5)

        alice.hangup()
        a_down = alice.wait_event("CALL_CLOSED", timeout=5)
        b_down = bob.wait_event("CALL_CLOSED", timeout=5)
        assert a_down["id"] == b_down["id"] == a_up["id"]
        assert "user" in a_down.get("param", "") and "peer" in b_down.get("param", ""), (a_down, b_down)
        # With auto answer baresip 1.0 emits no CALL_INCOMING (manual mode only).
        assert "CALL_INCOMING" not in bob.event_types()
    # stop() really ended both processes
    assert not alice.alive() and not bob.alive()
    assert "baresip is ready" in alice.log()


def test_register_toward_dead_tcp_port_fails_fast(tmp_path):
    # Held bound but not listening: a connect is refused, and free_port cannot
    # hand the same number to the phone itself (it once did, and carol
    # registered with herself).
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((LOCALHOST, 0))
    dead = holder.getsockname()[1]
    line = account_line("carol", password="secret", transport="tcp",
                        outbound=f"sip:{LOCALHOST}:{dead}")
    t0 = time.monotonic()
    with holder, _phone(tmp_path, "carol", [line]) as carol:
        with pytest.raises(RegistrationFailed) as info:
            carol.wait_registered(timeout=5)
        assert info.value.event is not None, str(info.value)
        assert info.value.event["type"] == "REGISTER_FAIL"
        assert "refused" in info.value.event.get("param", "").lower(), info.value.event
    assert time.monotonic() - t0 < 10


def test_register_toward_dead_udp_port_bounded(tmp_path):
    """UDP: the ICMP error is ignored, baresip would only give up after the
    ~32 s transaction timeout; the driver's wait and stop stay bounded."""
    dead = free_port()
    line = account_line("dave", password="secret", outbound=f"sip:{LOCALHOST}:{dead}")
    phone = _phone(tmp_path, "dave", [line]).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistrationFailed) as info:
            phone.wait_registered(timeout=2)
        assert info.value.event is None  # a timeout, not a REGISTER_FAIL
        assert time.monotonic() - t0 < 3
        assert "REGISTERING" in phone.event_types()
    finally:
        t1 = time.monotonic()
        phone.stop()
        assert time.monotonic() - t1 < 6  # quit would wait ~29 s for the un-REGISTER
    assert not phone.alive()


def _fake_registrar(sock: socket.socket, stop: threading.Event, seen: list[bytes]) -> None:
    """Answer every REGISTER with 200 OK (echoing Contact, expires 60)."""
    sock.settimeout(0.2)
    end = time.monotonic() + 20
    while not stop.is_set() and time.monotonic() < end:
        try:
            data, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        seen.append(data)
        if not data.startswith(b"REGISTER "):
            continue
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [h for h in head[1:]
                if re.match(rb"(?i)(via|from|call-id|cseq|contact|v|f|i|m):", h)]
        to = [h for h in head[1:] if re.match(rb"(?i)(to|t):", h)]
        keep += [t + b";tag=reg1" if b"tag=" not in t else t for t in to]
        keep = [re.sub(rb"(?i)^(contact|m):(.*)$", rb"Contact:\2;expires=60", h) for h in keep]
        reply = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"
        sock.sendto(reply, addr)


def test_register_ok_against_fake_registrar(tmp_path):
    reg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reg.bind((LOCALHOST, 0))
    stop, seen = threading.Event(), []
    thread = threading.Thread(target=_fake_registrar, args=(reg, stop, seen), daemon=True)
    thread.start()
    try:
        line = account_line("erin", password="secret", outbound=f"sip:{LOCALHOST}:{reg.getsockname()[1]}")
        with _phone(tmp_path, "erin", [line]) as erin:
            ok = erin.wait_registered(timeout=5)
            assert ok["accountaor"] == f"sip:erin@{LOCALHOST}"
            assert any(m.startswith(b"REGISTER ") for m in seen)
    finally:
        stop.set()
        thread.join(timeout=2)
        reg.close()


def test_audio_file_source_and_recording(tmp_path):
    """aufile source (a WAV longer than the call: at its end baresip hangs up)
    and the sndfile dumps of sent and received audio."""
    tone = tmp_path / "tone.wav"
    with wave.open(str(tone), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\x00\x10\x00\xf0" * 40000)  # 10 s
    alice = _phone(tmp_path, "alice", [account_line("alice")], audio_file=tone, record_audio=True)
    bob = _phone(tmp_path, "bob", [account_line("bob")])
    with alice, bob:
        alice.dial(f"sip:bob@{LOCALHOST}:{bob.sip_port}")
        alice.wait_event("CALL_RTPESTAB", timeout=5)
        bob.wait_event("CALL_RTPESTAB", timeout=5)
        time.sleep(0.5)
        alice.hangup()
        bob.wait_event("CALL_CLOSED", timeout=5)
        assert "AUDIO_ERROR" not in alice.event_types(), alice.log_tail()
    assert "aufile ---> sndfile ---> PCMU" in alice.log(), alice.log_tail()
    dumps = sorted(p.name for p in alice.workdir.glob("dump-*.wav"))
    assert [d[-7:] for d in dumps] == ["dec.wav", "enc.wav"], dumps
