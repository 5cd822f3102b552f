"""The management API on a local UNIX stream socket: one JSON-RPC text per
line each way (a newline never occurs inside compact JSON). No token: the
socket's file mode (0600, the server's user) is the access control.

Where it lives by default, first that applies:
  $BABELSIP_STATE_DIR/babelsip.ctl, when that variable is set;
  /run/babelsip/babelsip.ctl, when /run/babelsip exists or can be made (root);
  $XDG_RUNTIME_DIR/babelsip.ctl (a user session's private runtime folder);
  /tmp/babelsip-<uid>/babelsip.ctl (a folder of mode 0700).
`babelsip ctl` looks in the same order (the first existing socket).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import tempfile

import trio

from host.management.jsonrpc import Dispatcher

log = logging.getLogger("babelsip.management")

SOCKET_NAME = "babelsip.ctl"
MAX_LINE = 1 << 20          # one request line; a longer one closes the connection
IDLE_TIMEOUT = 300.0        # a connection silent this long is closed
MAX_CONNECTIONS = 64


def candidate_paths() -> list[str]:
    """Where the default socket goes, in order (module doc)."""
    out = []
    state = os.environ.get("BABELSIP_STATE_DIR")
    if state:
        out.append(os.path.join(state, SOCKET_NAME))
    out.append(os.path.join("/run/babelsip", SOCKET_NAME))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(os.path.join(runtime, SOCKET_NAME))
    out.append(os.path.join(tempfile.gettempdir(), f"babelsip-{os.getuid()}", SOCKET_NAME))
    return out


def default_socket_path() -> str:
    """The first candidate whose folder exists or can be made by us."""
    for path in candidate_paths():
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return path
    return candidate_paths()[-1]


def existing_socket_path() -> str | None:
    """For clients: the first candidate where a socket exists."""
    for path in candidate_paths():
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


class SocketInUse(OSError):
    """Another live server answers on the path."""


def _claim(path: str) -> None:
    """Remove a stale socket left by a server that died; refuse a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(errno.EADDRINUSE, f"{path}: another server answers there")


async def serve_unix(path: str, rpc: Dispatcher, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on `path` until cancelled; started() reports the path."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _claim(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)   # the socket is born 0600
    try:
        await sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:   # another server bound it since _claim looked
            raise SocketInUse(errno.EADDRINUSE, f"{path}: another server answers there") from None
        raise
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    slots = trio.Semaphore(MAX_CONNECTIONS)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            log.info("management API on unix:%s", path)

            async def one(stream):
                async with slots:
                    await _serve_connection(stream, rpc)

            await trio.serve_listeners(one, [listener], handler_nursery=nursery)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _serve_connection(stream: trio.SocketStream, rpc: Dispatcher) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_LINE:
                    await _send(stream, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
                                        b'"message":"Invalid Request","data":"line too long"}}')
                    return
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return
                if idle.cancelled_caught or not chunk:
                    return
                buffer += chunk
                continue
            line = bytes(buffer[:newline]).strip()
            del buffer[:newline + 1]
            if not line:
                continue
            reply = await rpc.handle(line)
            if reply is not None and not await _send(stream, reply):
                return


async def _send(stream, data: bytes) -> bool:
    try:
        await stream.send_all(data + b"\n")
        return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


async def call_unix(path: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send one JSON-RPC text to the socket at `path` and return the answer
    line (fanout.py, tests). Raises OSError when nobody listens there."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(payload + b"\n")
            buffer = bytearray()
            while b"\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionResetError(f"{path}: closed without an answer")
                buffer += chunk
                if len(buffer) > 64 * MAX_LINE:
                    raise OSError(f"{path}: answer too long")
            return bytes(buffer[:buffer.index(b"\n")])
