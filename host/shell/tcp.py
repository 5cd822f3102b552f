"""TCP transport with connection reuse (RFC 3261 §18), hardened against peers.

Connections are kept by remote address, whoever opened them: a response goes
back on the connection its request came in on (the Via received/rport equal
that connection's remote address), and requests to a peer reuse an open
connection. Each connection has a reader task that frames the stream and a
writer task fed through a bounded byte queue, so the SIP core never waits on
a socket: `send()` only appends.

What a remote peer can do to a TCP server, and what this module does about
it — every item costs that peer its connection, never the process:

- reset a connection at any stage (before we accept it, idle, mid-message,
  while we write): the accept loop takes the peer address from accept()
  itself (getpeername() fails on a socket reset in the backlog) and ignores
  per-connection accept errors; each connection task catches everything it
  can meet (trio raises errors of the reader/writer pair as an
  ExceptionGroup, so the last-resort handler uses `except*`), logs, counts
  and never propagates;
- open more connections than we have descriptors for: the total is capped
  below RLIMIT_NOFILE (see `connection_cap`), connections beyond it or beyond
  the per-source cap are accepted and closed at once, and EMFILE/ENFILE from
  accept() backs off instead of ending the accept loop;
- pipeline requests and never read the answers: the output queue of each
  connection is bounded in bytes; the connection that overflows it is reset;
- send slowly (slowloris) or connect and say nothing: once a message has
  started (or from accept until the first message), it must be complete
  within `header_timeout`; an idle connection is closed after `idle_timeout`;
- abuse the CRLF keep-alive (below): stray CRLFs are not activity, and pongs
  are bounded by pings and by time.

CRLF keep-alive (RFC 5626 §3.5.1, §4.4.1): between messages a client may
send a double CRLF "ping"; we answer each with a single CRLF "pong" on that
connection, and the ping counts as traffic for the idle timeout. A lone CRLF
(allowed before a start line, RFC 3261 §7.5) is skipped and is not traffic,
so a peer trickling CRLFs cannot hold a connection open without pinging
properly. At most one pong per ping and per `pong_interval` (1 s, where RFC
5626 clients ping every 95–120 s): a peer flooding pings gets one pong a
second, not a write for every four bytes it sends. Pings do not count as the
first message of a fresh inbound connection, so `header_timeout` still
closes a connection that only ever pings.

The policy parts (admission, deadlines, log rate limiting) are small pure
functions and classes below, so tests can check them without sockets.

The same class serves TLS and WebSocket (and WSS) connections, with the same
limits: a `layer` says how a connection's stream is made (`PLAIN`, or
host/shell/tls.py's `TlsLayer`, whose handshake must end within its
`handshake_timeout`), and `websocket=True` frames messages with
host/shell/websocket.py instead of StreamFramer (one SIP message per
WebSocket message; WebSocket pings and CRLF-only messages are the
keep-alives). A WebSocket connection we open to a next hop (a ws:/wss:
URI) sends the upgrade request first and holds SIP messages until it is
answered; a browser cannot be connected to, so a send to one whose
connection is gone fails like any refused connect.
A TLS connection remembers the name its peer was verified for; a send for
another name (a second domain DNS put at the same address) goes over it
only if the peer's certificate proves that name too (RFC 5922 §4).
(One class for four transports is why this module is longer than most: the
TLS contexts and the WebSocket codec live in their own modules.)
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import ssl
import struct
from typing import Callable

import trio

from host.sip.errors import BadMessage
from host.sip.parser import MAX_MESSAGE, StreamFramer

from .limits import nofile_limit
from .tls import PinMismatch
from .websocket import WsSession

log = logging.getLogger("babelsip.transport")

# ----------------------------------------------------------------- defaults
# Every one is a TcpTransport constructor parameter (tests lower them; the
# server passes ServerConfig.extra["tcp"] through).

# Seconds without traffic in either direction before a connection with no
# message in progress is closed. 300 s is longer than the keep-alive interval
# of RFC 5626 flows (CRLF pings every 95–120 s, §4.4.1), so registered UAs
# behind NAT keep their flow.
IDLE_TIMEOUT = 300.0

# Once a message has started, the whole of it (head and body) must arrive
# within this many seconds; a freshly accepted connection must complete its
# first message in the same time. The largest message we accept (64 KiB,
# MAX_MESSAGE) takes 8.2 s at 64 kbit/s; a peer slower than that is a
# slowloris, not a phone.
HEADER_TIMEOUT = 10.0

# All TCP connections, inbound and outbound. Kamailio's and OpenSIPS's
# default tcp_max_connections is 2048; the effective cap is also kept below
# the descriptor limit (connection_cap).
MAX_CONNECTIONS = 2048

# Inbound connections from one IP address. A peer proxy or SBC multiplexes
# over a handful; 64 leaves room for a small office NAT of TCP phones while
# one address can hold at most 1/32 of MAX_CONNECTIONS.
MAX_PER_SOURCE = 64

# Bytes queued for one connection (including the batch being written) before
# we decide its peer does not read. 1 MiB is 16 maximum-size messages or
# ~2,000 typical 500-byte ones: a burst to a busy trunk fits, while a peer
# that never reads costs at most this (plus kernel buffers) before we reset it.
MAX_QUEUED_BYTES = 1 << 20

# Pause of the accept loop when the process or system is out of descriptors
# or memory (EMFILE/ENFILE/ENOBUFS/ENOMEM): trio.serve_listeners uses 100 ms.
ACCEPT_BACKOFF = 0.1

CONNECT_TIMEOUT = 5.0

# At most one CRLF pong per connection per this many seconds (see the module
# text); extra pings in that time are still traffic, just not answered.
PONG_INTERVAL = 1.0

# Descriptors kept free for everything else the process opens (route worker
# pipes, route files, DNS sockets, outgoing connects): an eighth of the limit,
# at least 32.
FD_RESERVE_FRACTION = 8
FD_RESERVE_MIN = 32

# At most one log line of each kind (refused, out of descriptors, slow reader,
# late message, framing error) per this many seconds; the rest are counted and
# reported with the next one.
LOG_INTERVAL = 10.0

RECV_SIZE = 65536
LISTEN_BACKLOG = 1024

# accept() errors that concern one connection, never the listener (the list
# trio.SocketListener ignores, plus ECONNRESET): retry at once.
_TRANSIENT_ACCEPT = {getattr(errno, name) for name in (
    "ECONNABORTED", "ECONNRESET", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT",
    "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ETIMEDOUT")
    if hasattr(errno, name)}
# accept() errors meaning "no resources right now": back off and retry.
_EXHAUSTED_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# What the network can throw at one connection; all of it just ends that one.
_CONNECTION_ENDED = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                     trio.TooSlowError)

_LINGER_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends RST

PING = b"\r\n\r\n"                        # RFC 5626 §3.5.1 keep-alive ping
PONG = b"\r\n"
_CRLF = b"\r\n"


# ------------------------------------------------------------ pure policy
def connection_cap(configured: int, nofile: int | None) -> int:
    """How many connections we may hold: `configured`, but never so many that
    the descriptors left for the rest of the process drop below the reserve."""
    if nofile is None:
        return configured
    reserve = max(FD_RESERVE_MIN, nofile // FD_RESERVE_FRACTION)
    return max(1, min(configured, nofile - reserve))


def read_deadline(started: float | None, last_used: float,
                  header_timeout: float, idle_timeout: float) -> float:
    """When the reader gives up waiting: a message in progress must end by
    `started + header_timeout`; otherwise the connection may idle until
    `last_used + idle_timeout`."""
    idle = last_used + idle_timeout
    return idle if started is None else min(idle, started + header_timeout)


class Admission:
    """Counts connections in total and inbound ones per source address."""

    __slots__ = ("max_total", "max_per_source", "total", "per_source")

    def __init__(self, max_total: int, max_per_source: int):
        self.max_total, self.max_per_source = max_total, max_per_source
        self.total = 0
        self.per_source: dict[str, int] = {}

    def refuse(self, ip: str | None) -> str | None:
        """Why a new connection (inbound from `ip`, or outbound when None)
        must be refused, or None when it may open."""
        if self.total >= self.max_total:
            return f"{self.max_total} connections open"
        if ip is not None and self.per_source.get(ip, 0) >= self.max_per_source:
            return f"{self.max_per_source} connections from {ip}"
        return None

    def add(self, ip: str | None) -> None:
        self.total += 1
        if ip is not None:
            self.per_source[ip] = self.per_source.get(ip, 0) + 1

    def remove(self, ip: str | None) -> None:
        self.total -= 1
        if ip is not None:
            left = self.per_source[ip] - 1
            if left:
                self.per_source[ip] = left
            else:
                del self.per_source[ip]


def crlf_pings(carried: int, run: bytes) -> tuple[int, int]:
    """Pings in a run of CR/LF bytes seen between messages, given the
    `carried` bytes of a ping begun by the previous run (0-3): returns
    (pings, bytes of a ping left begun). Pings are counted left to right
    without overlap, so "\r\n" * 4 is two pings, not three."""
    parts = (PING[:carried] + run).split(PING)
    tail = parts[-1]
    for begun in (3, 2, 1):
        if tail.endswith(PING[:begun]):
            return len(parts) - 1, begun
    return len(parts) - 1, 0


def crlf_runs(data: bytes, buffered_before: int, messages: list[bytes]) -> list[tuple[int, int]]:
    """Where the CR/LF runs between messages lie in `data`, one read fed to
    a StreamFramer that held `buffered_before` bytes and returned `messages`:
    (start, end) of each run, in order. The framer drops exactly the CR/LF
    bytes before each message start, so message lengths give the positions;
    a new run is returned after each message (it may be empty)."""
    rest = iter(messages)
    if buffered_before:
        if not messages:
            return []          # all of `data` belongs to the message in progress
        pos = len(next(rest)) - buffered_before   # where the first message ends
    else:
        pos = 0
    runs = [(pos, _run_end(data, pos))]
    for raw in rest:
        pos = runs[-1][1] + len(raw)
        runs.append((pos, _run_end(data, pos)))
    return runs


def _run_end(data: bytes, pos: int) -> int:
    """End of the CR/LF bytes at data[pos:]."""
    return len(data) - len(data[pos:].lstrip(_CRLF))


class RateLimit:
    """One event per `interval` seconds passes; `allow` returns how many were
    suppressed since the last one that passed, or None when this one is
    suppressed too."""

    __slots__ = ("interval", "_next", "_suppressed")

    def __init__(self, interval: float):
        self.interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def allow(self, now: float) -> int | None:
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


# ------------------------------------------------------------- connections
class _Connection:
    __slots__ = ("remote", "source", "stream", "raw", "ws", "server_name", "out", "queued", "wake",
                 "last_used", "started", "scope", "closing", "abort", "ping_begun", "next_pong",
                 "heard", "refused")

    def __init__(self, remote, source: str | None, now: float):
        self.remote = remote
        self.source = source          # the peer's IP for inbound connections, else None
        self.raw: trio.SocketStream | None = None      # the TCP stream
        self.stream = None            # what messages flow on: `raw`, or TLS over it
        self.ws: WsSession | None = None               # WebSocket framing, when the transport has it
        self.server_name: str | None = None            # the name a TLS next hop is checked against
        self.out: collections.deque[bytes] = collections.deque()
        self.queued = 0               # bytes in `out` plus the batch being written
        self.wake: trio.Event | None = None
        self.last_used = now
        # When the message being received started; inbound connections start
        # "in a message" so that connect-and-stay-silent is timed out too.
        self.started: float | None = now if source is not None else None
        self.scope = trio.CancelScope()
        self.closing = False          # no more sends: the task is ending
        self.abort = False            # close with RST (peer misbehaved)
        self.ping_begun = 0           # bytes of a CRLF ping received so far (0-3)
        self.next_pong = now          # no pong before this time (PONG_INTERVAL)
        self.heard = False            # any bytes received after the handshake
        self.refused = False          # the TLS peer ended it with an alert before saying anything

    def idle(self) -> bool:
        return self.started is None and not self.queued and not self.closing


def open_tcp_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket; `reuse_port` joins a SO_REUSEPORT
    group, whose members the kernel spreads connections over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class PlainLayer:
    """Connections' streams as TCP gives them (tls.TlsLayer is the other)."""

    secure = False
    handshake_timeout = 0.0

    async def wrap(self, stream, *, inbound: bool, server_name: str | None):
        return stream


