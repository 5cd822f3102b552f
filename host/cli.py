"""`babelsip` command line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from host.config import parse_command_line, where_set
from host.logs import LOG_FORMATS, configure_logging
from host.privileges.identity import PrivilegeError
from host.routes.settings import ConfigError
from host.sip.errors import BadMessage
from host.sip.uri import parse_uri
from host.edge_options import add_edge_flags, edge_extra
from host.privileges.handover import add_privilege_flags

log = logging.getLogger("babelsip")

DRAIN_SECONDS = 5.0   # how long a stop waits for calls in progress to get their answer


LISTEN_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")   # host/shell/transports.py


def parse_listen(text: str) -> tuple[str, str, int]:
    """'udp:127.0.0.1:5060' or 'tls:[::1]:5061' -> (transport, host, port)."""
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    expected = f"expected TRANSPORT:HOST:PORT, TRANSPORT one of {', '.join(LISTEN_TRANSPORTS)}"
    address = split_host_port(rest) if sep and transport in LISTEN_TRANSPORTS else None
    if address is None:
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}")
    return (transport, *address)


def split_host_port(text: str) -> tuple[str, int] | None:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port); None if it is neither."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return None
    return host, int(port)


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    address = split_host_port(text)
    if address is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return address


def _management_config(args):
    """The management listeners from the run flags, or an error message."""
    from host.management.service import ManagementConfig
    token = os.environ.get("BABELSIP_HTTP_TOKEN") or None
    if args.http_token_file is not None:
        try:
            token = args.http_token_file.read_text().strip() or None
        except OSError as exc:
            return f"--http-token-file {args.http_token_file}: {exc.strerror}"
        if token is None:
            return f"--http-token-file {args.http_token_file}: the file is empty"
    if args.http is not None and token is None:
        return "--http needs a token: --http-token-file FILE or BABELSIP_HTTP_TOKEN"
    socket_path = None if args.ctl_socket.lower() == "none" else args.ctl_socket
    if socket_path not in (None, "default"):
        socket_path = os.path.abspath(socket_path)
    return ManagementConfig(ctl_socket=socket_path, http=args.http, http_token=token)


def parse_relay_to(text: str) -> str:
    try:
        uri = parse_uri(text)
    except BadMessage as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}")
    if uri.scheme == "tel":
        raise argparse.ArgumentTypeError(f"{text!r}: --relay-to needs a sip: URI")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babelsip", description="A programmable SIP proxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the SIP server")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="read options from this TOML file (flags given here override it)")
    run.add_argument("--listen", action="append", type=parse_listen, metavar="TRANSPORT:HOST:PORT",
                     help="where to listen (repeatable), e.g. udp:127.0.0.1:5060")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--relay-to", type=parse_relay_to, metavar="URI",
                      help="static mode: relay every initial request to this URI, record-routed")
    mode.add_argument("--routes", type=Path, metavar="DIR", help="serve the routes in DIR")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                     help="text (default) or json: one object per line")
    run.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                     help="core processes sharing the listening addresses, each owning the "
                          "Call-IDs that hash to it (1; see README \"Several core processes\")")
    run.add_argument("--store", metavar="URL", default=None,
                     help="where registrations, nonce counts, dialogs and script data live: "
                          "redis://[user:password@]host[:port][/db] or rediss:// (TLS), "
                          "redis+sentinel://HOST[:PORT][,...]/SERVICE[/db], "
                          "redis+cluster://HOST[:PORT][,...]; shared by every core pointed at it; "
                          "default: in this process's memory (an LMDB directory with --workers N)")
    run.add_argument("--advertise", metavar="HOST:PORT", default=None,
                     help="how the other cores sharing the --store reach this one (UDP); "
                          "default: the first UDP --listen address")
    run.add_argument("--domain", action="append", default=[], metavar="NAME",
                     help="a domain this server is the registrar for, besides its own addresses "
                          "(repeatable; the first names them all in addresses-of-record)")
    services = run.add_argument_group("registrar, authentication and NAT")
    for flag, key, default, help_text in REGISTRAR_FLAGS:
        services.add_argument(flag, dest=key, type=_non_negative, default=default, metavar="N",
                              help=f"{help_text} ({default})")
    services.add_argument("--auth-algorithms", default="MD5", metavar="LIST",
                          type=_algorithms,
                          help="digest algorithms offered when a route names none, comma-separated, "
                               "from SHA-512-256, SHA-256, MD5 (MD5: deployed clients break on others)")
    services.add_argument("--keepalive", type=_non_negative, default=KEEPALIVE_DEFAULT, metavar="SECONDS",
                          help=f"ping NATed UDP bindings with OPTIONS this often, 0 = never ({KEEPALIVE_DEFAULT})")
    services.add_argument("--stun", action="store_true",
                          help="answer STUN binding requests on the UDP SIP ports (RFC 5626 keepalive)")
    manage = run.add_argument_group("management API (README.md, Management)")
    manage.add_argument("--ctl-socket", default="default", metavar="PATH",
                        help="the JSON-RPC UNIX socket `babelsip ctl` talks to; 'none' for no socket "
                             "(default: $BABELSIP_STATE_DIR/babelsip.ctl, else /run/babelsip/, "
                             "$XDG_RUNTIME_DIR or /tmp/babelsip-UID/)")
    manage.add_argument("--http", type=parse_host_port, metavar="HOST:PORT", default=None,
                        help="also serve JSON-RPC (POST /RPC), /metrics and the status page over "
                             "HTTP here, e.g. 127.0.0.1:8080; needs a token")
    manage.add_argument("--http-token-file", type=Path, metavar="FILE", default=None,
                        help="the bearer token POST /RPC requires, read from FILE "
                             "(else $BABELSIP_HTTP_TOKEN)")
    sub.add_parser("ctl", help="talk to a running server's management API "
                               "(babelsip ctl --help)", add_help=False)
    check = sub.add_parser("check", help="load and compile every route (and routes.toml) without "
                                         "serving; exit 1 with file:line for each problem")
    check.add_argument("--config", type=Path, metavar="FILE",
                       help="check this TOML configuration too; its routes unless --routes is given")
    check.add_argument("--routes", type=Path, metavar="DIR", help="the routes folder")
    # Its own lines say what failed; the loader's log would say it twice.
    check.add_argument("--log-level", default="critical",
                       choices=["debug", "info", "warning", "error", "critical"])
    add_edge_flags(run)
    add_privilege_flags(run)
    tcp = run.add_argument_group("TCP limits (defaults in host/shell/tcp.py and the README)")
    for flag, key, kind, help_text in TCP_FLAGS:
        tcp.add_argument(flag, dest=f"tcp_{key}", type=kind, metavar="N", help=help_text)
    _add_tls_flags(run)
    return parser


def _add_tls_flags(run) -> None:
    tls = run.add_argument_group("TLS, for tls: and wss: listeners and TLS next hops "
                                 "(host/shell/tls.py, README Transports)")
    tls.add_argument("--tls-cert", metavar="FILE", help="our certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    tls.add_argument("--tls-ca", metavar="FILE",
                     help="CA bundle the certificates of next hops (and of clients, with "
                          "--tls-require-client-cert) are checked against; default: the system's")
    tls.add_argument("--tls-verify", choices=("none", "peer"), default="peer",
                     help="check next hops' certificates and names (peer, the default) or not (none)")
    tls.add_argument("--tls-client-cert", metavar="FILE",
                     help="certificate offered to next hops that ask for one (mutual TLS)")
    tls.add_argument("--tls-client-key", metavar="FILE", help="its private key")
    tls.add_argument("--tls-require-client-cert", action="store_true",
                     help="listeners accept only clients with a certificate signed by --tls-ca")
    tls.add_argument("--tls-handshake-timeout", type=_positive(float), default=None, metavar="SECONDS",
                     help="seconds a TLS handshake may take (10)")
    tls.add_argument("--tls-pin", action="append", default=[], type=_tls_pin, metavar="HOST=sha256:HEX",
                     help="accept next hop HOST (the URI's host) only with the certificate of this "
                          "SHA-256 fingerprint, checked instead of the CA (repeatable; "
                          "host/shell/tls_identity.py)")


def _tls_pin(text: str):
    from host.shell.tls_identity import PinError, parse_pin
    try:
        return parse_pin(text)
    except PinError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tls_settings(args, listen):
    """The TLS settings from the flags, checked now (files readable, the
    pieces a listener needs), or an error message."""
    from host.shell.tls import TlsConfigError, TlsSettings
    from host.shell.transports import tls_layers
    paths = {key: os.path.abspath(getattr(args, key)) if getattr(args, key) else None
             for key in ("tls_cert", "tls_key", "tls_ca", "tls_client_cert", "tls_client_key")}
    settings = TlsSettings(cert=paths["tls_cert"], key=paths["tls_key"], ca=paths["tls_ca"],
                           verify=args.tls_verify, client_cert=paths["tls_client_cert"],
                           client_key=paths["tls_client_key"],
                           require_client_cert=args.tls_require_client_cert,
                           pins=tuple(args.tls_pin),
                           **({"handshake_timeout": args.tls_handshake_timeout}
                              if args.tls_handshake_timeout is not None else {}))
    try:
        tls_layers(listen, settings)
    except TlsConfigError as exc:
        return str(exc)
    return settings


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be greater than 0")
        return value
    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative")
    return value


def _algorithms(text: str) -> tuple[str, ...]:
    from host.routes.verbs import AUTH_ALGORITHMS
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in AUTH_ALGORITHMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: algorithms are {', '.join(AUTH_ALGORITHMS)}")
    return tuple(a for a in AUTH_ALGORITHMS if a in names)   # strongest first


KEEPALIVE_DEFAULT = 25   # below the 30 s after which many NATs drop an idle UDP mapping

# flag, registrar.Settings field, default, help
REGISTRAR_FLAGS = (
    ("--min-expires", "min_expires", 60, "shortest registration accepted, else 423"),
    ("--max-expires", "max_expires", 3600, "longest registration granted"),
    ("--default-expires", "default_expires", 3600, "registration time when a REGISTER names none"),
    ("--max-contacts", "max_contacts", 10, "bindings per address-of-record, 0 = no limit"),
)

# flag, TcpTransport keyword, type, help
TCP_FLAGS = (
    ("--tcp-max-connections", "max_connections", _positive(int), "connections open at once (2048)"),
    ("--tcp-max-per-source", "max_per_source", _positive(int), "connections from one IP address (64)"),
    ("--tcp-idle-timeout", "idle_timeout", _positive(float), "seconds a connection may stay silent (300)"),
    ("--tcp-header-timeout", "header_timeout", _positive(float),
     "seconds to complete a message once started, or the first one (10)"),
    ("--tcp-max-queued-bytes", "max_queued_bytes", _positive(int),
     "bytes waiting for a peer that does not read before it is closed (1 MiB)"),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        from host.management.ctl import main as ctl_main
        return ctl_main(argv[1:])
    args = parse_command_line(build_parser(), argv)   # flags over --config FILE
    from host.fleet.spec import WorkerSpec
    fleet = WorkerSpec.from_env() if args.command == "run" else None
    configure_logging(args.log_level, getattr(args, "log_format", "text"),
                      worker=fleet.index if fleet is not None else None)
    if args.command == "check":
        return check_command(args)
    listen = args.listen or [("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060)]
    if fleet is not None:
        listen = fleet.addresses()   # what the parent bound (its ports, if 0 was asked)
    if args.routes is not None and not args.routes.is_dir():
        print(f"babelsip: error: --routes {args.routes}: not a directory", file=sys.stderr)
        return 2
    if args.routes is None and args.relay_to is None:
        print("babelsip: error: give --routes DIR or --relay-to URI", file=sys.stderr)
        return 2
    _absolute_paths(args)
    from host.shell.server import ServerConfig
    tcp = {key: getattr(args, f"tcp_{key}") for _, key, _, _ in TCP_FLAGS
           if getattr(args, f"tcp_{key}") is not None}
    from host.sip.registrar import Settings
    registrar = Settings(**{key: getattr(args, key) for _, key, _, _ in REGISTRAR_FLAGS})
    if registrar.min_expires > registrar.max_expires or not (
            registrar.min_expires <= registrar.default_expires <= registrar.max_expires):
        print("babelsip: error: need --min-expires <= --default-expires <= --max-expires",
              file=sys.stderr)
        return 2
    if args.store is not None:
        from host.storage import StoreError, set_shared_store
        from host.storage.redis import RedisStore
        try:
            set_shared_store(RedisStore(args.store))
        except StoreError as exc:
            print(f"babelsip: error: {exc}", file=sys.stderr)
            return 2
    elif fleet is not None and fleet.store is not None:
        from host.storage import set_shared_store
        from host.storage.lmdb import LmdbStore
        set_shared_store(LmdbStore(fleet.store))
    tls = _tls_settings(args, listen)
    if isinstance(tls, str):
        print(f"babelsip: error: {tls}", file=sys.stderr)
        return 2
    management = _management_config(args)
    if isinstance(management, str):
        print(f"babelsip: error: {management}", file=sys.stderr)
        return 2
    user = _privileges(args, fleet)
    if isinstance(user, str):
        print(f"babelsip: error: {user}", file=sys.stderr)
        return 2
    if user is not None and fleet is None:
        from host.privileges.handover import prepare_paths
        try:
            management = prepare_paths(user, management)
        except OSError as exc:
            print(f"babelsip: error: preparing the directories for --user: {exc}", file=sys.stderr)
            return 1
    if args.workers > 1 and fleet is None:
        return _run_parent(argv, listen, args, management, user)
    if fleet is not None:
        # The parent serves the operator (socket and HTTP) and asks every
        # worker on its private socket (host/management/fanout.py).
        from host.management.service import ManagementConfig
        management = ManagementConfig(ctl_socket=fleet.ctl_socket, http=None)
    extra = {"tcp": tcp} if tcp else {}
    extra.update(keepalive=args.keepalive, stun=args.stun, tls=tls)
    extra.update(edge_extra(args))
    config = ServerConfig(listen=listen, relay_to=args.relay_to,
                          routes_dir=str(args.routes) if args.routes else None,
                          names=tuple(args.domain), extra=extra, registrar=registrar,
                          core_id=args.advertise, management=management,
                          auth_algorithms=args.auth_algorithms, fleet=fleet,
                          drop_privileges=_dropper(user))
    try:
        try:
            trio.run(_serve, config)
        except BaseExceptionGroup as group:
            # Surface a bind or configuration error as itself for a clear message.
            leaf = _first_leaf(group, (OSError, ConfigError, PrivilegeError))
            if leaf is None:
                raise
            raise leaf from None
    except (ConfigError, PrivilegeError) as exc:
        print(f"babelsip: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return _os_error(exc)
    except KeyboardInterrupt:
        pass
    return 0


def _os_error(exc: OSError) -> int:
    """A bind or socket error, said clearly: exit status 1."""
    if exc.errno == errno.EADDRINUSE:
        print(f"babelsip: error: address already in use ({exc})", file=sys.stderr)
    else:
        print(f"babelsip: error: {exc}", file=sys.stderr)
    return 1


def _privileges(args, fleet):
    """Whom the server becomes after binding (None: nobody else), or an error."""
    from host.privileges.handover import plan, warn_root
    try:
        decided = plan(args.user, args.group, args.worker_user, fleet_worker=fleet is not None)
    except PrivilegeError as exc:
        return str(exc)
    if decided.warn_root:
        warn_root()
    return decided.user


def _dropper(user):
    if user is None:
        return None
    from functools import partial
    from host.privileges.handover import drop
    return partial(drop, user)


def _absolute_paths(args) -> None:
    """Every path the user gave is relative to where the server was started,
    resolved once, here: route workers run in their own directories, and a
    relative path handed to them would name a file that is not there."""
    if args.routes is not None:
        args.routes = Path(os.path.abspath(args.routes))
    state = os.environ.get("BABELSIP_STATE_DIR")
    if state:
        os.environ["BABELSIP_STATE_DIR"] = os.path.abspath(state)


def check_command(args) -> int:
    """`babelsip check`: the --config file was checked while parsing; then the
    routes folder (--routes, else the file's) is."""
    if args.config is not None:
        if args.routes is not None and "routes" in args.config_values and \
                args.routes == args.config_values["routes"] and not args.routes.is_dir():
            print(f"{where_set(args.config, 'routes')}: {args.routes}: not a directory")
            return 1
        expires = {key: args.config_values.get(key, default) for _, key, default, _ in REGISTRAR_FLAGS}
        if not expires["min_expires"] <= expires["default_expires"] <= expires["max_expires"]:
            key = next((k for k in ("min_expires", "default_expires", "max_expires")
                        if k in args.config_values), "min_expires")
            print(f"{where_set(args.config, key)}: need min_expires <= default_expires <= max_expires")
            return 1
        print(f"{args.config}: ok")
    if args.routes is None:
        if args.config_values.get("relay_to"):
            print(f"{args.config}: static mode (relay_to): no routes to check")
            return 0
        print("babelsip: error: give --routes DIR or a --config FILE that names routes", file=sys.stderr)
        return 2
    return check_routes(args.routes)


def check_routes(directory: Path) -> int:
    """`babelsip check`: what a server would load from `directory`, loaded
    (Lua compiled, each worker started and asked its hooks) and stopped again.
    One line per route; every problem as file:line: message."""
    if not directory.is_dir():
        print(f"babelsip: error: --routes {directory}: not a directory", file=sys.stderr)
        return 2
    from host.routes.registry import RouteRegistry
    from host.routes.runtimes_table import default_runtime_factory

    async def load() -> dict:
        registry = RouteRegistry(directory.resolve(), runtime_factory=default_runtime_factory)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            status = registry.status()
            nursery.cancel_scope.cancel()
        return status

    status = trio.run(load)
    problems = 0
    config_error = status["config"]["error"]
    if config_error is not None:
        problems += 1
        print(f"{config_error['file']}:{config_error['line']}: {config_error['message']}")
    for name, route in sorted(status["routes"].items()):
        error = route["load_error"]
        if error is None and route["state"] == "ok":
            print(f"{name}: ok ({route.get('runtime') or 'loaded'})")
            continue
        problems += 1
        where = f"{error['file']}:{error['line']}" if error and error.get("line") else \
            (error["file"] if error else name)
        print(f"{where}: {error['message'] if error else route['state']}")
    if not status["routes"]:
        problems += 1
        print(f"{directory}: no route (a route is a file main.lua, main.py, main.pl, Main.java, ...)")
    return 1 if problems else 0


async def _serve(config) -> None:
    from host.shell.server import Server
    server = Server(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_handle_signals, nursery.cancel_scope, server)
        await nursery.start(server.run)
        if config.fleet is not None:
            nursery.start_soon(_watch_parent, config.fleet.lifeline, nursery.cancel_scope)
            config.fleet.report_ready()


async def _watch_parent(lifeline: int, scope: trio.CancelScope) -> None:
    """A worker of --workers N: the parent holds the write end of this pipe
    and never writes; end of file means it is gone, and so must we be."""
    await trio.lowlevel.wait_readable(lifeline)
    log.warning("the parent process is gone: stopping")
    scope.cancel()


def _run_parent(argv: list[str], listen, args, management, user) -> int:
    from host.fleet.parent import Parent
    parent = Parent(argv, listen, args.workers, shared_store=args.store is None,
                    drain_seconds=DRAIN_SECONDS, management=management)
    try:
        try:
            parent.bind()
        except OSError as exc:
            return _os_error(exc)
        if user is not None:   # the workers are started by, and run as, the user
            from host.privileges.handover import drop
            try:
                parent.give_to(user)
                drop(user)
            except (OSError, PrivilegeError) as exc:
                print(f"babelsip: error: {exc}", file=sys.stderr)
                return 1
        try:
            return trio.run(parent.run)
        except KeyboardInterrupt:
            return 0
    finally:
        parent.close()


def _first_leaf(group: BaseExceptionGroup, kind: type) -> BaseException | None:
    sub = group.subgroup(kind)
    while isinstance(sub, BaseExceptionGroup):
        sub = sub.exceptions[0]
    return sub


async def _handle_signals(scope: trio.CancelScope, server) -> None:
    """SIGINT/SIGTERM stop the server gracefully: new calls get 503 while the
    calls in progress get their answers (at most DRAIN_SECONDS); a second
    signal stops at once. SIGUSR1 logs the statistics and every route's status."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                log.info("status: %s", json.dumps(server.status(), default=str, sort_keys=True))
                continue
            log.info("received %s, draining (at most %g s; signal again to stop now)",
                     signal.Signals(signum).name, DRAIN_SECONDS)
            async with trio.open_nursery() as nursery:
                async def stop_on_second_signal():
                    async for again in signals:
                        if again != signal.SIGUSR1:
                            nursery.cancel_scope.cancel()
                            return
                nursery.start_soon(stop_on_second_signal)
                if server.core is not None:
                    left = await server.drain(DRAIN_SECONDS)
                    if left:
                        log.warning("stopping with %d requests still unanswered", left)
                nursery.cancel_scope.cancel()
            log.info("shutting down")
            scope.cancel()
            return


if __name__ == "__main__":
    sys.exit(main())
