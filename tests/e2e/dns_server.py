"""A tiny authoritative DNS server for tests, on a loopback UDP port.

Built on dnspython's message classes: answers from a dict zone, NXDOMAIN
for names outside it, and counts every query by (name, type), so a test can
check what the resolver under test asked and how often (TTL caching).
"""

from __future__ import annotations

import collections
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class ZoneServer:
    """`zone`: {("name.", "TYPE"): (ttl, ["rdata text", ...])}."""

    def __init__(self, zone: dict, host: str = "127.0.0.1"):
        self.zone = {(name.lower().rstrip(".") + ".", kind): value for (name, kind), value in zone.items()}
        self.names = {name for name, _ in self.zone}
        self.queries: collections.Counter = collections.Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ZoneServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                query = dns.message.from_wire(wire)
            except Exception:   # a test server: ignore what it cannot read
                continue
            self.sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query):
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name.rstrip("."), kind)] += 1
        entry = self.zone.get((name, kind))
        if entry is not None:
            ttl, values = entry
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", kind, values))
        elif name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response
