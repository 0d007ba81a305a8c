"""One connection's failures mid-response: each becomes a client error the proxy can classify,
and a broken connection never goes back to the pool."""

from __future__ import annotations

import asyncio

import pytest

from gateway.client import BadResponse, Client, ConnectionLost, FailureKind, classify
from tests.gateway.client.scripted import Scripted, run


async def _fails(answer_bytes: bytes, close: bool, exc: type[Exception]) -> str:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(answer_bytes)
        await w.drain()
        if close:
            w.close()

    async with Scripted(answer) as srv:
        client = Client(1.0)
        with pytest.raises(exc) as info:
            resp = await client.request("GET", srv.url + "/")
            while await asyncio.wait_for(resp.readany(), 2):
                pass
        assert client.idle_count() == 0
        await client.close()
        kind, detail = classify(info.value, "")
        assert kind is FailureKind.RESET
        return detail


def test_a_body_cut_short_is_a_lost_connection() -> None:
    got = run(
        _fails(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", True, ConnectionLost)
    )
    assert got.startswith("connection lost:")


def test_a_chunked_body_cut_short_is_a_lost_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    assert run(_fails(raw, True, ConnectionLost)).startswith("connection lost:")


def test_a_close_before_any_answer_is_a_lost_connection() -> None:
    assert run(_fails(b"", True, ConnectionLost)).startswith("connection lost:")


def test_bytes_that_are_not_http_are_a_bad_response() -> None:
    got = run(_fails(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, BadResponse))
    assert got.startswith("bad response: not an HTTP/1.1 response")


def test_a_cancelled_read_leaves_the_connection_usable_for_nothing_else() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()  # and then nothing: a stalled stream

    async def main() -> None:
        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resp.readany(), 0.1)
            assert not resp.at_eof()
            resp.release()  # not at its end: closed, not pooled
            assert client.idle_count() == 0
            await client.close()

    run(main())
