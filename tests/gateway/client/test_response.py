"""An answer's body looked at whole without being taken (a refusal's message, an error put in
OpenAI's shape), and replaced: against a real socket, the connection still pooled after."""

from __future__ import annotations

import asyncio

from gateway.client import Client
from gateway.defaults import REFUSAL_BODY_MAX_BYTES
from tests.gateway.client.scripted import Scripted, ok, raw, run


def test_a_whole_body_is_looked_at_then_replaced_and_the_connection_pooled() -> None:
    async def main() -> None:
        async with Scripted(ok(b"slow down", b"Content-Type: text/plain\r\n")) as srv:
            client = Client(1.0)
            resp = await client.request("POST", srv.url + "/", [], b"{}", until_body=True)
            assert resp.whole_body() == b"slow down"
            assert resp.whole_body() == b"slow down"  # looked at, not taken
            assert resp.refusal() == "HTTP 200: slow down"
            resp.replace_whole([(b"content-type", b"application/json")], b'{"x": 1}')
            assert resp.header(b"content-type") == "application/json"
            assert await resp.readany() == b'{"x": 1}'
            assert resp.at_eof() and await resp.readany() == b""
            resp.release()
            assert client.idle_count() == 1  # in step: the next request may use it
            await client.close()

    run(main())


def test_a_body_still_coming_is_not_waited_for() -> None:
    # The head and the first chunk; the rest never comes.
    head = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n"

    async def main() -> None:
        async with Scripted(raw(head)) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=True)
            assert resp.whole_body() is None
            assert resp.refusal() == "HTTP 503"  # no message from half a body
            assert await asyncio.wait_for(resp.readany(), 2) == b"busy"  # nothing was taken
            resp.close()
            await client.close()

    run(main())


def test_a_compressed_body_is_not_read_for_its_message() -> None:
    # nginx's gzip_types application/json on an upstream's 429: its bytes are no message
    async def main() -> None:
        async with Scripted(ok(b"\x1f\x8b\x08\x00busy", b"Content-Encoding: gzip\r\n")) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=True)
            assert resp.whole_body() is not None and resp.readable_body() is None
            assert resp.refusal() == "HTTP 200"  # its bytes read for no message
            resp.close()
            await client.close()

    run(main())


def test_a_body_over_the_limit_is_not_read_for_its_message() -> None:
    # readable_body is the one check of the size (status_detail reads what it is given):
    # None whether or not all of it came with the head.
    big = b"x" * (REFUSAL_BODY_MAX_BYTES + 1)

    async def main() -> None:
        async with Scripted(ok(big, b"Content-Type: text/plain\r\n")) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=True)
            assert resp.whole_body() == big  # all of it came: its size alone is refused
            assert resp.readable_body() is None
            assert resp.refusal() == "HTTP 200"
            resp.close()
            await client.close()

    run(main())


def _chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def test_a_body_read_whole_within_its_limit_keeps_its_connection() -> None:
    async def main() -> None:
        async with Scripted(raw(_chunked(b"ab", b"cd"))) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=True)
            assert resp.peek()[:1] == b"a"  # looked at, not taken
            assert await resp.read_whole(4) == b"abcd"
            assert resp.at_eof()
            resp.release()
            assert client.idle_count() == 1
            await client.close()

    run(main())


def test_a_body_over_the_limit_is_left_to_read_whole_again() -> None:
    parts = [b"x" * 3000, b"y" * 3000, b"z" * 3000]

    async def main() -> None:
        async with Scripted(raw(_chunked(*parts))) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=True)
            assert await resp.read_whole(4000) is None
            assert await resp.read() == b"".join(parts)  # nothing lost, in order
            assert client.idle_count() == 1
            await client.close()

    run(main())
