"""The upstream client against a real socket: what it writes, connection reuse, the pool's
upkeep, and every way a connection can fail."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import (
    BadResponse,
    Client,
    ConnectFailed,
    ConnectTimeout,
    FailureKind,
    Reach,
    classify,
)
from gateway.client.conn import Conn
from tests.gateway.client.scripted import Scripted, ok, raw, run
from tests.support import self_signed_cert, until


def test_the_request_goes_out_as_given_and_the_connection_is_reused() -> None:
    async def main() -> None:
        async with Scripted(ok(b"hi", b"X-Up: 1\r\n")) as srv:
            client = Client(1.0)
            reach = Reach()
            resp = await client.request(
                "POST",
                srv.url + "/v1/chat/completions?x=%20y",
                [(b"Authorization", b"Bearer t"), (b"X-Request-Id", b"r1")],
                b'{"model":"m"}',
                reach,
            )
            assert reach.connected
            assert (resp.status, resp.header(b"x-up"), await resp.read()) == (200, "1", b"hi")
            resp = await client.request("GET", srv.url + "/health")
            assert await resp.read() == b"hi"
            await client.close()
        assert srv.connections == 1  # kept alive and reused
        host = srv.url.removeprefix("http://").encode()
        assert srv.heads[0] == (
            b"POST /v1/chat/completions?x=%20y HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Authorization: Bearer t\r\nX-Request-Id: r1\r\nContent-Length: 13\r\n\r\n"
        )
        assert srv.bodies[0] == b'{"model":"m"}'
        assert srv.heads[1] == b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"

    run(main())


def test_a_url_with_a_user_sends_basic_auth_and_a_path_prefix_is_kept() -> None:
    async def main() -> None:
        async with Scripted(ok()) as srv:
            client = Client(1.0)
            url = srv.url.replace("http://", "http://al%40x:p%3Aw@") + "/prefix/v1/models"
            await (await client.request("GET", url)).read()
            await client.close()
        assert b"GET /prefix/v1/models HTTP/1.1\r\n" in srv.heads[0]
        assert b"Authorization: Basic " + base64.b64encode(b"al@x:p:w") in srv.heads[0]
        assert b"@" not in srv.heads[0].split(b"Host: ")[1].split(b"\r\n")[0]

    run(main())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/", [(b"X-A", b"1\r\nX-Injected: 1")]),
        ("/", [(b"X-A", b"1\nX-B: 2")]),
        ("/", [(b"X-A\r", b"1")]),
        ("/x HTTP/1.1\r\nX-Injected: 1\r\n", []),  # in the request target
    ],
)
def test_a_line_break_in_a_header_or_the_target_is_refused_before_anything_is_sent(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    async def main() -> None:
        async with Scripted(ok()) as srv:
            client = Client(1.0)
            with pytest.raises(ValueError, match="line break"):
                await client.request("GET", srv.url + target, headers)
            await client.close()
            # Refused while the head was built, before any connection: nothing reached it.
            assert srv.connections == 0 and srv.heads == []
            assert client.idle_count() == 0

    run(main())


def test_interim_answers_are_skipped_and_a_close_delimited_body_ends_at_the_close() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"part two")
        w.close()

    async def main() -> None:
        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert resp.status == 200
            assert resp.header(b"link") is None  # the 103's headers are not the answer's
            assert await resp.read() == b"part one, part two"
            assert client.idle_count() == 0  # Connection: close is not pooled
            await client.close()

    run(main())


def test_chunks_are_handed_on_as_they_come() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await w.drain()
            await release.wait()
            w.write(b"6\r\nsecond\r\n0\r\n\r\n")

        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert await resp.readany() == b"first"  # before the rest was even written
            assert not resp.at_eof()
            release.set()
            assert await resp.readany() == b"second"
            assert await resp.readany() == b""
            assert resp.at_eof()
            resp.release()
            assert client.idle_count() == 1
            await client.close()

    run(main())


def test_reading_pauses_while_the_consumer_lags() -> None:
    size = 8 * 1024 * 1024

    async def main() -> None:
        async with Scripted(ok(b"x" * size)) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            conn = resp._conn
            assert conn is not None
            await until(lambda: conn.paused, what="reading to pause")  # the upstream floods
            held = conn.buffered
            assert held < 1024 * 1024, held  # not the 8 MiB the upstream sent
            total = 0
            while chunk := await resp.readany():
                total += len(chunk)
            assert total == size
            await client.close()

    run(main())


def test_a_body_read_whole_is_bounded() -> None:
    async def main() -> None:
        async with Scripted(ok(b"y" * 5000)) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            with pytest.raises(BadResponse, match="over 1000 bytes"):
                await resp.read(limit=1000)
            assert client.idle_count() == 0  # not handed back out of step
            await client.close()

    run(main())


def test_head_answers_end_at_their_headers() -> None:
    answer = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")  # no body: HEAD

    async def main() -> None:
        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("HEAD", srv.url + "/")
            assert resp.status == 200
            assert await asyncio.wait_for(resp.read(), 1) == b""
            await client.close()

    run(main())


def test_an_idle_connection_the_upstream_closes_leaves_the_pool() -> None:
    async def main() -> None:
        pooled = asyncio.Event()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            await pooled.wait()
            w.close()  # as uvicorn does after its keep-alive time

        async with Scripted(answer) as srv:
            client = Client(1.0)
            assert await (await client.request("GET", srv.url + "/")).read() == b"ok"
            assert client.idle_count() == 1
            pooled.set()
            await until(lambda: client.idle_count() == 0, what="the closed one to leave")
            assert await (await client.request("GET", srv.url + "/")).read() == b"ok"
            assert srv.connections == 2
            await client.close()

    run(main())


def test_connections_idle_past_the_keepalive_time_are_closed() -> None:
    async def main() -> None:
        async with Scripted(ok()) as srv:
            client = Client(1.0, keepalive_s=0.1)
            await (await client.request("GET", srv.url + "/")).read()
            await (await client.request("GET", srv.url + "/")).read()
            assert (client.idle_count(), srv.connections) == (1, 1)
            # The sweep closes it without a request coming.
            await until(lambda: client.idle_count() == 0, what="the sweep")
            await (await client.request("GET", srv.url + "/")).read()
            assert srv.connections == 2
            await client.close()
            assert client.idle_count() == 0

    run(main())


def test_refused_is_a_connect_failure() -> None:
    async def main(port: int) -> None:
        client = Client(1.0)
        reach = Reach()
        with pytest.raises(ConnectFailed) as info:
            await client.request("GET", f"http://127.0.0.1:{port}/", reach=reach)
        assert not reach.connected  # nothing reached anybody
        assert classify(info.value, "")[0] is FailureKind.REFUSED
        await client.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused (and nobody else's port)
        run(main(s.getsockname()[1]))


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    connect to it hangs until the client gives up (a host that does not answer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    listener.close()


def test_a_connect_that_hangs_times_out(full_backlog: int) -> None:
    async def main() -> None:
        client = Client(0.2)
        with pytest.raises(ConnectTimeout) as info:
            await client.request("GET", f"http://127.0.0.1:{full_backlog}/")
        assert classify(info.value, "")[1] == "connect timed out"
        await client.close()

    run(main())


def test_a_url_without_a_path_asks_for_the_root() -> None:
    async def main() -> None:
        async with Scripted(ok()) as srv:
            client = Client(1.0)
            assert await (await client.request("GET", srv.url)).read() == b"hello"
            await client.close()
        assert srv.heads[0].startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:")

    run(main())


def test_a_url_that_is_not_http_is_refused() -> None:
    async def main() -> None:
        client = Client(1.0)
        with pytest.raises(ValueError, match="not an http"):
            await client.request("GET", "ftp://127.0.0.1/x")
        await client.close()

    run(main())


def test_https_upstreams_are_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An https upstream's certificate is checked against the system's CAs (SSL_CERT_FILE
    where set, as for any OpenSSL program): a self-signed one is refused until trusted."""
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def main(trusted: bool) -> None:
        async with Scripted(ok(b"secure"), tls=tls) as srv:
            client = Client(2.0)
            if trusted:
                assert await (await client.request("GET", srv.url + "/x")).read() == b"secure"
                assert srv.heads[0].startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:")
            else:
                with pytest.raises(ConnectFailed) as info:
                    await client.request("GET", srv.url + "/x")
                kind, detail = classify(info.value, "")
                assert kind is FailureKind.REFUSED
                assert "certificate verify failed" in detail
            await client.close()

    run(main(trusted=False))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    run(main(trusted=True))


