"""Drive real baresip softphones (Debian's baresip-core 1.0.0) headless, for
end-to-end tests: each `Baresip` is one baresip process with its own config
directory, remote-controlled over its ctrl_tcp JSON socket.

The driver is plain blocking Python (a subprocess, a TCP socket and one reader
thread per phone), like tests/e2e/sipp.py: baresip and the proxy under test
are separate processes, so a test just calls `phone.wait_event(...)`. In a
trio test whose proxy runs *in the test's own process*, wrap the blocking
waits in `trio.to_thread.run_sync` so the proxy keeps running meanwhile.

Everything is bounded: every wait has a timeout, baresip always runs with
`-t <max_lifetime>` (it quits by itself after that), and `stop()` escalates
quit command -> SIGTERM (x2) -> SIGKILL of its own process group.

    with Baresip(tmp_path / "alice", sip_port=p1, ctrl_port=c1,
                 accounts=["<sip:alice@127.0.0.1>;regint=0"]) as alice:
        alice.dial("sip:bob@127.0.0.1:5062")
        alice.wait_event("CALL_ESTABLISHED", timeout=5)
        alice.hangup()
        alice.wait_event("CALL_CLOSED", timeout=5)

Facts about baresip 1.0.0 found by experiment (Debian 1.0.0-4)
-----------------------------------------------------------------
Modules (/usr/lib/baresip/modules): there is no "null" audio module.
* Audio sink: `aubridge` is the only headless *player* (it registers both an
  ausrc and an auplay "aubridge"; a player device with no source of the same
  device name just swallows the audio). `aufile` and `ausine` are sources
  only in 1.0. We use `audio_player aubridge,sink` and
  `audio_alert aubridge,alert` (ring/ringback tones).
* Audio source: `ausine,<freq>` supports *only* 48000 Hz, 2 channels
  ("ausine: supports only 48kHz samplerate", then "only 2 channels"), and a
  failing source makes the answering side fail silently: the UAS sent 180
  but never 200. So the config sets `ausrc_srate 48000` and `ausrc_channels 2`;
  baresip resamples to PCMU ("enable ausrc resampler: 8000Hz/1ch <--
  48000Hz/2ch"). With `audio_file=` the source is `aufile,<wav>` (any rate;
  resampled). SURPRISE: at the end of the file aufile raises an
  AUDIO_ERROR event ("0,end of file") and the menu module *hangs up the call*
  (CALL_CLOSED param "end of file"), so give a file longer than the call.
  The ausrc_srate/channels keys are only set for ausine.
* `sndfile` (audio filter) with `snd_path DIR` dumps the sent and received
  audio to DIR/dump-<time>-enc.wav / -dec.wav: `record_audio=True`.
* `ctrl_tcp` (module_app, key `ctrl_tcp_listen HOST:PORT`): netstrings
  `LEN:JSON,` both ways. Commands `{"command": c, "params": p, "token": t}`
  (params may be omitted); replies
  `{"response": true, "ok": bool, "data": "text", "token": t}`; events
  `{"event": true, "type": T, "class": C, "accountaor": "sip:..",
  "direction": "incoming"|"outgoing", "peeruri": .., "id": <call id>,
  "param": ..}`. Events can arrive *before* the reply of the command that
  caused them (REGISTERING before uanew's reply).
* `menu` (module_app) provides the commands themselves (dial, hangup, accept,
  uanew, uafind, reginfo, listcalls, quit, ...); without it ctrl_tcp can run
  nothing. `statmode_default off` stops its "[0:00:01] audio=0/0 (bit/s)"
  status line flooding the log; `ringback_disabled yes`.
* No stdio/cons UI module is loaded, stdin is /dev/null: nothing reads a tty.
* Codecs: g711 (PCMU/PCMA) only, no video modules.
Config keys: `sip_listen HOST:PORT` binds UDP and TCP. `net_interface` takes
an interface *or an IP address*; "lo" FAILS in this version ("net: lo: could
not get IPv4 address (No such device)", baresip exits), "127.0.0.1" works and
makes SDP/RTP use that address (otherwise it picks eth0's address).
Accounts: SURPRISE: the `account` module registers the accounts file's UAs
right after "baresip is ready", i.e. right after ctrl_tcp starts listening, so
a controller connecting afterwards misses fast events (TCP REGISTER_FAIL
"Connection refused" came before we were connected). The driver therefore
does not load `account`: it connects first, then creates each UA with the
ctrl command `uanew <account line>` (which registers it when regint > 0);
the config dir's `accounts` file only records those lines, commented out.
Without `regint=` baresip registers every 3600 s (to `outbound`, else the
AOR's domain): say `;regint=0` for a phone that must not register. The first
UA created is the "current" one that `dial` uses; `uafind <aor>` switches it.
`;answermode=auto` answers at once (200 straight after 180); SURPRISE: with
auto answer there is *no* CALL_INCOMING event (only manual mode emits it) —
the callee sees CALL_REMOTE_SDP (param "offer"), CALL_LOCAL_SDP ("answer"),
CALL_ESTABLISHED, CALL_RTPESTAB.
Events seen: REGISTERING, REGISTER_OK, REGISTER_FAIL (param = reason, e.g.
"Connection refused"), UNREGISTERING, SHUTDOWN, CALL_INCOMING (manual answer
only), CALL_RINGING (caller, on 180), CALL_LOCAL_SDP / CALL_REMOTE_SDP
(param offer|answer), CALL_ESTABLISHED (param = peer uri), CALL_RTPESTAB,
CALL_RTCP (with rtcp_stats), CALL_CLOSED (param = reason: "Connection reset
by user" on the side that hung up, "Connection reset by peer" on the other),
AUDIO_ERROR.
UDP REGISTER toward a dead port: the ICMP error is ignored, REGISTER_FAIL
only after the SIP transaction timeout (~32 s); TCP fails at once. `quit`
then waits for the un-REGISTERs to time out too (~29 s): hence stop()'s
escalation to signals (the 2nd SIGTERM makes baresip exit(0) at once).
Network namespaces (checked by hand with a veth pair 10.200.0.1 | netns
10.200.0.2): `prefix=["ip","netns","exec","NS"], sip_host="10.200.0.2"`
works; ctrl_tcp then listens on 10.200.0.2 (ctrl_host defaults to sip_host),
reachable from the test in the root namespace; SDP/RTP use 10.200.0.2.
Output: stdout is fully buffered when it is a file, so baresip runs under
`stdbuf -oL -eL` or a killed phone's log would lose its tail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

BARESIP = "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"
LOCALHOST = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def baresip_binary() -> str | None:
    if os.access(BARESIP, os.X_OK):
        return BARESIP
    return shutil.which("baresip")


class BaresipError(AssertionError):
    """A phone misbehaved (or a wait ran out); the message carries its log tail."""


class BaresipTimeout(BaresipError, TimeoutError):
    pass


class RegistrationFailed(BaresipError):
    def __init__(self, message: str, event: dict | None):
        super().__init__(message)
        self.event = event


def account_line(user: str, domain: str = LOCALHOST, *, password: str | None = None,
                 outbound: str | None = None, transport: str = "udp",
                 regint: int | None = None, answermode: str = "auto",
                 extra: str = "") -> str:
    """One baresip account line, e.g.
    `<sip:alice@127.0.0.1;transport=tcp>;auth_pass=s;outbound="sip:127.0.0.1:5060;transport=tcp";regint=60;answermode=auto`.
    regint defaults to 60 with an outbound proxy and 0 (never register) without one."""
    uri = f"sip:{user}@{domain}" + (f";transport={transport}" if transport != "udp" else "")
    line = f"<{uri}>"
    if password is not None:
        line += f";auth_pass={password}"
    if outbound:
        if transport != "udp" and "transport=" not in outbound:
            outbound += f";transport={transport}"
        line += f';outbound="{outbound}"'
    if regint is None:
        regint = 60 if outbound else 0
    line += f";regint={regint};answermode={answermode}{extra}"
    return line


def _netstring(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"%d:%s," % (len(body), body)


def _aor(line: str) -> str:
    """sip:user@host of an account line (what events carry as accountaor)."""
    m = re.match(r"\s*<?(sips?:[^;>\s]+)", line)
    return m.group(1) if m else line


class Baresip:
    """One headless baresip. All methods block, each for a bounded time."""

    def __init__(self, workdir: str | os.PathLike, *, sip_port: int, ctrl_port: int,
                 accounts: list[str] = (), audio_file: str | os.PathLike | None = None,
                 sip_host: str = LOCALHOST, ctrl_host: str | None = None,
                 net_interface: str | None = "", prefix: list[str] = (),
                 auto_answer: bool = True, record_audio: bool = False,
                 sip_trace: bool = False, verbose: bool = True,
                 rtp_ports: str | None = None, max_lifetime: int = 300,
                 extra_config: str = "", name: str | None = None,
                 ctrl_socket=None):
        """sip_host:sip_port is sip_listen (UDP and TCP). ctrl_host:ctrl_port is the
        ctrl_tcp socket; ctrl_host defaults to sip_host, which must then be
        reachable from the test (inside a network namespace: the namespace's
        own address, not 127.0.0.1). net_interface "" means sip_host, None
        omits the key. prefix runs baresip under e.g. ["ip","netns","exec","phone"].
        auto_answer appends ;answermode=auto to account lines that name no
        answermode. ctrl_socket, if given, is a callable returning a fresh
        unconnected TCP socket to reach ctrl_tcp with, e.g. one made inside
        the phone's namespace (`lambda: lab.socket(ns, type=socket.SOCK_STREAM)`,
        tests/e2e/netns.py) when that namespace has no link to the test's."""
        self.workdir = Path(workdir)
        self.name = name or self.workdir.name
        self.sip_host, self.sip_port = sip_host, sip_port
        self.ctrl_host, self.ctrl_port = ctrl_host or sip_host, ctrl_port
        self.net_interface = sip_host if net_interface == "" else net_interface
        self.prefix = list(prefix)
        self.accounts = [a if (not auto_answer or "answermode=" in a) else a + ";answermode=auto"
                         for a in accounts]
        self.audio_file = Path(audio_file) if audio_file is not None else None
        self.record_audio, self.sip_trace, self.verbose = record_audio, sip_trace, verbose
        self.rtp_ports, self.max_lifetime, self.extra_config = rtp_ports, max_lifetime, extra_config
        self.log_path = self.workdir / "baresip.log"
        self.ctrl_socket = ctrl_socket
        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._events: list[dict] = []
        self._responses: dict[str, dict] = {}
        self._closed = False
        self._token = 0
        self._log_file = None

    # ------------------------------------------------------------------ setup

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.audio_file is not None:
            source = [f"audio_source\t\taufile,{self.audio_file}"]
        else:  # ausine works only at 48 kHz stereo (baresip resamples to the codec)
            source = ["audio_source\t\tausine,440", "ausrc_srate\t\t48000", "ausrc_channels\t\t2"]
        lines = [
            "# written by tests/e2e/baresip.py",
            "poll_method\t\tepoll",
            f"sip_listen\t\t{self.sip_host}:{self.sip_port}",
            *( [f"net_interface\t\t{self.net_interface}"] if self.net_interface else []),
            "call_local_timeout\t30",
            "call_max_calls\t\t4",
            "audio_player\t\taubridge,sink",
            "audio_alert\t\taubridge,alert",
            *source,
            *( [f"rtp_ports\t\t{self.rtp_ports}"] if self.rtp_ports else []),
            f"module_path\t\t{MODULE_PATH}",
            "module\t\t\tg711.so",
            "module\t\t\taubridge.so",
            "module\t\t\taufile.so" if self.audio_file is not None else "module\t\t\tausine.so",
            *( ["module\t\t\tsndfile.so", f"snd_path\t\t{self.workdir}"] if self.record_audio else []),
            "module_app\t\tctrl_tcp.so",
            "module_app\t\tmenu.so",
            f"ctrl_tcp_listen\t\t{self.ctrl_host}:{self.ctrl_port}",
            "statmode_default\toff",
            "ringback_disabled\tyes",
            self.extra_config,
        ]
        (self.workdir / "config").write_text("\n".join(lines) + "\n")
        # Not read (no `account` module): the UAs are created with `uanew` once
        # the ctrl socket is connected, so no early event is lost.
        (self.workdir / "accounts").write_text(
            "# created at start() through ctrl_tcp `uanew <line>`:\n"
            + "".join(f"#{a}\n" for a in self.accounts))

    def command_line(self) -> list[str]:
        binary = baresip_binary() or BARESIP
        argv = [binary, "-f", str(self.workdir), "-t", str(self.max_lifetime)]
        if self.verbose:
            argv.append("-v")
        if self.sip_trace:
            argv.append("-s")
        stdbuf = shutil.which("stdbuf")
        return self.prefix + ([stdbuf, "-oL", "-eL"] if stdbuf else []) + argv

    def start(self, timeout: float = 10.0) -> Baresip:
        """Start baresip, connect to ctrl_tcp, create the UAs. Raises BaresipError
        (after killing it) if any step fails within timeout."""
        self.write_config()
        self._log_file = open(self.log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(self.command_line(), cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._connect(time.monotonic() + timeout)
            for line in self.accounts:
                reply = self.command("uanew", line, timeout=timeout)
                if not reply.get("ok"):
                    raise BaresipError(f"{self.name}: uanew {line!r} failed: {reply}\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BaresipError(f"{self.name}: baresip exited with {self.proc.returncode} "
                                   f"before its ctrl socket came up\n{self.log_tail()}")
            try:
                if self.ctrl_socket is None:
                    sock = socket.create_connection((self.ctrl_host, self.ctrl_port), timeout=0.5)
                    break
                sock = self.ctrl_socket()
                try:
                    sock.settimeout(0.5)
                    sock.connect((self.ctrl_host, self.ctrl_port))
                except OSError:
                    sock.close()
                    raise
                break
            except OSError as exc:
                last = exc
                time.sleep(0.05)
        else:
            raise BaresipTimeout(f"{self.name}: no ctrl_tcp on {self.ctrl_host}:{self.ctrl_port} "
                                 f"({last})\n{self.log_tail()}")
        sock.settimeout(0.2)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name=f"baresip-{self.name}",
                                        daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ ctrl socket

    def _read_loop(self) -> None:
        buf = b""
        try:
            while not self._closed:
                try:
                    data = self._sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                buf = self._parse(buf)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _parse(self, buf: bytes) -> bytes:
        while True:
            colon = buf.find(b":")
            if colon < 0:
                return buf
            try:
                length = int(buf[:colon])
            except ValueError:  # not a netstring: resynchronise on the next one
                self._note({"event": True, "type": "DRIVER_GARBAGE", "param": buf[:200].decode(errors="replace")})
                return b""
            end = colon + 1 + length
            if len(buf) < end + 1:
                return buf
            body, buf = buf[colon + 1:end], buf[end + 1:]  # drop the ','
            try:
                msg = json.loads(body)
            except ValueError:
                msg = {"event": True, "type": "DRIVER_BAD_JSON", "param": body.decode(errors="replace")}
            self._note(msg)

    def _note(self, msg: dict) -> None:
        with self._cond:
            if msg.get("response") and "token" in msg:
                self._responses[msg["token"]] = msg
            else:
                msg.setdefault("time", time.monotonic())
                self._events.append(msg)
            self._cond.notify_all()

    def command(self, cmd: str, params: str = "", timeout: float = 5.0) -> dict:
        """Run one ctrl_tcp command; returns its reply {"response", "ok", "data", "token"}."""
        if self._sock is None:
            raise BaresipError(f"{self.name}: not started")
        with self._cond:
            self._token += 1
            token = f"t{self._token}"
        msg = {"command": cmd, "token": token}
        if params:
            msg["params"] = params
        try:
            self._sock.sendall(_netstring(msg))
        except OSError as exc:
            raise BaresipError(f"{self.name}: sending {cmd!r} failed: {exc}\n{self.log_tail()}") from exc
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    why = "ctrl socket closed" if self._closed else f"no reply in {timeout}s"
                    raise BaresipTimeout(f"{self.name}: {cmd} {params!r}: {why}\n{self.log_tail()}")
                self._cond.wait(min(left, 0.5))
            return self._responses.pop(token)

    # ----------------------------------------------------------------- events

    def events(self, type: str | None = None) -> list[dict]:
        """All events so far (optionally of one type), oldest first."""
        with self._cond:
            return [e for e in self._events if type is None or e.get("type") == type]

    def event_types(self) -> list[str]:
        return [e.get("type", "?") for e in self.events()]

    def mark(self) -> int:
        """Index for wait_event(since=...) to only see events from now on."""
        with self._cond:
            return len(self._events)

    def find_event(self, types, since: int = 0, **fields) -> dict | None:
        types = {types} if isinstance(types, str) else set(types)
        with self._cond:
            for e in self._events[since:]:
                if e.get("type") in types and all(e.get(k) == v for k, v in fields.items()):
                    return e
        return None

    def wait_event(self, types, timeout: float = 5.0, *, since: int = 0, **fields) -> dict:
        """The first event at index >= since whose type is `types` (a name or a
        set of names) and whose fields equal `fields` (e.g. accountaor=...,
        direction="incoming"); waits up to timeout, else raises BaresipTimeout."""
        types = {types} if isinstance(types, str) else set(types)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events[since:]:
                    if e.get("type") in types and all(e.get(k) == v for k, v in fields.items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(min(left, 0.5))
        why = "ctrl socket closed" if self._closed else f"not within {timeout}s"
        raise BaresipTimeout(f"{self.name}: no {'/'.join(sorted(types))} {fields or ''} ({why}); "
                             f"events: {self.event_types()}\n{self.log_tail()}")

    def wait_registered(self, timeout: float = 5.0, *, aor: str | None = None, since: int = 0) -> dict:
        """Wait for REGISTER_OK of one account (aor="sip:alice@127.0.0.1"), or of
        every account with a registration (regint > 0) when aor is None.
        Raises RegistrationFailed on REGISTER_FAIL or timeout (then .event is None)."""
        if aor is not None:
            aors = [aor]
        else:
            aors = [_aor(a) for a in self.accounts if not re.search(r";regint=0(?![0-9])", a)]
        deadline = time.monotonic() + timeout
        ok = None
        for one in aors:
            try:
                ev = self.wait_event({"REGISTER_OK", "REGISTER_FAIL"},
                                     max(0.0, deadline - time.monotonic()), since=since, accountaor=one)
            except BaresipTimeout as exc:
                raise RegistrationFailed(f"{self.name}: {one} not registered within {timeout}s; "
                                         f"events: {self.event_types()}\n{self.log_tail()}", None) from exc
            if ev["type"] == "REGISTER_FAIL":
                raise RegistrationFailed(f"{self.name}: {one} REGISTER_FAIL {ev.get('param')!r}\n"
                                         f"{self.log_tail()}", ev)
            ok = ev
        if ok is None:
            raise BaresipError(f"{self.name}: no account registers (all regint=0)")
        return ok

    # ------------------------------------------------------------------ calls

    def use_account(self, aor: str) -> dict:
        """Make the UA of aor the current one (the one dial uses)."""
        return self.command("uafind", aor)

    def dial(self, uri: str, *, account: str | None = None) -> dict:
        """Start a call (returns the command reply at once; wait for CALL_* events)."""
        if account is not None:
            self.use_account(account)
        reply = self.command("dial", uri)
        if not reply.get("ok"):
            raise BaresipError(f"{self.name}: dial {uri} refused: {reply}\n{self.log_tail()}")
        return reply

    def hangup(self) -> dict:
        return self.command("hangup")

    def accept(self) -> dict:
        return self.command("accept")

    def listcalls(self) -> str:
        return _ANSI.sub("", self.command("listcalls").get("data", ""))

    def reginfo(self) -> str:
        return _ANSI.sub("", self.command("reginfo").get("data", ""))

    # ------------------------------------------------------------------- logs

    def log(self) -> str:
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log().splitlines()[-lines:]
        return f"--- {self.name} baresip log tail ({self.log_path}) ---\n" + "\n".join(tail)

    # ------------------------------------------------------------------- stop

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 1.5) -> int | None:
        """quit, then SIGTERM twice (the 2nd makes 1.0 exit at once, skipping
        pending un-REGISTERs), then SIGKILL of its process group. Bounded
        (~grace + 3 s); safe to call twice."""
        proc = self.proc
        if proc is not None and proc.poll() is None and self._sock is not None and not self._closed:
            try:
                self._sock.sendall(_netstring({"command": "quit", "token": "quit"}))
            except OSError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None and proc.poll() is None:
            for _ in range(2):
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=1)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode if proc is not None else None

    def __enter__(self) -> Baresip:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def traced_phone(root: Path, name: str, line: str, *, ports) -> Baresip:
    """A phone in root/name with one account line and its SIP trace on (the
    log shows each message with its transport: "TCP a -> b"). `ports()`
    gives a free port (tests/e2e/sipp.py free_port)."""
    return Baresip(root / name, sip_port=ports(), ctrl_port=ports(), accounts=[line], sip_trace=True)


def hang_up(caller: Baresip, callee: Baresip, call_id: str, timeout: float = 5) -> tuple[dict, dict]:
    """The caller hangs up; both sides must see that call closed. Returns
    their CALL_CLOSED events (their `param` says who ended it)."""
    caller.hangup()
    a_down = caller.wait_event("CALL_CLOSED", timeout=timeout)
    b_down = callee.wait_event("CALL_CLOSED", timeout=timeout)
    assert a_down["id"] == b_down["id"] == call_id, (a_down, b_down)
    return a_down, b_down
