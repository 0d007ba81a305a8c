"""The keep-alive race: an upstream closes an idle connection (uvicorn after 5 s) just as a
request is written on it. A pooled connection lost before any byte of the answer is retried
once, on a new connection, within what is left of the wait; nothing else is retried."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import AsyncIterator

import pytest

from gateway.client import Client, ConnectFailed, ConnectionLost, Reach
from tests.gateway.client.scripted import Answer, Scripted, run

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _reset(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()  # RST, not FIN


def _second_dropped(srv: list[Scripted], how: str = "close", wait_s: float = 0.0) -> Answer:
    """Answer the first request and the third; the second (the first one on the kept-alive
    connection) is read, and the connection closed (or reset) after ``wait_s`` unanswered."""

    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        if len(srv[0].heads) == 2:
            await asyncio.sleep(wait_s)
            if how == "reset":
                _reset(w)
            else:
                w.close()
            return
        w.write(_OK)
        await w.drain()

    return answer


@contextlib.asynccontextmanager
async def _pooled(srv: Scripted) -> AsyncIterator[Client]:
    """A client whose first request to ``srv`` was answered, its connection now pooled."""
    async with srv:
        client = Client(1.0)
        assert await (await client.request("GET", srv.url + "/")).read() == b"ok"
        try:
            yield client
        finally:
            await client.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_pooled_connection_dropped_on_the_next_request_is_retried_on_a_new_one(
    how: str,
) -> None:
    async def main() -> None:
        async with _pooled(srv[0]) as client:
            assert client.idle_count() == 1
            reach = Reach()
            resp = await client.request(
                "POST", srv[0].url + "/v1/x", [], b'{"a":1}', reach, timeout_s=2.0
            )
            assert reach.connected  # the retry's connection holds the request now
            assert (resp.status, await resp.read()) == (200, b"ok")
            assert client.idle_count() == 1  # the new connection, pooled in turn
        assert srv[0].connections == 2  # the retry went on a new connection
        assert srv[0].heads[1] == srv[0].heads[2]  # the same request, body and all
        assert srv[0].bodies[1:] == [b'{"a":1}', b'{"a":1}']

    srv: list[Scripted] = []
    srv.append(Scripted(_second_dropped(srv, how)))
    run(main())


def test_a_fin_come_but_not_yet_read_when_the_request_is_written_is_retried() -> None:
    """The race itself: the upstream's FIN is in the kernel, the loop has not read it, the
    connection still looks reusable, and the request is written on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    go, closed = threading.Event(), threading.Event()
    seen: list[bytes] = []

    def upstream() -> None:
        with listener:
            a, _ = listener.accept()
            seen.append(a.recv(65536))
            a.sendall(_OK)
            go.wait(5)
            a.close()  # idle timeout: FIN
            closed.set()
            b, _ = listener.accept()
            with b:
                seen.append(b.recv(65536))
                b.sendall(_OK)
                b.recv(1)  # until the client closes

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()

    async def main() -> None:
        client = Client(1.0)
        url = f"http://127.0.0.1:{port}/"
        assert await (await client.request("GET", url)).read() == b"ok"
        go.set()
        closed.wait(5)  # blocking the loop: the FIN arrives, and is not read
        assert client.idle_count() == 1
        assert await (await client.request("GET", url, timeout_s=2.0)).read() == b"ok"
        await client.close()

    run(main())
    thread.join(5)
    assert len(seen) == 2 and seen[0] == seen[1]  # answered on the second connection


def test_a_new_connection_closed_before_any_answer_is_not_retried() -> None:
    async def drop(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.close()

    async def main() -> None:
        async with Scripted(drop) as srv:
            client = Client(1.0)
            with pytest.raises(ConnectionLost):
                await client.request("POST", srv.url + "/", [], b"x", timeout_s=2.0)
            await client.close()
        assert (srv.connections, len(srv.heads)) == (1, 1)

    run(main())


def test_a_pooled_connection_closed_in_the_middle_of_an_answer_is_not_retried() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        if len(srv.heads) == 1:
            w.write(_OK)
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # a byte of the answer came: it ran
            await w.drain()
            w.close()
        await w.drain()

    async def main() -> None:
        async with _pooled(srv) as client:
            with pytest.raises(ConnectionLost):
                await client.request("POST", srv.url + "/", [], b"x", timeout_s=2.0)
        assert (srv.connections, len(srv.heads)) == (1, 2)

    srv = Scripted(answer)
    run(main())


def test_a_pooled_connection_that_times_out_is_not_retried() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        if len(srv.heads) == 2:
            await asyncio.sleep(5)  # a prefill that never ends
        w.write(_OK)
        await w.drain()

    async def main() -> None:
        async with _pooled(srv) as client:
            with pytest.raises(TimeoutError):
                await client.request("GET", srv.url + "/", timeout_s=0.2)
        assert (srv.connections, len(srv.heads)) == (1, 2)

    srv = Scripted(answer)
    run(main())


def test_the_retry_waits_what_is_left_of_the_first_byte_wait() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        n = len(srv.heads)
        if n == 2:
            await asyncio.sleep(0.3)  # then dropped: 0.3 s of the wait spent
            w.close()
            return
        if n == 3:
            await asyncio.sleep(5)  # the retry is never answered
        w.write(_OK)
        await w.drain()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with _pooled(srv) as client:
            t0 = loop.time()
            reach = Reach()
            with pytest.raises(TimeoutError):
                await client.request("GET", srv.url + "/", reach=reach, timeout_s=0.6)
            assert 0.5 < loop.time() - t0 < 0.85  # one budget in all, not 0.6 s twice
            assert reach.connected  # the retry's request was out: it may run there
        assert (srv.connections, len(srv.heads)) == (2, 3)

    srv = Scripted(answer)
    run(main())


def test_a_retry_that_cannot_connect_has_reached_nobody() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        if len(srv.heads) == 2:
            assert srv.server is not None
            srv.server.close()  # no longer listening: the retry's connect is refused
            await asyncio.sleep(0.05)
            w.close()
            return
        w.write(_OK)
        await w.drain()

    async def main() -> None:
        async with _pooled(srv) as client:
            reach = Reach()
            with pytest.raises(ConnectFailed):
                await client.request("GET", srv.url + "/", reach=reach, timeout_s=2.0)
            # The first request went on a connection the upstream was closing (it ran
            # nowhere), the second found no connection: a timeout here may fail over.
            assert not reach.connected

    srv = Scripted(answer)
    run(main())


def test_a_pooled_connection_lost_long_after_the_write_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past the window, the loss is the upstream dying while it may have run the request (a
    # crash in prefill): sent again, a POST could run twice.
    from gateway.client import pool

    monkeypatch.setattr(pool, "STALE_RETRY_WINDOW_S", 0.2)
    srv: list[Scripted] = []
    srv.append(Scripted(_second_dropped(srv, wait_s=0.5)))

    async def main() -> None:
        async with _pooled(srv[0]) as client:
            with pytest.raises(ConnectionLost):
                await client.request("POST", srv[0].url + "/", [], b"x", timeout_s=5.0)
        assert (srv[0].connections, len(srv[0].heads)) == (1, 2)

    run(main())
