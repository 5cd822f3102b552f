"""A JSON-RPC 2.0 dispatcher, sans-IO: request text in, response text out.

No JSON-RPC server library runs under trio, and the protocol is small:
https://www.jsonrpc.org/specification. This module knows no sockets: the
listeners (unix.py, http.py) hand it the bytes of one message and send back
what it returns (None: nothing to send, the message held only notifications).

    rpc = Dispatcher()
    rpc.register("core.uptime", uptime)          # async def uptime(...) -> JSON-able
    reply = await rpc.handle(b'{"jsonrpc":"2.0","id":1,"method":"core.uptime"}')

Params by position (a list) or by name (an object) are bound to the
handler's signature; a mismatch is -32602 with the reason. A handler raises
`RpcError` for an error the caller should see (code, message, data); any
other exception is -32603, logged here with its traceback: a bug in one
method costs that call, not the listener.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson

log = logging.getLogger("babelsip.management")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# -32000 to -32099 are for the server's own errors (specification §5.1).
SERVER_ERROR = -32000
NOT_FOUND = -32001        # the method exists, the thing it names does not

MAX_BATCH = 1000          # requests in one batch; a bigger one is refused whole

Handler = Callable[..., Awaitable[Any]]


class RpcError(Exception):
    """An error a method answers with: a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def as_object(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    signature: inspect.Signature
    doc: str


class Dispatcher:
    def __init__(self):
        self.methods: dict[str, Method] = {}

    def register(self, name: str, handler: Handler) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{name}: handler must be an async function")
        doc = (inspect.getdoc(handler) or "").split("\n\n")[0].replace("\n", " ")
        self.methods[name] = Method(name, handler, inspect.signature(handler), doc)

    async def handle(self, data: bytes | str) -> bytes | None:
        """The response text to one message (a request, a notification or a
        batch), or None when nothing is to be sent back."""
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return _dump(_error(None, RpcError(PARSE_ERROR, "Parse error", str(exc))))
        if isinstance(message, list):
            if not message:
                return _dump(_error(None, RpcError(INVALID_REQUEST, "Invalid Request", "empty batch")))
            if len(message) > MAX_BATCH:
                return _dump(_error(None, RpcError(INVALID_REQUEST, "Invalid Request",
                                                   f"more than {MAX_BATCH} requests in a batch")))
            # One after another: the methods are quick, and an operator's
            # batch reads in order (a reset then a get sees the reset).
            replies = [r for r in [await self.call(m) for m in message] if r is not None]
            return _dump(replies) if replies else None
        reply = await self.call(message)
        return None if reply is None else _dump(reply)

    async def call(self, message: Any) -> dict | None:
        """The response object to one decoded request (None for a notification)."""
        if not isinstance(message, dict):
            return _error(None, RpcError(INVALID_REQUEST, "Invalid Request", "not an object"))
        has_id = "id" in message
        ident = message.get("id")
        if has_id and not (ident is None or isinstance(ident, (str, int, float))) \
                or isinstance(ident, bool):
            return _error(None, RpcError(INVALID_REQUEST, "Invalid Request",
                                         "id must be a string, a number or null"))
        name = message.get("method")
        params = message.get("params", [])
        problem = None
        if message.get("jsonrpc") != "2.0":
            problem = 'jsonrpc must be "2.0"'
        elif not isinstance(name, str):
            problem = "method must be a string"
        elif not isinstance(params, (list, dict)):
            problem = "params must be an array or an object"
        if problem is not None:
            return _error(ident, RpcError(INVALID_REQUEST, "Invalid Request", problem))
        try:
            result = await self._invoke(name, params)
        except RpcError as exc:
            return _error(ident, exc) if has_id else None
        except Exception as exc:
            log.exception("management method %s failed", name)
            return _error(ident, RpcError(INTERNAL_ERROR, "Internal error", repr(exc))) if has_id else None
        if not has_id:
            return None   # a notification: done, and never answered
        return {"jsonrpc": "2.0", "id": ident, "result": result}

    async def _invoke(self, name: str, params: list | dict) -> Any:
        method = self.methods.get(name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", name)
        try:
            bound = (method.signature.bind(*params) if isinstance(params, list)
                     else method.signature.bind(**params))
        except TypeError as exc:
            raise RpcError(INVALID_PARAMS, "Invalid params", f"{name}: {exc}") from None
        return await method.handler(*bound.args, **bound.kwargs)


def _error(ident, exc: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": ident, "error": exc.as_object()}


def _dump(obj) -> bytes:
    # Results are plain data; anything else (a Path, a tuple key) is a bug
    # in a method, answered as -32603 rather than a broken stream.
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        ident = obj.get("id") if isinstance(obj, dict) else None
        return orjson.dumps(_error(ident, RpcError(INTERNAL_ERROR, "Internal error",
                                                   f"result not JSON: {exc}")))


def request(method: str, params: list | dict | None = None, ident: int | str | None = 1) -> bytes:
    """One request's text (ident None: a notification), for clients."""
    msg: dict = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if ident is not None:
        msg["id"] = ident
    return orjson.dumps(msg)
