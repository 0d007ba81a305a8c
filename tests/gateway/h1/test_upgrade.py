"""gateway.h1.upgrade: an upgrade offer declined in HTTP/1.1, its body read, the connection
kept; on the protocol alone, as tests/gateway/h1/test_conn.py runs it."""

from __future__ import annotations

import asyncio

from uvicorn.server import ServerState

from tests.gateway.h1.test_conn import _exchange, _on_protocol


def test_an_upgrade_offer_is_declined_its_body_read_and_the_connection_kept() -> None:
    """No protocol switch (no WebSocket, no h2c): the offer is answered in HTTP/1.1, with its
    body (llhttp stops at its head: the JDK's client offers h2c on every plain-http POST), and
    the next request on the connection is parsed as one."""

    async def case(port: int, state: ServerState) -> None:
        offer = (
            b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 6\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(offer + b"abc")  # the body split across reads
        await asyncio.sleep(0.1)
        writer.write(b"def" + b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
        assert b"/up:abcdef" in got and got.endswith(b"/next:")
        assert got.count(b"HTTP/1.1 200 OK") == 2
        chunked = offer.replace(b"Content-Length: 6", b"Transfer-Encoding: chunked")
        got, _ = await _exchange(port, chunked + b"6\r\nabcdef\r\n0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 400 Bad Request"), got
        assert b"must send its body with Content-Length" in got

    _on_protocol(case, keepalive_s=5)
