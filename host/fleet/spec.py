"""What a worker inherits from the parent, passed in its environment.

BABELSIP_FLEET holds JSON: the worker's index and the count, the descriptors
of its sockets (UDP per listen address, the shared TCP listeners, one socket
pair end per peer), the readiness pipe it reports on once serving, and the
lifeline pipe whose end of file means the parent is gone.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

ENV = "BABELSIP_FLEET"


@dataclass
class WorkerSpec:
    index: int
    count: int
    # (transport, host, port, fd) in --listen order: a SO_REUSEPORT member
    # of its own (a UDP socket; a TCP, TLS, WS or WSS listener), steered by
    # source address (steering.py).
    listen: list[tuple[str, str, int, int]] = field(default_factory=list)
    peers: dict[int, int] = field(default_factory=dict)               # peer index -> fd
    ready: int = -1
    lifeline: int = -1
    store: str | None = None      # the LMDB directory when no --store is given
    ctl_socket: str | None = None  # its management socket, which the parent asks

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "listen": self.listen, "peers": {str(k): v for k, v in self.peers.items()},
                           "ready": self.ready, "lifeline": self.lifeline, "store": self.store,
                           "ctl_socket": self.ctl_socket})

    @classmethod
    def from_env(cls, environ=os.environ) -> "WorkerSpec | None":
        text = environ.get(ENV)
        if not text:
            return None
        raw = json.loads(text)
        return cls(index=raw["index"], count=raw["count"],
                   listen=[tuple(entry) for entry in raw["listen"]],
                   peers={int(k): v for k, v in raw["peers"].items()},
                   ready=raw["ready"], lifeline=raw["lifeline"], store=raw.get("store"),
                   ctl_socket=raw.get("ctl_socket"))

    def fds(self) -> list[int]:
        return ([fd for *_, fd in self.listen] + list(self.peers.values()) + [fd for fd in (self.ready, self.lifeline) if fd >= 0])

    # In the worker: the inherited descriptors as sockets.
    def addresses(self) -> list[tuple[str, str, int]]:
        return [(transport, host, port) for transport, host, port, _ in self.listen]

    def socket_for(self, transport: str, host: str, port: int) -> socket.socket:
        for t, h, p, fd in self.listen:
            if (t, h, p) == (transport, host, port):
                return socket.socket(fileno=fd)
        raise LookupError(f"no inherited socket for {transport}:{host}:{port}")

    def peer_sockets(self) -> dict[int, socket.socket]:
        return {peer: socket.socket(fileno=fd) for peer, fd in self.peers.items()}

    def report_ready(self) -> None:
        if self.ready >= 0:
            try:
                os.write(self.ready, b"ready\n")
            finally:
                os.close(self.ready)
                self.ready = -1

