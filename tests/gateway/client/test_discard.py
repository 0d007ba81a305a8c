"""Response.discard (gateway.client.discard): an answer the proxy does not pass on (a 429 or
503 it fails over from) gives its connection back to the pool once its body is in, rather
than closing it; one whose body does not come in time is closed."""

from __future__ import annotations

import asyncio

import pytest

from gateway.client import Client, discard
from tests.gateway.client.scripted import Scripted, raw, run
from tests.support import until

BUSY = b'{"error": {"message": "busy"}}'
HEAD = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n"


def test_an_answer_come_whole_is_dropped_and_its_connection_reused() -> None:
    async def main() -> None:
        async with Scripted(raw(HEAD % len(BUSY) + BUSY)) as srv:
            client = Client(1.0)
            for _ in range(3):
                resp = await client.request("POST", srv.url + "/v1/x", body=b"{}")
                assert resp.status == 429
                resp.discard()
                assert client.idle_count() == 1  # at once: no task for a body already in
            await client.close()
        assert srv.connections == 1

    run(main())


def test_a_body_after_its_head_is_read_in_the_background_then_pooled() -> None:
    # uvicorn (vLLM's server) writes an answer's head and its body in two writes: the head
    # may be read alone, and the failover must not wait for the rest.
    async def main() -> None:
        discarded = asyncio.Event()  # the body goes once the answer was discarded: in two parts

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(HEAD % len(BUSY))
            await w.drain()
            await discarded.wait()
            discarded.clear()
            w.write(BUSY)
            await w.drain()

        async with Scripted(answer) as srv:
            client = Client(1.0)
            for _ in range(2):
                resp = await client.request("POST", srv.url + "/v1/x", body=b"{}")
                resp.discard()
                assert client.idle_count() == 0  # not yet: its body is on its way
                discarded.set()
                await until(lambda: client.idle_count() == 1, what="the connection pooled")
            await client.close()
        assert srv.connections == 1

    run(main())


def test_a_body_that_does_not_come_in_time_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discard, "DISCARD_WAIT_S", 0.05)

    async def main() -> None:
        async with Scripted(raw(HEAD % 100 + b"{")) as srv:  # 1 byte of 100, then silence
            client = Client(1.0)
            resp = await client.request("POST", srv.url + "/v1/x", body=b"{}")
            resp.discard()
            await until(lambda: not discard.draining(), what="the drain given up")
            assert client.idle_count() == 0
            resp = await client.request("POST", srv.url + "/v1/x", body=b"{}")
            resp.close()
            await client.close()
        assert srv.connections == 2  # the first one closed, not reused out of step

    run(main())


def test_a_body_over_the_bound_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discard, "DISCARD_MAX_BYTES", 10)

    async def main() -> None:
        discarded = asyncio.Event()  # the body comes after the discard: read by its task

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(HEAD % 1000)
            await w.drain()
            await discarded.wait()
            w.write(b"x" * 1000)
            await w.drain()

        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("POST", srv.url + "/v1/x", body=b"{}")
            resp.discard()
            assert discard.draining() == 1  # not whole: read in the background, bounded
            discarded.set()
            await until(lambda: not discard.draining(), what="the drain given up")
            assert client.idle_count() == 0
            await client.close()

    run(main())
