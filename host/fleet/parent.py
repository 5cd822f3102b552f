"""The parent of `babelsip run --workers N`: binds, starts, supervises.

It binds every listening socket first (so a worker restarted later gets the
very same sockets, and no datagram or connection waiting in them is lost),
makes the socket pairs between workers and the embedded store's directory,
then runs each worker as `python -m host run ...` with the same arguments
and its descriptors named in BABELSIP_FLEET (host/fleet/spec.py). A worker
that exits is restarted under the same policy as a route's runtime
(host/supervision/policy.py); the others keep serving meanwhile. SIGTERM or
SIGINT are passed on to the workers, which drain their calls and stop; a
second signal stops them at once. SIGUSR1 is passed on.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile

import trio

from host.shell.tcp import open_tcp_listener
from host.shell.udp import open_udp_socket
from host.supervision.policy import GIVE_UP, RestartPolicy, plan_restart

from .spec import ENV, WorkerSpec
from .steering import steer_by_source

log = logging.getLogger("babelsip.fleet")

READY_TIMEOUT = 60.0    # a worker that is not serving by then is killed and restarted
STOP_GRACE = 5.0        # after the workers' own drain time, before they are killed
PAIR_BUFFER = 4 * 1024 * 1024
STORE_PREFIX = "babelsip-store-"   # + the parent's pid: see _remove_orphaned_stores


class StartFailed(Exception):
    """A worker exited before it ever served: a configuration problem, which
    every restart would meet again."""

    def __init__(self, code: int):
        super().__init__(f"worker exited with status {code} before serving")
        self.code = code


class Parent:
    def __init__(self, argv: list[str], listen: list[tuple[str, str, int]], count: int, *,
                 shared_store: bool, drain_seconds: float, management=None,
                 policy: RestartPolicy = RestartPolicy()):
        self.argv, self.listen, self.count = argv, listen, count
        self.shared_store = shared_store   # no --store: the workers share an LMDB directory
        self.drain_seconds = drain_seconds
        self.policy = policy
        self.management = management       # the operator's listeners (host/management/service.py)
        self._private_dir: str | None = None   # the workers' management sockets
        self.bound: list[tuple[str, str, int]] = []
        self._sockets: list[socket.socket] = []     # kept open for restarts
        self._listen_fds: list[list[tuple[str, str, int, int]]] = [[] for _ in range(count)]
        self._peer_fds: list[dict[int, int]] = [{} for _ in range(count)]
        self._lifeline: tuple[int, int] | None = None
        self._store_dir: str | None = None
        self._procs: list[trio.Process | None] = [None] * count
        self._served = [False] * count
        self._all_ready = trio.Event()
        self.stopping = False
        self.restarts = 0

    # ------------------------------------------------------------ setup
    def bind(self) -> list[tuple[str, str, int]]:
        """Bind every address (errors surface here, before any worker)."""
        for transport, host, port in self.listen:
            # One member of a SO_REUSEPORT group per worker, in index order,
            # steered by source address (steering.py); TLS, WS and WSS
            # listen on TCP.
            opener = open_udp_socket if transport == "udp" else open_tcp_listener
            first = self._keep(opener(host, port, reuse_port=True))
            port = first.getsockname()[1]
            members = [first] + [self._keep(opener(host, port, reuse_port=True))
                                 for _ in range(self.count - 1)]
            self._steer(first, f"{transport}:{host}:{port}")
            for index, sock in enumerate(members):
                self._listen_fds[index].append((transport, host, port, sock.fileno()))
            self.bound.append((transport, host, port))
        for i in range(self.count):
            for j in range(i + 1, self.count):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for end in (a, b):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_BUFFER)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PAIR_BUFFER)
                    self._keep(end)
                self._peer_fds[i][j], self._peer_fds[j][i] = a.fileno(), b.fileno()
        self._lifeline = os.pipe()
        self._private_dir = tempfile.mkdtemp(prefix=f"babelsip-fleet-{os.getpid()}-")
        if self.shared_store:
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            base = base or tempfile.gettempdir()
            _remove_orphaned_stores(base)
            self._store_dir = tempfile.mkdtemp(prefix=f"{STORE_PREFIX}{os.getpid()}-", dir=base)
        return self.bound

    def _steer(self, member: socket.socket, where: str) -> None:
        try:
            steer_by_source(member, self.count)
        except OSError as exc:
            log.warning("%s: the kernel does not steer by source address (%s): a source using "
                        "several ports reaches several workers, and --pike-rate holds per worker",
                        where, exc.strerror or exc)

    def give_to(self, identity) -> None:
        """Before dropping to `identity` (host/privileges): the directories
        made as root are the workers' to write in."""
        for directory in (self._private_dir, self._store_dir):
            if directory is not None:
                os.chown(directory, identity.uid, identity.gid)

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None
        for directory in (self._store_dir, self._private_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self._store_dir = self._private_dir = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # One secret for every worker: a nonce minted by one validates on the others.
        env.setdefault("BABELSIP_AUTH_SECRET", secrets.token_hex(32))
        return env

    # -------------------------------------------------------------- run
    async def run(self) -> int:
        env = self._environment()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, nursery.cancel_scope)
                failures: list[StartFailed] = []
                for index in range(self.count):
                    nursery.start_soon(self._supervise, index, env, failures, nursery.cancel_scope)
                with trio.move_on_after(READY_TIMEOUT):
                    await self._all_ready.wait()
                if failures:
                    return failures[0].code
                if not self._all_ready.is_set():
                    log.error("the workers did not start serving within %g s", READY_TIMEOUT)
                    await self._stop_workers()
                    return 1
                for transport, host, port in self.bound:
                    log.info("listening on %s:%s:%d", transport, host, port)
                if self.management is not None:
                    await self._start_management(nursery)
                log.info("%d worker processes serving (parent pid %d)", self.count, os.getpid())
            return failures[0].code if failures else 0
        finally:
            await self._kill_all()

    def _ctl_socket(self, index: int) -> str:
        return os.path.join(self._private_dir, f"w{index}.ctl")

    async def _start_management(self, nursery: trio.Nursery) -> None:
        """One management API for the whole server: each call is answered
        by asking the workers on their private sockets."""
        from host.management.fanout import FanoutAdapter
        from host.management.service import run_management
        adapter = FanoutAdapter([self._ctl_socket(i) for i in range(self.count)])
        where = await nursery.start(run_management, adapter, self.management)
        log.info("management: %s", where)

    async def _supervise(self, index: int, env: dict, failures: list, scope: trio.CancelScope) -> None:
        history: tuple[float, ...] = ()
        while not self.stopping:
            proc, ready_read = await self._start(index, env)
            async with trio.open_nursery() as watch:
                watch.start_soon(self._await_ready, index, ready_read, proc)
                code = await proc.wait()
                watch.cancel_scope.cancel()
            self._procs[index] = None
            if self.stopping:
                return
            if not self._served[index] and not self._all_ready.is_set():
                log.error("worker %d exited with status %s before serving; stopping", index, code)
                failures.append(StartFailed(code if code > 0 else 1))
                self.stopping = True
                await self._stop_workers()
                scope.cancel()
                return
            self.restarts += 1
            plan = plan_restart(self.policy, history, trio.current_time())
            history = plan.history
            if plan.verdict is GIVE_UP:
                log.error("worker %d exited with status %s again; restarting it in %g s",
                          index, code, plan.delay)
            else:
                log.warning("worker %d (pid %d) exited with status %s; its calls in progress "
                            "are lost; restarting it", index, proc.pid, code)
            await trio.sleep(plan.delay)

    async def _start(self, index: int, env: dict) -> tuple[trio.Process, int]:
        ready_read, ready_write = os.pipe()
        spec = WorkerSpec(index=index, count=self.count, listen=self._listen_fds[index],
                          peers=self._peer_fds[index], ready=ready_write,
                          lifeline=self._lifeline[0], store=self._store_dir,
                          ctl_socket=self._ctl_socket(index))
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "host", *self.argv], env={**env, ENV: spec.to_env()},
                pass_fds=spec.fds(), process_group=0)  # signals reach workers only through us
        finally:
            os.close(ready_write)
        self._procs[index] = proc
        self._served[index] = False
        return proc, ready_read

    async def _await_ready(self, index: int, ready_read: int, proc: trio.Process) -> None:
        stream = trio.lowlevel.FdStream(ready_read)
        try:
            with trio.move_on_after(READY_TIMEOUT) as waited:
                data = await stream.receive_some(64)
            if waited.cancelled_caught or not data.startswith(b"ready"):
                if waited.cancelled_caught:
                    log.error("worker %d not serving after %g s: killing it", index, READY_TIMEOUT)
                    proc.kill()
                return
            self._served[index] = True
            if all(self._served):
                self._all_ready.set()
        finally:
            await stream.aclose()

    # ------------------------------------------------------------ stop
    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    self._signal_all(signal.SIGUSR1)
                    continue
                if self.stopping:          # a second signal: stop now
                    self._signal_all(signal.SIGTERM)
                    continue
                log.info("received %s: stopping the workers", signal.Signals(signum).name)
                self.stopping = True
                await self._stop_workers()
                scope.cancel()

    async def _stop_workers(self) -> None:
        self._signal_all(signal.SIGTERM)
        with trio.move_on_after(self.drain_seconds + STOP_GRACE):
            for proc in list(self._procs):
                if proc is not None:
                    await proc.wait()

    def _signal_all(self, signum: int) -> None:
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def _kill_all(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self._procs:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def _remove_orphaned_stores(base: str) -> None:
    """A parent killed with SIGKILL could not remove its store directory
    (its registrations die with it, as with one process): the next parent
    removes those whose parent is gone, so /dev/shm does not fill up."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        pid = name[len(STORE_PREFIX):].split("-", 1)[0]
        if not name.startswith(STORE_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except PermissionError:
            pass   # another user's live server