def test_a_backends_cookie_never_rides_along_on_the_next_request() -> None:
    """One client carries every client's requests: a Set-Cookie from a backend must not be sent
    with the next request (aiohttp's default jar, the gateway's client before this one, did)."""

    async def main() -> None:
        async with Scripted(ok(b"hi", b"Set-Cookie: session=alice-secret\r\n")) as srv:
            client = Client(1.0)
            url = srv.url.replace("127.0.0.1", "localhost")  # a host name, as a jar keys them
            for _ in range(2):
                await (await client.request("GET", url + "/")).read()
            await client.close()
        assert len(srv.heads) == 2 and all(b"cookie" not in h.lower() for h in srv.heads)

    run(main())


def test_a_response_released_unread_is_closed_not_pooled() -> None:
    """Its unread body would be the next request's first bytes on a reused connection."""

    async def main() -> None:
        async with Scripted(ok(b"first answer")) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            await resp.wait_body()  # all of it is here, none of it read
            resp.release()
            assert client.idle_count() == 0
            assert await (await client.request("GET", srv.url + "/")).read() == b"first answer"
            assert srv.connections == 2
            await client.close()

    run(main())


def test_the_urls_credentials_replace_the_clients_authorization() -> None:
    """Two Authorization headers are refused or misread by most servers: with user:password in
    the upstream's URL, that is the one sent (the client's key is for the gateway's users)."""

    async def main() -> None:
        async with Scripted(ok()) as srv:
            client = Client(1.0)
            url = srv.url.replace("http://", "http://svc:pw@") + "/v1/models"
            await (await client.request("GET", url, [(b"authorization", b"Bearer sk-1")])).read()
            await client.close()
        assert srv.heads[0].lower().count(b"authorization:") == 1
        assert b"Authorization: Basic " + base64.b64encode(b"svc:pw") in srv.heads[0]

    run(main())


@pytest.mark.parametrize(
    ("status", "until_body", "waits"),
    [
        (200, True, 1),  # a stream: one wake-up, with the head and the first token
        (200, False, 2),  # the head, then the body
        (503, True, 2),  # not 2xx: at its head, as ever (the caller fails over at once)
    ],
)
def test_until_body_returns_a_2xx_head_with_the_first_bytes_and_wakes_once(
    status: int, until_body: bool, waits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    waited = 0
    wait = Conn._wait

    async def counted(self: Conn) -> None:
        nonlocal waited
        waited += 1
        await wait(self)

    monkeypatch.setattr(Conn, "_wait", counted)

    async def main() -> None:
        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
            await w.drain()
            await asyncio.sleep(0.05)  # the first token comes apart from the head
            w.write(b"5\r\nfirst\r\n0\r\n\r\n")

        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/", until_body=until_body)
            assert resp.status == status
            assert await resp.read() == b"first"
            assert waited == waits  # the task's wake-ups, the request's and the read's
            await client.close()

    run(main())
