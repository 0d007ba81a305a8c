"""gateway.h1.upgrade: an upgrade offer declined in HTTP/1.1, its body read, the connection
kept; on the protocol alone, as tests/gateway/h1/test_conn.py runs it."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.server import ServerState

from gateway.errors import RequestInvalid
from gateway.h1.refuse import Refused
from gateway.h1.upgrade import declared_length, feed_body
from tests.gateway.h1.test_conn import _exchange, _on_protocol
from tests.support import until


class Fed:
    """What feed_body uses of a Cycle."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.more_body = True
        self.response_complete = False
        self.woken = 0

    def feed(self, body: bytes) -> bool:
        self.got.append(body)
        return sum(map(len, self.got)) > 4  # "past the high-water mark" at 5 bytes here

    def wake(self) -> None:
        self.woken += 1


def test_the_body_is_fed_by_its_length_and_what_follows_is_handed_back() -> None:
    cycle = Fed()
    assert feed_body(cycle, 6, b"abc") == (3, b"", False)  # type: ignore[arg-type]
    assert cycle.more_body and cycle.got == [b"abc"]
    assert feed_body(cycle, 3, b"defGET /") == (0, b"GET /", True)  # type: ignore[arg-type]
    assert not cycle.more_body and cycle.woken == 1 and cycle.got == [b"abc", b"def"]
    assert feed_body(None, 0, b"GET /") == (0, b"GET /", False)  # no body: nothing to feed


def test_the_declared_length_is_read_and_a_chunked_offer_refused() -> None:
    assert declared_length([(b"host", b"x"), (b"content-length", b"12")]) == 12
    assert declared_length([(b"upgrade", b"h2c")]) == 0
    with pytest.raises(Refused) as refused:
        declared_length([(b"transfer-encoding", b"chunked")])
    assert isinstance(refused.value.err, RequestInvalid)
    assert "must send its body with Content-Length" in refused.value.err.message


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
        writer.write(offer + b"abc")  # the body split across reads:
        await until(lambda: len(state.tasks) == 1, what="the offer's head read")  # then the rest
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
