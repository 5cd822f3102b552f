"""Starts the management listeners of one server: the UNIX socket (by
default) and, when asked, the HTTP listener. Wired into Server.run's nursery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from host.management.methods import dispatcher_for

log = logging.getLogger("babelsip.management")


@dataclass(frozen=True)
class ManagementConfig:
    ctl_socket: str | None = "default"     # a path, "default" (unix.py), or None: no socket
    http: tuple[str, int] | None = None    # (host, port) of the HTTP listener
    http_token: str | None = None          # the bearer token /RPC needs


async def run_management(adapter, config: ManagementConfig, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `adapter` (local.py or fanout.py) on the configured listeners;
    started() reports {"ctl_socket": path or None, "http_port": port or None}."""
    from host.management.unix import SocketInUse, default_socket_path, serve_unix
    rpc = dispatcher_for(adapter)
    started = {"ctl_socket": None, "http_port": None}
    async with trio.open_nursery() as nursery:
        if config.ctl_socket is not None:
            explicit = config.ctl_socket != "default"
            path = config.ctl_socket if explicit else default_socket_path()
            try:
                started["ctl_socket"] = await nursery.start(serve_unix, path, rpc)
            except (SocketInUse, PermissionError) as exc:
                if explicit:
                    raise
                # The default place is taken by another server on this host:
                # this one serves without a socket rather than not at all.
                log.warning("management socket not opened: %s (give --ctl-socket PATH)", exc)
        if config.http is not None:
            from host.management.http import HttpApp, serve_http
            from host.management.metrics import exposition

            async def metrics() -> bytes:
                return exposition(await adapter.metrics_snapshot())

            app = HttpApp(rpc, config.http_token or "", metrics, adapter.status_summary)
            host, port = config.http
            started["http_port"] = await nursery.start(serve_http, host, port, app)
        task_status.started(started)
