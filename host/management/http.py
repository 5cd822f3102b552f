"""The management HTTP listener (h11 over trio streams), loopback by default.

    POST /RPC        JSON-RPC 2.0; needs `Authorization: Bearer TOKEN` (401 else)
    GET  /metrics    Prometheus text format (metrics.py)
    GET  /           the status page (status.html, one static file)
    GET  /status.json  what the status page polls

/metrics and the status page are read-only and served without the token
(Prometheus and a browser on the same host); the listener binds loopback
unless told otherwise (--http HOST:PORT). h11 does the HTTP/1.1 parsing and
framing, sans-IO; this module only moves bytes and bounds them: header
block and body sizes, a timeout per request, connections at once.
"""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from typing import Awaitable, Callable

import h11
import orjson
import trio

from host.management.jsonrpc import Dispatcher

log = logging.getLogger("babelsip.management")

MAX_HEADERS = 16 * 1024       # bytes of request line and headers
MAX_BODY = 1 << 20            # a JSON-RPC batch of 1000 small requests fits
REQUEST_TIMEOUT = 10.0        # to receive one whole request once it starts
IDLE_TIMEOUT = 60.0           # keep-alive: between requests
MAX_CONNECTIONS = 64


def status_page() -> bytes:
    return resources.files("host.management").joinpath("status.html").read_bytes()


class HttpApp:
    """What each path answers; `metrics()` and `status()` are async callables
    returning bytes and a JSON-able dict."""

    def __init__(self, rpc: Dispatcher, token: str, metrics: Callable[[], Awaitable[bytes]],
                 status: Callable[[], Awaitable[dict]]):
        if not token:
            raise ValueError("the HTTP management listener needs a token")
        self.rpc, self.token = rpc, token.encode()
        self.metrics, self.status = metrics, status
        self.page = status_page()

    def authorized(self, headers) -> bool:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.token)
        return False

    async def answer(self, method: bytes, target: bytes, headers, body: bytes):
        """(status, content type, body, extra headers) for one request."""
        path = target.split(b"?", 1)[0]
        if path == b"/RPC":
            if method != b"POST":
                return 405, b"text/plain", b"POST a JSON-RPC request\n", [(b"allow", b"POST")]
            if not self.authorized(headers):
                return 401, b"text/plain", b"missing or wrong bearer token\n", \
                    [(b"www-authenticate", b'Bearer realm="babelsip"')]
            reply = await self.rpc.handle(body)
            if reply is None:
                return 204, b"application/json", b"", []
            return 200, b"application/json", reply, []
        pages = {b"/": None, b"/index.html": None, b"/metrics": None, b"/status.json": None}
        if path not in pages:
            return 404, b"text/plain", b"not found\n", []
        if method != b"GET":
            return 405, b"text/plain", b"GET only\n", [(b"allow", b"GET")]
        if path == b"/metrics":
            from host.management.metrics import CONTENT_TYPE_LATEST
            return 200, CONTENT_TYPE_LATEST.encode(), await self.metrics(), []
        if path == b"/status.json":
            return 200, b"application/json", orjson.dumps(await self.status(),
                                                          option=orjson.OPT_NON_STR_KEYS), []
        return 200, b"text/html; charset=utf-8", self.page, []


async def serve_http(host: str, port: int, app: HttpApp,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.Semaphore(MAX_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        log.info("management HTTP on http://%s:%d/", f"[{host}]" if ":" in host else host, bound)

        async def one(stream):
            async with slots:
                try:
                    await _serve_connection(stream, app)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        await trio.serve_listeners(one, listeners, handler_nursery=nursery)


async def _serve_connection(stream, app: HttpApp) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    async with stream:
        while True:
            timeout = IDLE_TIMEOUT if conn.their_state is h11.IDLE else REQUEST_TIMEOUT
            with trio.move_on_after(timeout):
                request = await _next_request(stream, conn, app)
                if request is None:
                    return
                status, kind, body, extra = request
                await _respond(stream, conn, status, kind, body, extra)
            if request is None or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return   # timed out, or h11 says this connection closes now
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def _next_request(stream, conn: h11.Connection, app: HttpApp):
    """Read one request and compute its answer; None when the peer is gone.
    Protocol errors get their 4xx here, and then the connection closes."""
    head, body = None, bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            code = exc.error_status_hint
            await _respond(stream, conn, code, b"text/plain", f"{code}: {exc}\n".encode(), [])
            return None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)   # b"" means the peer closed
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY:
                await _respond(stream, conn, 413, b"text/plain", b"request body too large\n", [])
                return None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                await _respond(stream, conn, 413, b"text/plain", b"request body too large\n", [])
                return None
        elif isinstance(event, h11.EndOfMessage):
            return await app.answer(head.method, head.target, head.headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _respond(stream, conn: h11.Connection, status: int, kind: bytes, body: bytes, extra) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *extra]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
