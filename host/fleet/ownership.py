"""Which worker owns a message, and the frames workers hand each other.

Pure functions over bytes: no sockets, no trio.

Ownership follows the Call-ID: every request and response of one call and
of its dialog carries it (RFC 3261 §8.1.1.4, §12), so one hash sends an
INVITE, its retransmissions, its CANCEL, the ACK, the BYE and every response
to the worker that holds their transactions. The keepalive pings a worker
sends itself carry its index in their Call-ID, so their answers return to it.
"""

from __future__ import annotations

import re
import struct
import zlib

# Call-ID (or its compact form "i") in the header block; a Call-ID is one
# word (RFC 3261 §25.1: word ["@" word]), so it ends at white space.
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\s]+)", re.IGNORECASE)
KEEPALIVE_CALL_ID = b"ka-"


def call_id_of(message: bytes) -> bytes | None:
    """The Call-ID of a raw SIP message, or None when it has none (the owner
    of such a message does not matter: any worker answers it 400)."""
    end = message.find(b"\r\n\r\n")
    match = _CALL_ID.search(message, 0, end if end >= 0 else len(message))
    return match.group(1) if match else None


def keepalive_salt(worker: int) -> str:
    """The start of every keepalive ping's Call-ID token from `worker`."""
    return f"{worker:02x}"


def owner_of(message: bytes, workers: int) -> int | None:
    """The index of the worker that owns `message`, or None for any."""
    call_id = call_id_of(message)
    if call_id is None:
        return None
    if call_id.startswith(KEEPALIVE_CALL_ID):
        try:   # "ka-" + keepalive_salt(worker) + ... (host/sip/keepalive.py)
            return int(call_id[3:5], 16) % workers
        except ValueError:
            pass
    return zlib.crc32(call_id) % workers


# ---------------------------------------------------------------- frames
# One datagram on a worker-to-worker socket pair. Kinds:
#   MESSAGE  a SIP message received from (host, port) over `transport`, for
#            the owner to process as if it had arrived there; over a stream
#            transport (tcp, tls, ws, wss) the connection stays with the
#            sender, which is its holder.
#   SEND     bytes for the receiver to send on the `transport` connection it
#            holds to (host, port).
#   HOLDS    the sender now holds a `transport` connection to (host, port).
#   DROPS    the sender no longer holds it.
# A connection is named by its transport and remote address together: a TLS
# flow and a TCP flow from one address and port are different connections.
#   HELLO    the sender (re)started: forget what it held, tell it what you hold.
MESSAGE, SEND, HOLDS, DROPS, HELLO = b"M", b"S", b"H", b"D", b"!"
TRANSPORTS = (b"udp", b"tcp", b"tls", b"ws", b"wss")
_HEAD = struct.Struct("!cBBH")   # kind, transport index, host length, port


def frame(kind: bytes, transport: str = "udp", host: str = "", port: int = 0,
          data: bytes = b"") -> bytes:
    raw_host = host.encode()
    return _HEAD.pack(kind, TRANSPORTS.index(transport.encode()), len(raw_host), port) + raw_host + data


def unframe(datagram: bytes) -> tuple[bytes, str, str, int, bytes]:
    """(kind, transport, host, port, data); ValueError on a malformed frame."""
    if len(datagram) < _HEAD.size:
        raise ValueError("short handoff frame")
    kind, transport, host_len, port = _HEAD.unpack_from(datagram)
    start = _HEAD.size
    if transport >= len(TRANSPORTS) or len(datagram) < start + host_len:
        raise ValueError("malformed handoff frame")
    host = datagram[start:start + host_len].decode()
    return kind, TRANSPORTS[transport].decode(), host, port, datagram[start + host_len:]