PLAIN = PlainLayer()


def transport_name(secure: bool, websocket: bool) -> str:
    """The transport's name in the core, Via and URIs (RFC 3261, RFC 7118)."""
    if websocket:
        return "wss" if secure else "ws"
    return "tls" if secure else "tcp"


class TcpTransport:
    name = "tcp"

    def __init__(self, host: str, port: int,
                 on_message: Callable[[bytes, tuple[str, int]], None],
                 on_error: Callable[[tuple[str, int]], None] | None = None, *,
                 idle_timeout: float = IDLE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 max_per_source: int = MAX_PER_SOURCE,
                 max_queued_bytes: int = MAX_QUEUED_BYTES,
                 accept_backoff: float = ACCEPT_BACKOFF,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 pong_interval: float = PONG_INTERVAL,
                 listener: socket.socket | None = None,
                 on_connection: Callable[[tuple[str, int], bool], None] | None = None,
                 layer=PLAIN, websocket: bool = False):
        self.host, self.port = host, port
        self.layer, self.websocket = layer, websocket
        self.name = transport_name(layer.secure, websocket)
        self._listener = listener            # bound already (by the parent of --workers N)
        self._on_connection = on_connection  # (remote, held): a connection opened / ended
        self._on_message = on_message
        self._on_error = on_error
        self.idle_timeout, self.header_timeout = idle_timeout, header_timeout
        self.max_connections = max_connections
        self.max_queued_bytes = max_queued_bytes
        self.accept_backoff, self.connect_timeout = accept_backoff, connect_timeout
        self.pong_interval = pong_interval
        self._admission = Admission(max_connections, max_per_source)
        self._conns: dict[tuple[str, int], _Connection] = {}
        self._nursery: trio.Nursery | None = None
        self._sock = None
        self._warnings: dict[str, RateLimit] = {}
        # Counters (statistics()).
        self.accepted = self.rejected = self.shed = 0
        self.slow_readers_closed = self.header_timeouts = self.idle_closed = 0
        self.accept_errors = self.out_of_descriptors = 0
        self.framing_errors = self.callback_errors = self.internal_errors = 0
        self.pings = self.pongs = 0
        self.handshake_failures = self.upgrades_refused = 0
        self.pin_mismatches = self.identity_refused = 0

    async def bind(self) -> tuple[str, int]:
        if self._listener is not None:
            sock = trio.socket.from_stdlib_socket(self._listener)
        else:
            sock = trio.socket.from_stdlib_socket(open_tcp_listener(self.host, self.port))
        self._sock = sock
        self.port = sock.getsockname()[1]
        # Read the descriptor limit now, after the server raised it.
        self._admission.max_total = connection_cap(self.max_connections, nofile_limit())
        return self.host, self.port

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._sock is None:
            await self.bind()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started((self.host, self.port))
                await self._accept_loop()
        finally:
            self._nursery = None
            self._sock.close()

    # ------------------------------------------------------------ accept
    async def _accept_loop(self) -> None:
        sock = self._sock
        while True:
            try:
                raw, addr = await sock.accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT:
                    self.accept_errors += 1
                    log.debug("tcp accept: %s", exc)
                    await trio.lowlevel.checkpoint()
                    continue
                if exc.errno in _EXHAUSTED_ACCEPT:
                    self.out_of_descriptors += 1
                    shed = self._shed_oldest_idle()
                    self._warn("exhausted", "tcp accept: %s; %d connections open, %s; "
                               "retrying in %g s", exc, len(self._conns),
                               "closed the oldest idle one" if shed else "none idle to close",
                               self.accept_backoff)
                else:  # unexpected: do not spin on it
                    self.accept_errors += 1
                    self._warn("accept", "tcp accept: %s; retrying in %g s", exc, self.accept_backoff)
                await trio.sleep(self.accept_backoff)
                continue
            self._admit(raw, addr)

    def _admit(self, raw, addr) -> None:
        # The address comes from accept(): getpeername() on a connection the
        # peer reset while it waited in the backlog fails with ENOTCONN.
        remote = (addr[0], addr[1])
        reason = self._admission.refuse(remote[0])
        if reason is not None:
            self.rejected += 1
            self._warn("refused", "tcp: refusing %s:%s: %s", *remote, reason)
            raw.close()
            return
        conn = _Connection(remote, remote[0], trio.current_time())
        conn.raw = trio.SocketStream(raw)
        if self.websocket:
            conn.ws = WsSession(MAX_MESSAGE)
        self.accepted += 1
        self._register(conn)

    def _register(self, conn: _Connection) -> None:
        old = self._conns.get(conn.remote)
        if old is not None:  # same address reused: the old one is dead anyway
            self._close(old)
        self._conns[conn.remote] = conn
        self._admission.add(conn.source)
        self._nursery.start_soon(self._run, conn)
        if self._on_connection is not None:
            self._on_connection(conn.remote, True)

    def _forget(self, conn: _Connection) -> None:
        """Undo _register; called once, when the connection's task ends."""
        if self._conns.get(conn.remote) is conn:
            del self._conns[conn.remote]
            if self._on_connection is not None:
                self._on_connection(conn.remote, False)
        self._admission.remove(conn.source)

    def _close(self, conn: _Connection, abort: bool = False) -> None:
        conn.closing = True
        conn.abort = conn.abort or abort
        conn.out.clear()
        conn.scope.cancel()

    def _shed_oldest_idle(self) -> bool:
        idle = [c for c in self._conns.values() if c.idle()]
        if not idle:
            return False
        self.shed += 1
        self._close(min(idle, key=lambda c: c.last_used))
        return True

    def _warn(self, kind: str, msg: str, *args, level: int = logging.WARNING) -> None:
        """Log at most one line of each kind per LOG_INTERVAL: a peer that
        opens connections by the thousand must not write the log by the
        thousand lines."""
        if not log.isEnabledFor(level):
            return
        limit = self._warnings.get(kind)
        if limit is None:
            limit = self._warnings[kind] = RateLimit(LOG_INTERVAL)
        suppressed = limit.allow(trio.current_time())
        if suppressed is None:
            return
        if suppressed:
            msg += " (%d more like this since the last report)"
            args += (suppressed,)
        log.log(level, msg, *args)

    # -------------------------------------------------------------- send
    def has_connection(self, host: str, port: int) -> bool:
        conn = self._conns.get((host, port))
        return conn is not None and not conn.closing

    def connections(self) -> list[tuple[str, int]]:
        return [remote for remote, conn in self._conns.items() if not conn.closing]

    def send(self, data: bytes, host: str, port: int, server_name: str | None = None) -> bool:
        """Queue `data` for (host, port), opening a connection if there is
        none (`server_name`: the name the next hop was addressed by, which
        a TLS certificate must name and a WebSocket upgrade's Host header
        says; default `host`). Never waits; False when it cannot be sent."""
        remote = (host, port)
        conn = self._conns.get(remote)
        if (conn is not None and server_name is not None and server_name != conn.server_name
                and self.layer.secure and not self._proves(conn, server_name)):
            return False
        if conn is None:
            if self._nursery is None:
                return False
            reason = self._admission.refuse(None)
            if reason is not None:
                self.rejected += 1
                self._warn("refused", "%s: not connecting to %s:%s: %s", self.name, host, port, reason)
                return False
            conn = _Connection(remote, None, trio.current_time())
            conn.server_name = server_name or host
            if self.websocket:
                self._ws_connect(conn)
            self._register(conn)
        if conn.ws is not None:
            data = conn.ws.frame(data)
            if data is None:          # no SIP before the upgrade, nor after a close
                return False
            if not data:              # held until our upgrade is answered
                return True
        return self._enqueue(conn, data)

    def _ws_connect(self, conn: _Connection) -> None:
        """A WebSocket connection we open (RFC 7118 §4.1): the upgrade
        request goes first, and its answer is due within header_timeout,
        like an inbound connection's first message."""
        name = conn.server_name
        host = f"[{name}]" if ":" in name else name
        # What waits for the answer is held in the session, half of the
        # queue bound: framed, it must still fit the queue.
        conn.ws, request = WsSession.connect(MAX_MESSAGE, f"{host}:{conn.remote[1]}",
                                             max_pending=self.max_queued_bytes // 2)
        conn.started = conn.last_used
        self._enqueue(conn, request)

    def _proves(self, conn: _Connection, name: str) -> bool:
        """Whether the TLS connection `conn` may carry a message for `name`:
        its peer proved another name (or none: an inbound one), so its
        certificate is checked for this one too. A connection still in its
        handshake cannot tell yet: the message is refused (its branch fails
        over) rather than sent unchecked."""
        stream = conn.stream
        if stream is not None and stream is not conn.raw and self.layer.proves(stream, name):
            return True
        self.identity_refused += 1
        self._warn("identity", "%s: not sending a message for %s over the connection with %s:%s: "
                   "its certificate does not prove that name%s", self.name, name, *conn.remote,
                   "" if stream is not None and stream is not conn.raw else " (handshake not done)")
        return False

    def _enqueue(self, conn: _Connection, data: bytes) -> bool:
        if conn.closing:
            return False
        if conn.queued + len(data) > self.max_queued_bytes:
            # The peer does not read what we send: holding more for it would
            # let one connection take the server's memory.
            self.slow_readers_closed += 1
            self._warn("slow", "tcp: closing %s:%s: %d bytes unread (limit %d)",
                       *conn.remote, conn.queued, self.max_queued_bytes)
            self._close(conn, abort=True)
            return False
        conn.out.append(data)
        conn.queued += len(data)
        if conn.wake is not None:
            conn.wake.set()
        return True

    # -------------------------------------------------- connection tasks
    async def _run(self, conn: _Connection) -> None:
        """One connection, from connect/accept to close. Whatever happens in
        here ends this connection only: expected network errors are logged
        at debug level, anything else is a bug that is logged and counted."""
        try:
            with conn.scope:
                if conn.raw is None:
                    with trio.fail_after(self.connect_timeout):
                        conn.raw = await trio.open_tcp_stream(*conn.remote)
                conn.stream = conn.raw
                if self.layer.secure and not await self._handshake(conn):
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, conn)
                    if conn.ws is not None:
                        await self._read_ws(conn)
                    else:
                        await self._read(conn)
                    nursery.cancel_scope.cancel()
        except* _CONNECTION_ENDED as group:
            log.debug("tcp connection %s:%s ended: %r", *conn.remote, group.exceptions[0])
            self._note_refusal(conn, group.exceptions[0])
        except* Exception as group:
            self.internal_errors += 1
            log.error("tcp connection %s:%s: internal error", *conn.remote,
                      exc_info=group.exceptions[0] if len(group.exceptions) == 1 else group)
        finally:
            unsent = ((bool(conn.queued) or (conn.ws is not None and conn.ws.holding()))
                      and not conn.closing) or conn.refused
            conn.closing = True
            self._forget(conn)
            if conn.raw is not None:
                await self._aclose(conn)
            if unsent and self._on_error is not None:
                try:
                    self._on_error(conn.remote)
                except Exception:
                    self.internal_errors += 1
                    log.exception("tcp error callback for %s:%s", *conn.remote)

    def _note_refusal(self, conn: _Connection, exc: BaseException) -> None:
        """In TLS 1.3 a server checks our client certificate after our side
        of the handshake is done: its refusal (an alert, or a reset) meets
        our first read, after our request went out. That request was never
        taken, so the sends that opened the connection hear of it as a
        transport error (their branches fail over, or get 503) instead of
        waiting for Timer B/F."""
        cause = exc.__cause__ or exc
        if (conn.source is None and self.layer.secure and not conn.heard
                and isinstance(cause, (ssl.SSLError, ConnectionResetError))):
            conn.refused = True
            self.handshake_failures += 1
            self._warn("handshake-out", "%s: %s:%s (verifying %s) refused the connection: %s",
                       self.name, *conn.remote, conn.server_name, cause)

    async def _handshake(self, conn: _Connection) -> bool:
        """The layer's handshake (TLS), within its timeout; False (counted,
        logged at most once per LOG_INTERVAL) when it fails: that ends the
        connection, and a send waiting on it is reported by _run."""
        inbound = conn.source is not None
        try:
            with trio.fail_after(self.layer.handshake_timeout):
                conn.stream = await self.layer.wrap(conn.raw, inbound=inbound,
                                                    server_name=conn.server_name)
            return True
        except PinMismatch as exc:
            self.pin_mismatches += 1
            self._warn("pin", "%s: closing the connection with %s:%s: %s", self.name, *conn.remote, exc)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            self.handshake_failures += 1
            cause = exc.__cause__ or exc
            why = "timed out" if isinstance(exc, trio.TooSlowError) else cause
            if inbound:   # scanners and broken clients: not worth a warning
                self._warn("handshake-in", "%s handshake with %s:%s failed: %s", self.name,
                           *conn.remote, why, level=logging.INFO)
            else:         # a next hop we could not reach securely: its branch gets a 503
                self._warn("handshake-out", "%s handshake with %s:%s (verifying %s) failed: %s",
                           self.name, *conn.remote, conn.server_name, why)
        conn.abort = True
        return False

    async def _aclose(self, conn: _Connection) -> None:
        with trio.CancelScope(shield=True):
            try:
                if conn.abort:
                    conn.raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                elif conn.stream is not conn.raw:
                    # TLS says goodbye (close_notify) unless the peer stopped
                    # reading; the TCP stream is closed below either way.
                    with trio.move_on_after(1.0):
                        await conn.stream.aclose()
                await conn.raw.aclose()
            except Exception as exc:  # closing a reset socket: nothing left to do
                log.debug("%s close %s:%s: %r", self.name, *conn.remote, exc)

    async def _receive(self, conn: _Connection) -> bytes | None:
        """The next bytes from `conn` (b"" at its end), or None once it has
        been silent too long; a deadline that our own writes moved is waited
        again."""
        while True:
            data = None
            with trio.move_on_at(read_deadline(conn.started, conn.last_used,
                                               self.header_timeout, self.idle_timeout)):
                data = await conn.stream.receive_some(RECV_SIZE)
            if data is not None:
                conn.heard = True
                return data
            if self._timed_out(conn, trio.current_time()):
                return None

    async def _read(self, conn: _Connection) -> None:
        framer = StreamFramer(MAX_MESSAGE)
        deliver = self._on_message
        while True:
            data = await self._receive(conn)
            if not data:   # closed, or timed out
                return
            now = trio.current_time()
            before = framer.buffered()
            try:
                messages = framer.feed(data)
            except BadMessage as exc:
                # The stream cannot be re-synchronised: close it (§18.3).
                self.framing_errors += 1
                self._warn("framing", "closing tcp %s:%s: %s", *conn.remote, exc.reason,
                           level=logging.INFO)
                return
            after = framer.buffered()
            # Traffic that keeps the connection: message bytes or a ping,
            # never stray CRLFs alone.
            if self._keepalive(conn, data, before, messages, after, now) or messages or after:
                conn.last_used = now
            # A message in progress keeps its start; a new one starts now.
            if messages or conn.started is None:
                conn.started = now if after else None
            for raw in messages:
                try:
                    deliver(raw, conn.remote)
                except Exception:
                    # The core's own guard should have caught it; a bug
                    # here costs this message, not the connection.
                    self.callback_errors += 1
                    log.exception("tcp message from %s:%s", *conn.remote)

    def _timed_out(self, conn: _Connection, now: float) -> bool:
        """Whether the read deadline that passed ends the connection."""
        if conn.started is not None and now >= conn.started + self.header_timeout:
            self.header_timeouts += 1
            self._warn("late", "closing %s %s:%s: message not complete within %g s", self.name,
                       *conn.remote, self.header_timeout, level=logging.INFO)
            conn.abort = True
            return True
        if now >= conn.last_used + self.idle_timeout:
            self.idle_closed += 1
            log.debug("closing idle %s %s:%s", self.name, *conn.remote)
            return True
        return False

    async def _read_ws(self, conn: _Connection) -> None:
        """_read for WebSocket connections: the upgrade, then one SIP
        message per WebSocket message (host/shell/websocket.py)."""
        session = conn.ws
        deliver = self._on_message
        while True:
            data = await self._receive(conn)
            if data is None:
                return
            now = trio.current_time()
            feed = session.feed_untrusted(data)
            if feed.send:
                self._enqueue(conn, feed.send)
            if feed.traffic:
                conn.last_used = now
            if feed.pings:
                self.pings += feed.pings
                pong = session.frame(PONG) if now >= conn.next_pong else None
                if pong is not None and self._enqueue(conn, pong):
                    conn.next_pong = now + self.pong_interval
                    self.pongs += 1
            # The header timeout runs while the upgrade or a message is in
            # progress; an open, quiet connection only has the idle one.
            if session.partial():
                conn.started = conn.started or now
            else:
                conn.started = None
            for raw in feed.messages:
                try:
                    deliver(raw, conn.remote)
                except Exception:
                    self.callback_errors += 1
                    log.exception("%s message from %s:%s", self.name, *conn.remote)
            if feed.failure is not None:
                # Our upgrade failed: like a failed handshake (counted, and
                # what waits for it is reported unsent by _run).
                self.handshake_failures += 1
                self._warn("handshake", "%s upgrade with %s:%s failed: %s", self.name,
                           *conn.remote, feed.failure, level=logging.INFO)
            if feed.ended:
                if feed.refused is not None:
                    self.upgrades_refused += 1
                    self._warn("upgrade", "%s %s:%s: upgrade refused with %d", self.name,
                               *conn.remote, feed.refused, level=logging.INFO)
                await self._flush(conn)
                return

    async def _flush(self, conn: _Connection, timeout: float = 1.0) -> None:
        """Let the writer send what is queued (a last answer before we
        close), for at most `timeout` seconds."""
        with trio.move_on_after(timeout):
            while conn.queued:
                await trio.sleep(0.01)

    def _keepalive(self, conn: _Connection, data: bytes, before: int,
                   messages: list[bytes], after: int, now: float) -> bool:
        """Count the CRLF pings in `data` (between the messages the framer
        cut from it, `before` and `after` being what it held around the
        feed) and queue a pong. True when a ping arrived."""
        pings = 0
        for i, (start, end) in enumerate(crlf_runs(data, before, messages)):
            if i or before:   # a message ended just before this run
                conn.ping_begun = 0
            found, conn.ping_begun = crlf_pings(conn.ping_begun, data[start:end])
            pings += found
        if after:             # a message has begun since: no ping spans it
            conn.ping_begun = 0
        if not pings:
            return False
        self.pings += pings
        if now >= conn.next_pong and self._enqueue(conn, PONG):
            conn.next_pong = now + self.pong_interval
            self.pongs += 1
        return True

    async def _write(self, conn: _Connection) -> None:
        stream = conn.stream
        out = conn.out
        while True:
            if not out:
                conn.wake = trio.Event()
                await conn.wake.wait()
                continue
            # Coalesce what is queued into one write.
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            await stream.send_all(data)
            conn.queued -= len(data)
            conn.last_used = trio.current_time()

    def statistics(self) -> dict:
        return {"connections": len(self._conns), "connection_cap": self._admission.max_total,
                "accepted": self.accepted, "rejected": self.rejected, "shed": self.shed,
                "slow_readers_closed": self.slow_readers_closed,
                "header_timeouts": self.header_timeouts, "idle_closed": self.idle_closed,
                "accept_errors": self.accept_errors,
                "out_of_descriptors": self.out_of_descriptors,
                "framing_errors": self.framing_errors, "callback_errors": self.callback_errors,
                "pings": self.pings, "pongs": self.pongs,
                "handshake_failures": self.handshake_failures,
                "pin_mismatches": self.pin_mismatches, "identity_refused": self.identity_refused,
                "upgrades_refused": self.upgrades_refused,
                "internal_errors": self.internal_errors}
