"""The management methods by their wire names, as Kamailio's kamcmd names
them where one exists, and the dispatcher that serves them from an adapter
(local.py for one core, fanout.py for the parent of several workers).

Also "system.listMethods" and "system.methodHelp", as kamcmd's `help` expects.
"""

from __future__ import annotations

from host.management.jsonrpc import NOT_FOUND, Dispatcher, RpcError

# wire name -> the adapter's coroutine
METHODS = {
    "core.version": "core_version",
    "core.uptime": "core_uptime",
    "core.info": "core_info",
    "stats.get_statistics": "stats_get_statistics",
    "stats.reset_statistics": "stats_reset_statistics",
    "tm.stats": "tm_stats",
    "routes.list": "routes_list",
    "routes.reload": "routes_reload",
    "routes.workers": "routes_workers",
    "ul.dump": "ul_dump",
    "ul.lookup": "ul_lookup",
    "ul.rm": "ul_rm",
    "ul.rm_contact": "ul_rm_contact",
    "dlg.list": "dlg_list",
    "dlg.end": "dlg_end",
    "store.get": "store_get",
    "status.summary": "status_summary",
    "metrics.snapshot": "metrics_snapshot",
}


def dispatcher_for(adapter) -> Dispatcher:
    rpc = Dispatcher()
    for wire, attr in METHODS.items():
        rpc.register(wire, getattr(adapter, attr))

    async def list_methods() -> list:
        """The names of every method."""
        return sorted(rpc.methods)

    async def method_help(name: str) -> str:
        """One line on what a method does, and its parameters."""
        method = rpc.methods.get(name)
        if method is None:
            raise RpcError(NOT_FOUND, "no such method", name)
        return f"{name}{method.signature}: {method.doc}"

    rpc.register("system.listMethods", list_methods)
    rpc.register("system.methodHelp", method_help)
    return rpc
