"""A real WebRTC client: JsSIP (npm) in headless Chromium registers over
ws: (and wss:) to babelsip with digest (the quickstart routes: alice/secret, realm
babelsip) and calls a sipp uas on UDP.

The page (served by the test on 127.0.0.1) reports each step back to the
test over HTTP (tests/e2e/browser.py). Checked: the registration succeeds
(and a wrong password is refused), the call is confirmed in the browser,
the sipp uas saw INVITE, ACK and BYE (its scenario requires the ACK), and
babelsip relayed it with the double Record-Route a WS↔UDP change needs;
over wss also with `--workers 2` (the connection in one worker, calls
owned by either).
Media is out of scope: Chromium's fake devices make the offer, the uas
answers with an SDP WebRTC accepts (scenarios/uas_webrtc.xml).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e import browser, sipp
from tests.e2e.routes_support import wait_until
from tests.shell.tls_certs import make_pki, openssl_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (Debian package sip-tester)"),
    pytest.mark.skipif(browser.chromium_binary() is None,
                       reason="chromium is not installed (Debian package chromium; `make test-deps`)"),
    pytest.mark.skipif(not browser.jssip_installed(),
                       reason="JsSIP is not installed: `make test-deps` runs "
                              "npm ci --prefix tests/e2e/web (needs npm and the npm registry)"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>babelsip JsSIP test</title>
<script src="/jssip.js"></script></head>
<body><pre id="log"></pre>
<script>
const settings = %(settings)s;
function report(event, detail) {
  document.getElementById('log').textContent += event + ' ' + JSON.stringify(detail || '') + '\\n';
  return fetch('/report', {method: 'POST', body: JSON.stringify({event: event, detail: detail || null})});
}
window.addEventListener('error', e => report('page-error', String(e.message)));
window.addEventListener('unhandledrejection', e => report('page-error', String(e.reason)));
report('loaded');
try {
  const socket = new JsSIP.WebSocketInterface(settings.ws);
  const ua = new JsSIP.UA({sockets: [socket], uri: settings.uri, password: settings.password,
                           register: true, session_timers: false, connection_recovery_min_interval: 60});
  ua.on('connected', () => report('connected'));
  ua.on('registrationFailed', e => report('registrationFailed', e.cause));
  ua.on('registered', e => {
    report('registered', {contact: ua.contact.toString()});
    if (!settings.call) return;
    const session = ua.call(settings.call, {
      mediaConstraints: {audio: true, video: false},
      pcConfig: {iceServers: []},          // no STUN: gathering ends at once on loopback
      eventHandlers: {
        progress: e => report('progress', e.response ? e.response.status_code : null),
        confirmed: () => {
          report('confirmed');
          setTimeout(() => session.terminate(), 500);
        },
        ended: e => report('ended', {originator: e.originator, cause: e.cause}),
        failed: e => report('failed', {originator: e.originator, cause: e.cause}),
      },
    });
    report('calling', settings.call);
  });
  ua.start();
} catch (e) {
  report('page-error', String(e));
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def bundle():
    return browser.cjs_bundle().encode()


@pytest.fixture
def server(request, tmp_path):
    """babelsip on UDP and ws: (or, parametrized, wss: with a certificate
    the test makes; "-workers2": as `--workers 2`)."""
    scheme, _, workers = getattr(request, "param", "ws").partition("-workers")
    tls = []
    if scheme == "wss":
        if not openssl_available():
            pytest.skip("the openssl command is not installed")
        pki = make_pki(tmp_path / "pki")
        tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    routes = tmp_path / "routes"
    shutil.copytree(QUICKSTART, routes)
    udp, ws = sipp.free_port(), sipp.free_port()
    fleet = ["--workers", workers] if workers else []
    proxy = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{udp}", "--listen", f"{scheme}:127.0.0.1:{ws}",
                                 "--routes", str(routes), "--ctl-socket", "none", *tls, *fleet],
                                ready_timeout=40 if workers else 15)
    with proxy:
        if workers:   # one worker may answer before the other serves
            assert wait_until(lambda: f"{workers} worker processes serving" in proxy.log(), 40), proxy.log()[-3000:]
        yield proxy, udp, ws, scheme
    (tmp_path / "babelsip.log").write_text(proxy.log())


def page(bundle, **settings):
    return {"/": ("text/html; charset=utf-8", (PAGE % {"settings": json.dumps(settings)}).encode()),
            "/jssip.js": ("application/javascript", bundle)}


@pytest.mark.parametrize("server", ["ws", "wss", "wss-workers2"], indirect=True)
def test_jssip_registers_over_websocket_and_calls_a_udp_uas(tmp_path, bundle, server):
    proxy, udp, ws, scheme = server
    uas_port = sipp.free_port()
    trace = tmp_path / "uas_messages.log"
    with sipp.start_sipp_server("uas_webrtc", tmp_path, port=uas_port, timeout=40,
                                extra=["-trace_msg", "-message_file", str(trace)]) as uas:
        settings = dict(ws=f"{scheme}://127.0.0.1:{ws}", uri="sip:alice@127.0.0.1", password="secret",
                        call=f"sip:service@127.0.0.1:{uas_port}")
        with browser.PageServer(page(bundle, **settings)) as pages, \
                browser.Chromium(f"http://127.0.0.1:{pages.port}/", tmp_path / "profile",
                                 trust_any_certificate=scheme == "wss") as chromium:
            try:
                seen = pages.wait_for("loaded", browser.START_TIMEOUT)
                seen += pages.wait_for("registered", 30)
                assert "registrationFailed" not in [r["event"] for r in seen]
                seen += pages.wait_for("confirmed", 30)
                seen += pages.wait_for("ended", 15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nbabelsip:\n{proxy.log()[-4000:]}\nchromium:\n{chromium.log()}")
        result = uas.wait(15)
    events = [r["event"] for r in seen]
    assert events.index("registered") < events.index("calling") < events.index("confirmed") < events.index("ended")
    assert seen[-1]["detail"]["originator"] == "local"           # the browser hung up: its BYE
    # The uas scenario completed: it got the INVITE, the ACK of its 200 and the BYE.
    assert result.successful == 1 and result.failed == 0, result.summary()
    assert "internal error" not in proxy.log().lower()
    # What the uas got: the browser's INVITE relayed from WS to UDP, recorded on both sides
    # (RFC 5658), the browser's own Via (an .invalid host) kept below ours with received/rport.
    messages = trace.read_text(errors="replace")
    invite = messages[messages.index("INVITE sip:service@"):]
    invite = invite[:invite.index("\n\n")]
    assert f"Record-Route: <sip:127.0.0.1:{udp};lr>" in invite
    ws_rr = f"<sip:127.0.0.1:{ws};transport=ws;lr>" if scheme == "ws" else f"<sips:127.0.0.1:{ws};transport=ws;lr>"
    assert f"Record-Route: {ws_rr}" in invite
    assert re.search(rf"Via: SIP/2\.0/{scheme.upper()} [0-9a-z]+\.invalid;branch=[^\n]*received=127\.0\.0\.1", invite), invite
    assert "ACK sip:" in messages and "BYE sip:" in messages


def test_jssip_with_a_wrong_password_is_refused(tmp_path, bundle, server):
    proxy, udp, ws, scheme = server
    settings = dict(ws=f"ws://127.0.0.1:{ws}", uri="sip:alice@127.0.0.1", password="wrong", call=None)
    with browser.PageServer(page(bundle, **settings)) as pages, \
            browser.Chromium(f"http://127.0.0.1:{pages.port}/", tmp_path / "profile"):
        seen = pages.wait_for("loaded", browser.START_TIMEOUT)
        seen += pages.wait_for("registrationFailed", 30)
    assert "registered" not in [r["event"] for r in seen]
    assert seen[-1]["detail"] in ("Authentication Error", "Rejected")
