"""One connection's failures mid-response: each becomes a client error the proxy can classify,
and a broken connection never goes back to the pool."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from gateway.client import BadResponse, Client, ConnectionLost, FailureKind, classify
from gateway.defaults import UPSTREAM_HEAD_MAX_BYTES
from tests.gateway.client.scripted import Scripted, ok, raw, run


async def _fails(answer_bytes: bytes, close: bool, exc: type[Exception]) -> str:
    async with Scripted(raw(answer_bytes, close)) as srv:
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


@pytest.mark.parametrize("status", [b"999", b"600", b"099", b"000"])
def test_a_status_outside_100_to_599_is_a_bad_response(status: bytes) -> None:
    # llhttp reads any three digits: a 999 went on to the client as the upstream's answer
    # (and into geogate_requests_total{code="999"}) instead of failing over.
    answer = b"HTTP/1.1 %b Weird\r\nContent-Length: 2\r\n\r\nok" % status
    got = run(_fails(answer, False, BadResponse))
    assert got == f"bad response: status {int(status)} is not an HTTP status (100-599)", got


def test_a_cancelled_read_leaves_the_connection_usable_for_nothing_else() -> None:
    # The head, and then nothing: a stalled stream.
    answer = raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

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


def test_the_first_byte_wait_bounds_the_head_and_then_the_body() -> None:
    async def silent(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepted the request, says nothing

    async def head_only(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await asyncio.sleep(5)  # a prefill that never ends

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cases = ((silent, "head", False), (head_only, "body", False), (head_only, "head", True))
        for answer, stage, until_body in cases:
            async with Scripted(answer) as srv:
                client = Client(1.0)
                t0 = loop.time()
                with pytest.raises(TimeoutError):
                    resp = await client.request(
                        "GET", srv.url + "/", timeout_s=0.2, until_body=until_body
                    )
                    # A 2xx head waited on until_body: the whole wait is request()'s.
                    assert stage == "body", "no head, or no body: request() must time out"
                    await resp.wait_body()
                assert 0.15 < loop.time() - t0 < 2, stage
                assert client.idle_count() == 0
                await client.close()

    run(main())


def test_an_answer_in_time_leaves_no_timer_behind() -> None:
    async def main() -> None:
        async with Scripted(ok(b"fast")) as srv:
            client = Client(1.0)
            for _ in range(2):
                resp = await client.request("GET", srv.url + "/", timeout_s=0.1)
                await resp.wait_body()
                conn = resp._conn
                assert conn is not None and conn.timer is None
                assert await resp.readany() == b"fast"
                resp.release()
            await asyncio.sleep(0.2)  # past the timeout: the pooled connection is unharmed
            assert await (await client.request("GET", srv.url + "/")).read() == b"fast"
            assert srv.connections == 1
            await client.close()

    run(main())


def test_a_reset_during_a_close_delimited_body_is_not_its_end() -> None:
    async def main() -> None:
        read = asyncio.Event()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart of it")
            await w.drain()
            await read.wait()  # a RST drops what the client has not read yet
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()  # RST, not FIN

        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert await resp.readany() == b"part of it"
            read.set()
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(resp.readany(), 2)
            await client.close()

    run(main())


def test_bytes_after_a_response_keep_its_connection_out_of_the_pool() -> None:
    answer = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")

    async def main() -> None:
        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert await resp.read() == b"ok"  # the answer asked for stands
            assert client.idle_count() == 0  # its connection is not reused
            await client.close()

    run(main())


@pytest.mark.parametrize(
    ("framing", "pooled"),
    [
        (b"Content-Length: 5\r\n", False),
        (b"Transfer-Encoding: chunked\r\n", False),
        (b"", True),  # as it should be
        (b"Content-Length: 0\r\n", True),  # common, and harmless
    ],
)
def test_a_204_announcing_a_body_keeps_its_connection_out_of_the_pool(
    framing: bytes, pooled: bool
) -> None:
    # RFC 9110 forbids it: the bytes of a body may follow later, apart, and on a reused
    # connection they were read as the next request's answer (its 502).
    async def main() -> None:
        async with Scripted(raw(b"HTTP/1.1 204 No Content\r\n" + framing + b"\r\n")) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert (resp.status, await resp.read()) == (204, b"")
            assert client.idle_count() == (1 if pooled else 0)
            await client.close()

    run(main())


@pytest.mark.parametrize("coding", [b"xchunked", b"chunked, gzip", b"gzip"])
def test_a_body_whose_last_coding_is_not_chunked_ends_at_the_close(coding: bytes) -> None:
    # llhttp reads such a body to the close (RFC 9112 6.3); "xchunked" ended with "chunked"
    # and was taken for chunked: the close was a failure, and a stream's splice parsed the
    # raw bytes as chunks.
    async def main() -> None:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\n" % coding
        async with Scripted(raw(head + b"5\r\nhello\r\n0\r\n\r\n", True)) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            assert await asyncio.wait_for(resp.read(), 2) == b"5\r\nhello\r\n0\r\n\r\n"
            assert client.idle_count() == 0
            await client.close()

    run(main())


@pytest.mark.parametrize(("shape", "size"), [("many", 300_000), ("one", 300_000), ("one", 70_000)])
def test_a_response_head_past_the_cap_is_a_bad_response(shape: str, size: int) -> None:
    # It was held whole: a 100 MB header grew the worker by 100 MB and stalled its loop 3 s.
    # 300,000: past one socket read (uvloop's 256,000 bytes), the head unfinished after one;
    # 70,000: a head past the cap in the one read that ends it, which passed (uncounted).
    headers = (
        b"X-A: %b\r\n" % (b"a" * 1000) * (size // 1000)
        if shape == "many"
        else b"X: %b\r\n" % (b"a" * size)
    )
    got = run(_fails(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n", False, BadResponse))
    assert got == f"bad response: a response head over {UPSTREAM_HEAD_MAX_BYTES} bytes", got


def test_a_chunked_bodys_trailer_is_not_taken_into_the_head() -> None:
    """httptools hands a trailer's fields to the same callback as the head's: they were
    appended to the response's headers (a second Content-Type on the client's answer)."""

    async def main() -> None:
        body = b'{"ok":1}'
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n"
            b"0\r\nContent-Type: text/html\r\nX-Trail: yes\r\n\r\n" % (len(body), body)
        )
        async with Scripted(raw(answer, False)) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            got = b""
            while part := await asyncio.wait_for(resp.readany(), 2):
                got += part
            assert got == body
            assert [k for k, _ in resp.raw_headers] == [b"content-type", b"transfer-encoding"]
            await client.close()

    run(main())
