"""host/management/unix.py: who gets the management socket."""

from __future__ import annotations

import pytest
import trio

from host.management.jsonrpc import Dispatcher
from host.management.unix import SocketInUse, call_unix, serve_unix


async def test_two_servers_starting_at_once_one_serves_the_other_is_told(tmp_path, monkeypatch):
    path = str(tmp_path / "babelsip.ctl")
    import host.management.unix as unix
    # Both look before either binds: the race of two cores started together.
    monkeypatch.setattr(unix, "_claim", lambda path: None)
    rpc = Dispatcher()
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_unix, path, rpc) == path
        with pytest.raises(SocketInUse):
            await serve_unix(path, rpc)
        # The first still answers (a parse error is an answer).
        answer = await call_unix(path, b"not json\n", 5)
        assert b"-32700" in answer
        nursery.cancel_scope.cancel()
