"""The HTTP listener's framing and answers over an in-memory stream pair
(no sockets): routing, the bearer token, keep-alive, and the 4xx answers
for bad, oversized and unknown requests."""

import h11
import orjson
import pytest
import trio
import trio.testing

from host.management import http
from host.management.jsonrpc import Dispatcher


def app():
    rpc = Dispatcher()

    async def ping():
        return "pong"
    rpc.register("ping", ping)

    async def metrics():
        return b"babelsip_up 1\n"

    async def status():
        return {"routes": []}
    return http.HttpApp(rpc, "s3cret", metrics, status)


async def exchange(raw: bytes, *, close: bool = True) -> list[tuple[int, dict, bytes]]:
    """Send `raw` to one connection; the responses it got, in order."""
    client, server = trio.testing.memory_stream_pair()
    responses = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(http._serve_connection, server, app())
        await client.send_all(raw)
        if close:
            await client.send_eof()
        # An h11 client parses the answers; it reads a response only after
        # sending a request, so it "sends" one (discarded) per answer expected.
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        current = None
        with trio.fail_after(5):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await client.receive_some(65536)
                    if not data:
                        break
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    current = [event.status_code, dict(event.headers), b""]
                elif isinstance(event, h11.Data):
                    current[2] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    responses.append(tuple(current))
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                    conn.send(h11.EndOfMessage())
                else:
                    break
        nursery.cancel_scope.cancel()
    return responses


def rpc_post(token: str | None, body=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', keep=True) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    conn = "" if keep else "Connection: close\r\n"
    return (f"POST /RPC HTTP/1.1\r\nHost: x\r\n{auth}{conn}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def test_rpc_needs_the_bearer_token():
    (resp,) = await exchange(rpc_post(None, keep=False))
    assert resp[0] == 401 and resp[1][b"www-authenticate"].startswith(b"Bearer")
    (resp,) = await exchange(rpc_post("wrong", keep=False))
    assert resp[0] == 401
    (resp,) = await exchange(rpc_post("s3cret", keep=False))
    assert resp[0] == 200 and orjson.loads(resp[2])["result"] == "pong"


async def test_keep_alive_serves_several_requests_on_one_connection():
    raw = rpc_post("s3cret") + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" + \
        b"GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    responses = await exchange(raw)
    assert [r[0] for r in responses] == [200, 200, 200]
    assert responses[1][2] == b"babelsip_up 1\n"
    assert orjson.loads(responses[2][2]) == {"routes": []}


@pytest.mark.parametrize("raw, code", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"GET /RPC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (b"this is not http\r\n\r\n", 400),
    (b"POST /RPC HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (http.MAX_BODY + 1), 413),
])
async def test_bad_requests_get_their_4xx(raw, code):
    responses = await exchange(raw)
    assert responses and responses[0][0] == code


async def test_the_status_page_is_one_self_contained_file():
    (resp,) = await exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp[0] == 200 and resp[1][b"content-type"].startswith(b"text/html")
    page = resp[2].decode()
    assert "status.json" in page and "<script>" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_a_listener_without_a_token_is_refused():
    with pytest.raises(ValueError):
        http.HttpApp(Dispatcher(), "", None, None)
