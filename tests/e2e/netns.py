r"""A throw-away NAT lab made of network namespaces, for end-to-end NAT tests.

    phone (10.77.0.2/24) --veth-- router --bridge "pub"-- server (203.0.113.2/24)
                        10.77.0.1 |      203.0.113.1 \-- peer   (203.0.113.3/24, optional)

* ``phone`` sits on the private net, default route via the router.
* ``router`` forwards (ip_forward=1) and masquerades what leaves the public
  side from 10.77.0.0/24, with ``fully-random`` port selection, so the source
  port the server sees is (almost always) not the phone's bound port — as
  with a real carrier-grade/home NAT. Its conntrack table is the NAT mapping:
  ``set_udp_timeout`` shortens it so a test can watch a pinhole close.
* ``server`` is the public host where the SIP server under test runs.
* ``peer`` (``NatLab(peer=True)``) is a second public host on the same
  bridge, for a second phone that is reachable without NAT. It is a separate
  namespace rather than a second address in ``server`` so that "the proxy
  talks to the peer" is real traffic over a link, not loopback inside the
  server's namespace, and the peer's sockets can't accidentally see the
  server's. The server and the peer reach each other directly over the bridge
  (no NAT, and bridge netfilter is switched off in the router namespace so
  that traffic is not even conntracked).

The server and the peer have no route to 10.77.0.0/24: the phone is reachable
from the public side only through a NAT mapping.

Nothing here touches the host's own network: all addresses live only inside
the namespaces (10.77.0.0/24 private, 203.0.113.0/24 = TEST-NET-3 public),
and none of the namespaces has a link to the root namespace. The names carry
the creating pid and a random suffix (``bsip-<pid>-<hex>-<role>``) so parallel
runs (pytest-xdist) don't collide; everything is removed on ``__exit__``
(normal end, exception, Ctrl-C), including any process still running inside
the namespaces. If a run is SIGKILLed, ``remove_stale()`` (called by
``require_root_and_tools``) deletes leftovers whose creator is dead.

Use::

    from tests.e2e.netns import NatLab, require_root_and_tools

    def test_something():
        require_root_and_tools()
        with NatLab() as lab:
            srv = lab.popen(lab.server, lab.python_argv("-m", "host", "run", ...))
            sock = lab.socket(lab.phone)            # a UDP socket living in phone
            sock.sendto(b"x", (lab.server_ip, 5060))
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket as _socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFIX = "bsip"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

PRIVATE_NET = "10.77.0.0/24"
PHONE_IP = "10.77.0.2"
ROUTER_PRIVATE_IP = "10.77.0.1"
ROUTER_PUBLIC_IP = "203.0.113.1"
SERVER_IP = "203.0.113.2"
PEER_IP = "203.0.113.3"
PUBLIC_PREFIXLEN = 24

# The kernel's per-namespace conntrack knobs (nf_conntrack is built into the
# kernels this was written on; they exist in every new namespace right away).
UDP_TIMEOUT = "net/netfilter/nf_conntrack_udp_timeout"
UDP_TIMEOUT_STREAM = "net/netfilter/nf_conntrack_udp_timeout_stream"

NFT_RULES = """\
table ip natlab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {private} oifname "pub" masquerade {flags}
    }}
}}
"""


def _ip(*args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
    return run


def _setns_current_thread(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(min_age: float = 600.0) -> list[str]:
    """Delete ``bsip-<pid>-...`` namespaces left by runs that were killed
    without clean-up: only those whose creating pid no longer exists *and*
    that are older than ``min_age`` seconds (a guard against pid namespaces
    where another live run's pid is not visible). Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(NETNS_DIR.iterdir())
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name.split("-")
        if len(parts) != 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue
        if _pid_alive(int(parts[1])) or age < min_age:
            continue
        _kill_pids_in(entry.name)
        if _ip("netns", "del", entry.name, check=False).returncode == 0:
            removed.append(entry.name)
    return removed


def _kill_pids_in(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (only ever one of
    ours: a lab's namespaces hold nothing but what the lab's user started)."""
    run = _ip("netns", "pids", ns, check=False)
    for word in run.stdout.split():
        if word.isdigit() and int(word) != os.getpid():
            try:
                os.kill(int(word), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


_probe_result: str | None = None  # "" = works, else the reason to skip


def _probe() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2, nftables)"
    name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        add = _ip("netns", "add", name, check=False)
        if add.returncode != 0:
            return f"cannot create a network namespace (no CAP_SYS_ADMIN/CAP_NET_ADMIN?): {add.stderr.strip()}"
        link = _ip("-n", name, "link", "add", "name", "a", "type", "veth", "peer", "name", "b", check=False)
        if link.returncode != 0:
            return f"cannot create a veth pair in a namespace: {link.stderr.strip()}"
        nft = subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"],
                             input=NFT_RULES.format(private=PRIVATE_NET, flags="fully-random"),
                             capture_output=True, text=True, timeout=15)
        if nft.returncode != 0:
            return f"nftables masquerade does not work in a namespace: {nft.stderr.strip()}"
        if not Path("/proc/sys", UDP_TIMEOUT).exists():
            # per-netns, but if the root namespace has none, nf_conntrack is absent
            ok = subprocess.run(["ip", "netns", "exec", name, "test", "-e", f"/proc/sys/{UDP_TIMEOUT}"],
                                timeout=15).returncode == 0
            if not ok:
                return "nf_conntrack UDP timeout sysctls are missing (modprobe nf_conntrack?)"
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespace probe failed: {exc}"
    finally:
        _ip("netns", "del", name, check=False)


def require_root_and_tools() -> None:
    """``pytest.skip()`` with the reason unless this process can build a
    NatLab: root, ``ip`` and ``nft`` present, and a namespace with a veth
    pair and an nftables masquerade rule can actually be made (fails e.g. in
    a container without CAP_NET_ADMIN). The probe runs once per process. Also
    removes namespaces left by killed earlier runs (see ``remove_stale``)."""
    import pytest

    global _probe_result
    if _probe_result is None:
        _probe_result = _probe()
        if not _probe_result:
            remove_stale()
    if _probe_result:
        pytest.skip(_probe_result)


class Lab:
    """What every lab of namespaces shares: building on entry, removing
    everything on exit (whatever happens), and running things inside. A
    subclass names its namespaces (`namespaces`) and builds them (`_build`)."""

    def __init__(self):
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._closed = False

    @property
    def namespaces(self) -> list[str]:
        raise NotImplementedError

    def _build(self) -> None:
        raise NotImplementedError

    def _add_namespaces(self) -> None:
        for ns in self.namespaces:
            self._created.append(ns)  # before "add": a Ctrl-C right after still cleans it
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for scope in ("all", "default"):  # no router-solicitation/MLD noise on the links
                self._write_sysctl(ns, f"net/ipv6/conf/{scope}/disable_ipv6", "1", optional=True)

    # -- building and tearing down -------------------------------------------------

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started through this lab (and anything else
        still inside its namespaces), then delete the namespaces (which
        deletes their veths and the bridge). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self._created):
            _kill_pids_in(ns)
            _ip("netns", "del", ns, check=False)

    # -- running things inside ----------------------------------------------------

    @staticmethod
    def exec_argv(ns: str, argv: list[str]) -> list[str]:
        """``argv`` prefixed with ``ip netns exec <ns>`` (for trio.run_process
        and friends). ``ip netns exec`` execs the program itself, so the pid
        you get is the program's."""
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    @staticmethod
    def python_argv(*args: str) -> list[str]:
        """``[<this venv's python>, *args]``, e.g. ``python_argv("-m", "host", "run", ...)``."""
        return [sys.executable, *map(str, args)]

    def run(self, ns: str, argv: list[str], *, check: bool = True, timeout: float = 30,
            **kw) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside ``ns``; text output captured unless told otherwise."""
        kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
        kw.setdefault("text", True)
        run = subprocess.run(self.exec_argv(ns, argv), timeout=timeout, **kw)
        if check and run.returncode != 0:
            raise RuntimeError(f"in {ns}: {' '.join(map(str, argv))} failed ({run.returncode}): "
                               f"{(run.stderr or '').strip() if kw.get('text') else run.stderr}")
        return run

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """``subprocess.Popen`` inside ``ns``, in its own session; killed (whole
        process group) when the lab closes if it is still running."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_argv(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    def python(self, ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
        """Run ``python -c code *args`` inside ``ns`` (see ``popen``)."""
        return self.popen(ns, self.python_argv("-c", code, *args), **kw)

    def socket(self, ns: str, family: int = _socket.AF_INET, type: int = _socket.SOCK_DGRAM,
               proto: int = 0) -> _socket.socket:
        """A socket created inside ``ns`` but usable from this process (a
        socket stays in the namespace it was made in). Made by a short-lived
        thread that setns()es itself, so this process's threads never move.
        Wrap with ``trio.socket.from_stdlib_socket`` for trio code."""
        result: dict = {}

        def make() -> None:
            try:
                fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
                try:
                    _setns_current_thread(fd)
                finally:
                    os.close(fd)
                result["sock"] = _socket.socket(family, type, proto)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result["exc"] = exc

        thread = threading.Thread(target=make, name=f"setns-{ns}")
        thread.start()
        thread.join(10)
        if "exc" in result:
            raise result["exc"]
        if "sock" not in result:
            raise RuntimeError(f"could not create a socket in {ns}")
        return result["sock"]

    # -- sysctls -----------------------------------------------------------------------

    def _write_sysctl(self, ns: str, key: str, value: str, *, optional: bool = False) -> bool:
        """Write /proc/sys/<key> as seen from ``ns`` (net sysctls are per
        namespace and resolved by the writer's namespace, hence the exec)."""
        path = f"/proc/sys/{key.replace('.', '/')}"
        run = self.run(ns, ["sh", "-c", 'test -e "$0" || exit 3; printf %s "$1" > "$0"', path, value],
                       check=False)
        if run.returncode == 0:
            return True
        if optional and run.returncode == 3:
            return False
        raise RuntimeError(f"in {ns}: cannot set {path} = {value}: rc {run.returncode} {run.stderr.strip()}")

    def read_sysctl(self, ns: str, key: str) -> str:
        return self.run(ns, ["cat", f"/proc/sys/{key.replace('.', '/')}"]).stdout.strip()


class NatLab(Lab):
    """Context manager building phone / router / server (/ peer) namespaces;
    see the module docstring for the picture. All attributes are plain
    strings: ``phone``, ``router``, ``server``, ``peer`` (namespace names;
    ``peer`` is None unless asked for), ``phone_ip``, ``router_private_ip``,
    ``router_public_ip``, ``server_ip``, ``peer_ip``, ``private_net``."""

    def __init__(self, *, peer: bool = False, nat_flags: str = "fully-random"):
        super().__init__()
        self.phone = f"{self.tag}-phone"
        self.router = f"{self.tag}-router"
        self.server = f"{self.tag}-server"
        self.peer = f"{self.tag}-peer" if peer else None
        self.private_net = PRIVATE_NET
        self.phone_ip = PHONE_IP
        self.router_private_ip = ROUTER_PRIVATE_IP
        self.router_public_ip = ROUTER_PUBLIC_IP
        self.server_ip = SERVER_IP
        self.peer_ip = PEER_IP if peer else None
        self.nat_flags = nat_flags  # "fully-random", "random", or "" (port-preserving)

    @property
    def namespaces(self) -> list[str]:
        return [ns for ns in (self.phone, self.router, self.server, self.peer) if ns]

    # -- building --------------------------------------------------------------

    def _build(self) -> None:
        self._add_namespaces()
        r = self.router
        # private side: router "priv" <-> phone "eth0"
        _ip("-n", r, "link", "add", "name", "priv", "type", "veth", "peer", "name", "eth0", "netns", self.phone)
        _ip("-n", r, "addr", "add", f"{self.router_private_ip}/24", "dev", "priv")
        _ip("-n", r, "link", "set", "priv", "up")
        _ip("-n", self.phone, "addr", "add", f"{self.phone_ip}/24", "dev", "eth0")
        _ip("-n", self.phone, "link", "set", "eth0", "up")
        _ip("-n", self.phone, "route", "add", "default", "via", self.router_private_ip)
        # public side: bridge "pub" in the router (its address is the NAT's
        # public address), one veth port per public host
        _ip("-n", r, "link", "add", "name", "pub", "type", "bridge")
        _ip("-n", r, "addr", "add", f"{self.router_public_ip}/{PUBLIC_PREFIXLEN}", "dev", "pub")
        _ip("-n", r, "link", "set", "pub", "up")
        hosts = [("srv", self.server, self.server_ip)]
        if self.peer:
            hosts.append(("peer", self.peer, self.peer_ip))
        for port, ns, addr in hosts:
            _ip("-n", r, "link", "add", "name", f"pub-{port}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", r, "link", "set", f"pub-{port}", "master", "pub")
            _ip("-n", r, "link", "set", f"pub-{port}", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{PUBLIC_PREFIXLEN}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self._write_sysctl(r, "net/ipv4/ip_forward", "1")
        # br_netfilter is built in and defaults to 1 per namespace: bridged
        # server<->peer frames would then go through the router's ip hooks
        # and conntrack. Not wanted; absent without br_netfilter, so optional.
        self._write_sysctl(r, "net/bridge/bridge-nf-call-iptables", "0", optional=True)
        self.run(r, ["nft", "-f", "-"], input=NFT_RULES.format(private=self.private_net, flags=self.nat_flags))

    # -- conntrack ---------------------------------------------------------------------

    def set_udp_timeout(self, seconds: int, stream: int | None = None) -> None:
        """Short UDP conntrack timeouts in the router: a NAT mapping then dies
        ``seconds`` after the last datagram in either direction. Both knobs
        are set (``stream`` defaults to ``seconds``): the kernel uses
        nf_conntrack_udp_timeout until a flow has seen a reply, and the
        _stream one once it has seen replies and stayed active over ~2 s. A
        new value applies to an existing entry from its next packet on; call
        ``flush_conntrack()`` to drop the current mappings outright."""
        self._write_sysctl(self.router, UDP_TIMEOUT, str(int(seconds)))
        self._write_sysctl(self.router, UDP_TIMEOUT_STREAM, str(int(seconds if stream is None else stream)))

    def conntrack_available(self) -> bool:
        return shutil.which("conntrack") is not None and self.run(
            self.router, ["conntrack", "-L"], check=False).returncode == 0

    def flush_conntrack(self) -> bool:
        """Drop every conntrack entry (= every NAT mapping) in the router.
        Returns False (and does nothing) if the conntrack tool is missing or
        does not work there."""
        if shutil.which("conntrack") is None:
            return False
        return self.run(self.router, ["conntrack", "-F"], check=False).returncode == 0

    def conntrack_entries(self, proto: str = "udp") -> list[str]:
        """The router's conntrack entries for ``proto`` (one text line each;
        empty if the conntrack tool is unavailable) — handy in assertion messages."""
        if shutil.which("conntrack") is None:
            return []
        run = self.run(self.router, ["conntrack", "-L", "-p", proto], check=False)
        return [line for line in run.stdout.splitlines() if line.strip()]


class SourcesLab(Lab):
    """Two namespaces joined by one veth pair, with several addresses on
    each side, for tests that need many distinct sources (flood limits):

        server (198.18.0.1 .. 198.18.0.S) --veth-- clients (198.18.1.1 .. 198.18.C/16)

    198.18.0.0/15 is the benchmarking range (RFC 2544), used nowhere else.
    Both sides are on one /16, so every address reaches every other over
    the link, with no router; neither namespace has a link to the root
    namespace, so nothing leaves these addresses. ``server_ips`` and
    ``client_ips`` list them (at most 250 server and 2,500 client ones)."""

    def __init__(self, *, server_addresses: int = 2, client_addresses: int = 8):
        super().__init__()
        if not (1 <= server_addresses <= 250 and 1 <= client_addresses <= 2500):
            raise ValueError("1..250 server and 1..2,500 client addresses")
        self.server = f"{self.tag}-srv"
        self.clients = f"{self.tag}-cli"
        self.server_ips = [f"198.18.0.{1 + i}" for i in range(server_addresses)]
        self.client_ips = [f"198.18.{1 + i // 250}.{1 + i % 250}" for i in range(client_addresses)]

    @property
    def namespaces(self) -> list[str]:
        return [self.server, self.clients]

    def _build(self) -> None:
        self._add_namespaces()
        _ip("-n", self.server, "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", self.clients)
        for ns, addresses in ((self.server, self.server_ips), (self.clients, self.client_ips)):
            batch = "".join(f"address add {ip}/16 dev eth0\n" for ip in addresses)
            done = subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, capture_output=True,
                                  text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"in {ns}: adding addresses failed: {done.stderr.strip()}")
            _ip("-n", ns, "link", "set", "eth0", "up")
