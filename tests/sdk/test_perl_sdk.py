"""The Perl SDK (sdk/perl): the request API in-process through small Perl
programs, and the runner's protocol loop over real pipes. Every JSON path
(Cpanel::JSON::XS, JSON::XS, JSON::PP) is exercised where types matter."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PERL_SDK = REPO / "sdk" / "perl"
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


def _has(module):
    return subprocess.run(["perl", f"-M{module}", "-e1"], capture_output=True).returncode == 0


BACKENDS = [pytest.param("Cpanel::JSON::XS", marks=pytest.mark.skipif(not _has("Cpanel::JSON::XS"), reason="no Cpanel::JSON::XS")),
            pytest.param("JSON::XS", marks=pytest.mark.skipif(not _has("JSON::XS"), reason="no JSON::XS")),
            "PP"]

EVENT = {"hook": "on_request", "method": "INVITE", "ruri": "sip:bob@example.com", "ruri_user": "bob",
         "ruri_host": "example.com", "call_id": "c1", "cseq": 7, "from_uri": "sip:a@x", "from_tag": "ft",
         "to_uri": "sip:bob@example.com", "to_tag": "", "source_ip": "10.0.0.1", "source_port": 5062,
         "transport": "tcp", "in_dialog": True, "body": "v=0",
         "headers": [["Via", "SIP/2.0/UDP h"], ["X-Multi", "1"], ["x-multi", "2"]], "vars": {"k": 1}}


def perl(code, backend="", stdin=None):
    """Run a Perl snippet with the SDK loaded; `$EV` holds EVENT. Returns stdout."""
    prog = ("use strict; use warnings; use BabelSIP; use BabelSIP::Request; use BabelSIP::Session;\n"
            "my $EV = BabelSIP::decode_line($ENV{EV});\n" + code)
    env = {**os.environ, "EV": json.dumps(EVENT), "BABELSIP_PERL_JSON": backend}
    out = subprocess.run(["perl", f"-I{PERL_SDK}", "-e", prog], capture_output=True, env=env,
                         input=stdin, timeout=10)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_choice_is_reported(backend):
    name = perl("print BabelSIP::json_class(), '|', BabelSIP::sdk_name();", backend)
    want = "JSON::PP" if backend == "PP" else backend
    assert name.split("|")[0] == want and want in name.split("|")[1]


def test_default_backend_prefers_xs():
    if not _has("Cpanel::JSON::XS") and not _has("JSON::XS"):
        pytest.skip("no XS JSON module")
    assert perl("print BabelSIP::json_class();") in ("Cpanel::JSON::XS", "JSON::XS")


def test_request_fields_and_headers():
    out = perl("""
        my $r = BabelSIP::Request->new(4, 'on_request', $EV, undef);
        my @m = $r->headers('X-MULTI');
        my @all = $r->headers;
        print BabelSIP::encode_line([$r->method, $r->ruri, $r->ruri_user, $r->ruri_host, $r->call_id,
            $r->cseq, $r->from_uri, $r->from_tag, $r->to_uri, $r->to_tag, $r->source_ip,
            $r->source_port, $r->transport, $r->in_dialog, $r->body, $r->header('x-multi'),
            \\@m, scalar @all, $all[0][0], $r->header('Missing'), $r->vars->{k}, $r->hook, $r->id]);
    """)
    assert json.loads(out) == ["INVITE", "sip:bob@example.com", "bob", "example.com", "c1", 7, "sip:a@x",
                               "ft", "sip:bob@example.com", "", "10.0.0.1", 5062, "tcp", 1, "v=0", "1",
                               ["1", "2"], 3, "Via", None, 1, "on_request", 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_verbs_are_recorded_in_order_with_wire_types(backend):
    # Perl scalars are loose: "486" from a string must still go out as a number,
    # header values from numbers as strings.
    out = perl("""
        my $r = BabelSIP::Request->new(9, 'on_request', $EV, undef);
        my $code = "486";
        my $n = 2;
        $r->record_route;
        $r->set_header('X-A', $n);
        $r->add_header('X-B', 'b');
        $r->remove_header('X-C');
        $r->set_ruri('sip:new@h');
        $r->reply($code, 'Busy', [['X-N', $n], ['X-S', 's']]);
        print BabelSIP::encode_line($r->decision_message);
    """, backend)
    assert json.loads(out) == {"type": "decision", "id": 9, "verbs": [
        ["record_route"], ["set_header", "X-A", "2"], ["add_header", "X-B", "b"], ["remove_header", "X-C"],
        ["set_ruri", "sip:new@h"], ["reply", 486, "Busy", [["X-N", "2"], ["X-S", "s"]]]]}


def test_relay_and_redirect_argument_forms():
    out = perl("""
        my @out;
        for my $args ([], ['sip:a'], [['sip:a', 'sip:b'], mode => 'serial', timeout => '2.5'],
                      [undef, { timeout => 3 }]) {
            my $r = BabelSIP::Request->new(1, 'on_request', $EV, undef);
            $r->relay(@$args);
            push @out, $r->{verbs}[0];
        }
        for my $args (['sip:x'], [['sip:x', 'sip:y']], ['sip:x', 'sip:y']) {
            my $r = BabelSIP::Request->new(1, 'on_failure', $EV, undef);
            $r->redirect(@$args);
            push @out, $r->{verbs}[0];
        }
        my $r = BabelSIP::Request->new(1, 'on_request', $EV, undef);
        $r->reply(302, undef, { 'X-B' => 2, 'X-A' => 1 });
        push @out, $r->{verbs}[0];
        print BabelSIP::encode_line(\\@out);
    """)
    assert json.loads(out) == [
        ["relay"], ["relay", "sip:a"], ["relay", ["sip:a", "sip:b"], {"mode": "serial", "timeout": 2.5}],
        ["relay", None, {"timeout": 3}],
        ["redirect", ["sip:x"]], ["redirect", ["sip:x", "sip:y"]], ["redirect", ["sip:x", "sip:y"]],
        ["reply", 302, None, [["X-A", "1"], ["X-B", "2"]]]]


def test_local_verb_checks_die_at_the_script_line():
    out = perl("""
        my $r = BabelSIP::Request->new(1, 'on_request', $EV, undef);
        $r->reply(200);
        eval { $r->drop };  # line 6 of this program
        my $second = $@;
        my $f = BabelSIP::Request->new(2, 'on_failure', $EV, undef);
        eval { $f->record_route };
        print BabelSIP::encode_line([$second, $@]);
    """)
    second, wrong_hook = json.loads(out)
    assert "already has a decision (reply)" in second and "line 6." in second
    assert "record_route() is not allowed in on_failure" in wrong_hook


def test_vars_are_sent_only_when_changed():
    out = perl("""
        my @out;
        my $a = BabelSIP::Request->new(1, 'on_request', $EV, undef);
        $a->vars->{k};            # read only
        push @out, exists $a->decision_message->{vars} ? 1 : 0;
        my $b = BabelSIP::Request->new(2, 'on_request', { %$EV, vars => { k => 1 } }, undef);
        $b->vars->{k} = 2;
        push @out, $b->decision_message->{vars};
        my $c = BabelSIP::Request->new(3, 'on_request', { %$EV, vars => {} }, undef);
        $c->vars->{list} = [1];
        push @out, $c->decision_message->{vars};
        my $d = BabelSIP::Request->new(4, 'on_request', { %$EV, vars => { k => 1 } }, undef);
        delete $d->vars->{k};
        push @out, $d->decision_message->{vars};
        print BabelSIP::encode_line(\\@out);
    """)
    assert json.loads(out) == [0, {"k": 2}, {"list": [1]}, {}]


def test_reply_object_in_failure_hooks():
    out = perl("""
        my $ev = { %$EV, hook => 'on_failure',
                   reply => { code => 486, reason => 'Busy', headers => [['Retry-After', '5']] } };
        my $r = BabelSIP::Request->new(1, 'on_failure', $ev, undef);
        my $reply = $r->reply_info;
        print BabelSIP::encode_line([$reply->code, $reply->reason, $reply->header('retry-after'),
                                     BabelSIP::Request->new(1, 'on_request', $EV, undef)->reply_info]);
    """)
    assert json.loads(out) == [486, "Busy", "5", None]


def test_error_message_splits_perl_location():
    out = perl("""
        print BabelSIP::encode_line([
            BabelSIP::Session::error_message(3, "no db at /r/main.pl line 12.\\n"),
            BabelSIP::Session::error_message(4, "plain\\n"),
            BabelSIP::Session::error_message(5, { a => 1 }) ]);
    """)
    with_loc, plain, ref = json.loads(out)
    assert with_loc == {"type": "error", "id": 3, "message": "no db", "file": "/r/main.pl", "line": 12}
    assert plain == {"type": "error", "id": 4, "message": "plain"}
    assert ref["id"] == 5 and ref["message"].startswith("HASH(")


# ---------------------------------------------------------------- the runner over pipes

HELLO = {"type": "hello", "protocol": 1, "route": "main", "settings": {"max_line": 1048576}}


def worker(tmp_path, code, backend=""):
    route = tmp_path / "main.pl"
    route.write_text(code)
    env = {**os.environ, "BABELSIP_PERL_JSON": backend}
    return conformance.Worker(["perl", f"-I{PERL_SDK}", str(PERL_SDK / "runner.pl"), str(route)], env)


def raw_next(w):
    line = w.lines.get(timeout=10)
    assert line is not None, "worker closed stdout"
    return json.loads(line)


def ev(i, user, **kw):
    return {"type": "event", "id": i, "hook": "on_request", "event": {**EVENT, "ruri_user": user, **kw}}


STORE_ROUTE = """
sub on_request {
    my ($req) = @_;
    print "printed by the route\\n";
    BabelSIP::log("module log");
    $req->log("event log", "warning");
    if ($req->ruri_user eq 'store') {
        my $v = $req->store->incr('k', 2, 30);
        $req->reply(200, "v=$v");
        return;
    }
    $req->relay('sip:' . $req->ruri_user . '@b');
}
1;
"""


def test_store_wait_answers_pings_and_queues_events(tmp_path):
    w = worker(tmp_path, STORE_ROUTE)
    try:
        w.send(HELLO)
        assert raw_next(w)["type"] == "ready"
        w.send(ev(1, "store"))
        logs = [raw_next(w), raw_next(w)]
        assert [m["message"] for m in logs] == ["module log", "event log"]
        assert logs[1]["level"] == "warning" and logs[1]["event"] == 1
        call = raw_next(w)
        assert (call["type"], call["op"], call["args"], call["event"]) == ("call", "kv.incr", ["k", 2, 30], 1)
        w.send(ev(2, "other"))           # arrives while event 1 waits: queued
        w.send({"type": "ping", "id": 5})
        assert raw_next(w) == {"type": "pong", "id": 5}
        w.send({"type": "shutdown"})      # remembered; event 1 and 2 still get answers
        w.send({"type": "result", "id": call["id"], "value": 12})
        answers = [m for m in (raw_next(w) for _ in range(4)) if m["type"] == "decision"]
        assert [a["id"] for a in answers] == [1, 2]
        assert answers[0]["verbs"] == [["reply", 200, "v=12"]]
        w.wait_exit(0)
    finally:
        stderr = w.close()
    assert "printed by the route" in stderr


def test_input_quirks_crlf_blank_lines_garbage_and_eof(tmp_path):
    w = worker(tmp_path, STORE_ROUTE)
    try:
        w.proc.stdin.write(json.dumps(HELLO).encode() + b"\r\n\n\nnot json\n[1,2]\n")
        w.proc.stdin.write(json.dumps(ev(1, "x")).encode() + b"\r\n")
        w.proc.stdin.close()                # end of input without shutdown
        msgs = [raw_next(w) for _ in range(4)]
        assert msgs[0]["type"] == "ready"
        assert msgs[-1] == {"type": "decision", "id": 1, "verbs": [["relay", "sip:x@b"]]}
        w.wait_exit(0)
    finally:
        stderr = w.close()
    assert "not a JSON object" in stderr


def test_wrong_protocol_version_is_fatal(tmp_path):
    w = worker(tmp_path, STORE_ROUTE)
    try:
        w.send({**HELLO, "protocol": 2})
        assert raw_next(w)["type"] == "fatal"
        w.wait_exit("nonzero")
    finally:
        w.close()


def test_host_closing_during_store_call_fails_that_event(tmp_path):
    w = worker(tmp_path, STORE_ROUTE)
    try:
        w.send(HELLO)
        raw_next(w)
        w.send(ev(1, "store"))
        while raw_next(w)["type"] != "call":
            pass
        w.proc.stdin.close()
        err = raw_next(w)
        assert err["type"] == "error" and "host closed the connection" in err["message"]
        w.wait_exit(0)
    finally:
        w.close()


def test_load_error_at_start_is_fatal_with_line(tmp_path):
    w = worker(tmp_path, "use strict;\n\ndie 'no database';\n")
    try:
        msg = raw_next(w)
        assert msg["type"] == "fatal" and msg["message"] == "no database"
        assert msg["line"] == 3 and msg["file"].endswith("main.pl")
        w.wait_exit("nonzero")
    finally:
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unicode_round_trip(tmp_path, backend):
    w = worker(tmp_path, "sub on_request { my ($r) = @_; $r->reply(200, uc($r->body) . ' ' . length($r->body)) }\n1;\n",
               backend)
    try:
        w.send(HELLO)
        raw_next(w)
        w.send(ev(1, "u", body="h\u00e9llo \u2713 \U0001F600"))
        assert raw_next(w)["verbs"] == [["reply", 200, "H\u00c9LLO \u2713 \U0001F600 9"]]
    finally:
        w.close()
