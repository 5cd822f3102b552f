"""`python -m babelsip_sdk run ROUTE.py` (stdio) or
`python -m babelsip_sdk serve --listen HOST:PORT ROUTE.py` (TCP logic server).

The TCP server loads the route once and serves every host connection with
its own protocol session on its own thread, so hooks must be thread-safe
when several hosts (or a host with several connections) use one server.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

from babelsip_sdk import runner
from babelsip_sdk.loader import RouteLoadError, load_route
from babelsip_sdk.session import Session


def _serve_connection(route, conn: socket.socket, peer) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        Session(route, conn.recv, conn.sendall).run()
    except OSError as e:
        print(f"babelsip_sdk: connection from {peer[0]}:{peer[1]} ended: {e}", file=sys.stderr)
    finally:
        conn.close()


def serve(listen: str, path: str) -> int:
    host, _, port = listen.rpartition(":")
    try:
        route = load_route(path)
    except RouteLoadError as e:
        where = f"{e.file}:{e.line}: " if e.file and e.line else ""
        print(f"babelsip_sdk: cannot load route: {where}{e.message}", file=sys.stderr)
        return 1
    srv = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), reuse_port=False)
    bound = srv.getsockname()
    print(f"babelsip_sdk: serving {path} on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    try:
        while True:
            conn, peer = srv.accept()
            threading.Thread(target=_serve_connection, args=(route, conn, peer), daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        srv.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m babelsip_sdk")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="serve one host on stdin/stdout")
    run.add_argument("route")
    srv = sub.add_parser("serve", help="serve hosts over TCP")
    srv.add_argument("--listen", required=True, metavar="HOST:PORT")
    srv.add_argument("route")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return runner.main([args.route])
    return serve(args.listen, args.route)


if __name__ == "__main__":
    sys.exit(main())
