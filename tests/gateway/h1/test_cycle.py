"""gateway.h1.cycle: one request's receive and send over a real socket pair, each write the
cycle makes recorded (the head rides with the first body write: one writev per answer)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from gateway.errors import RequestInvalid
from gateway.h1.cycle import CONTINUE, Cycle
from gateway.http.asgi import CHUNK


class Recording:
    """A real socket's transport, with each write recorded."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.calls: list[tuple[str, int]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", 1))
        self.transport.write(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", len(parts)))
        self.transport.writelines(parts)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self) -> None:
        self.calls.append(("close", 0))
        self.transport.close()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.calls.append(("write_eof", 0))
        self.transport.write_eof()


class Conn:
    """What a Cycle asks of its connection (gateway.h1.conn.H1)."""

    default_lines = 1

    def __init__(self, transport: Recording, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.write_paused = False
        self.lingering = False
        self.on_writable: Callable[[], None] | None = None
        self.done: list[Cycle] = []
        self.closed_now = 0

    def default_head(self) -> bytes:
        return b"date: Thu, 26 Nov 2026 10:00:00 GMT\r\n"

    def resume_reading(self) -> None:
        pass

    def response_done(self, cycle: Cycle) -> None:
        self.done.append(cycle)

    def close_now(self) -> None:
        self.closed_now += 1
        self.transport.close()


Case = Callable[[Conn, Callable[..., Cycle], socket.socket], Awaitable[None]]


def _run(case: Case) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        conn = Conn(Recording(transport), loop)

        def cycle(method: str = "GET", version: str = "1.1", keep_alive: bool = True) -> Cycle:
            scope = {"method": method, "http_version": version}
            c = Cycle(conn, scope, keep_alive, False)  # type: ignore[arg-type]
            c.more_body = method == "POST"  # a GET's end comes with its head (H1)
            return c

        theirs.setblocking(False)
        try:
            await case(conn, cycle, theirs)
        finally:
            transport.close()
            theirs.close()

    uvloop.run(main())


async def _read(loop_sock: socket.socket, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while until not in got:
        chunk = await asyncio.wait_for(loop.sock_recv(loop_sock, 65536), 2)
        if not chunk:
            break
        got += chunk
    return got


def _start(status: int, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def _body(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


def test_the_head_leaves_with_the_first_body_write() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        await c.send(_start(200, (b"content-type", b"text/plain")))
        await c.send(_body(b"body", more=True))  # chunked: no length given
        await c.send(_body(b""))
        assert conn.transport.calls == [("writelines", 2), ("write", 1)]
        got = await _read(peer, b"0\r\n\r\n")
        assert got == (
            b"HTTP/1.1 200 OK\r\ndate: Thu, 26 Nov 2026 10:00:00 GMT\r\n"
            b"content-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            b"4\r\nbody\r\n0\r\n\r\n"
        )
        assert conn.done == [c] and c.response_complete

    _run(case)


def test_a_head_no_body_write_follows_leaves_at_the_loop_turns_end() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        await c.send(_start(200, (b"content-type", b"text/event-stream")))
        assert conn.transport.calls == []
        got = await _read(peer, b"\r\n\r\n")  # a slow first chunk: the head does not wait
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in got
        assert conn.transport.calls == [("write", 1)]

    _run(case)


@pytest.mark.parametrize("late", [b"", b"data: late error\n\n"], ids=["final-send", "late-part"])
def test_nothing_follows_a_last_chunk_the_pipes_owner_wrote(late: bytes) -> None:
    """The final send writes no second last chunk; a part sent after it (an error event after a
    deadline that fired as the splice ended the body) is dropped and the connection closed,
    or the next response's framing would be broken."""

    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        await c.send(_start(200, (b"content-type", b"text/event-stream")))
        pipe = c.pipe()
        assert pipe is not None
        pipe.write(CHUNK % (9, b"data: 1\n\n") + b"0\r\n\r\n")  # as gateway._splice does
        pipe.body_ended()
        await c.send(_body(late))
        # The head, the pipe's one write and, for a late part, the close: no write after it.
        closed = [("close", 0)] if late else []
        assert conn.transport.calls == [("write", 1), ("write", 1), *closed]
        got = await _read(peer, b"0\r\n\r\n")
        assert got.partition(b"\r\n\r\n")[2] == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"  # one last chunk
        assert c.response_complete and conn.done == [c] and c.keep_alive == (not late)

    _run(case)


def test_a_pipe_sends_a_held_head_first_and_once_then_is_the_transports_own_write() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        assert c.pipe() is None  # no response started yet: nothing to pipe into
        await c.send(_start(200, (b"content-type", b"text/event-stream")))
        pipe = c.pipe()  # the head is still held: it must go before any chunk
        assert pipe is not None
        assert conn.transport.calls == [("write", 1)]  # the head, alone, at once
        # The transport's own methods: no wrapper's frame per streamed chunk.
        assert pipe.write == conn.transport.write and pipe.is_closing == conn.transport.is_closing
        assert pipe.buffered == conn.transport.get_write_buffer_size and pipe.buffered() == 0
        pipe.write(CHUNK % (9, b"data: 1\n\n"))  # framed by the caller
        await asyncio.sleep(0)  # the loop turn's end, where a held head would also go
        await c.send(_body(b""))
        assert conn.transport.calls == [("write", 1), ("write", 1), ("write", 1)]
        got = await _read(peer, b"0\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and got.count(b"HTTP/1.1") == 1
        assert body == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"
        # The relay reads conn's flag (conn: the fake standing in for a Connection, so the
        # types do not overlap).
        assert pipe.flow is conn and not pipe.is_closing()  # type: ignore[comparison-overlap]
        assert c.pipe() is None  # the response has ended: nothing more to pipe into
        called: list[int] = []
        pipe.on_writable(lambda: called.append(1))
        assert conn.on_writable is not None
        conn.on_writable()
        assert called == [1]
        conn.transport.close()
        assert pipe.is_closing()

    _run(case)


def test_a_response_with_a_length_is_not_piped() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        await c.send(_start(200, (b"content-length", b"2")))
        assert c.pipe() is None  # only chunked responses: a pipe's frames would break it
        await c.send(_body(b"ok"))
        assert c.pipe() is None  # complete

    _run(case)


def test_head_and_204_send_no_body_and_keep_their_length() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        head = cycle("HEAD")
        await head.send(_start(200, (b"content-length", b"5")))
        await head.send(_body(b"hello"))  # not written: a HEAD's answer has no body
        empty = cycle()
        await empty.send(_start(204))
        await empty.send(_body(b""))
        got = await _read(peer, b"204 No Content")
        got += await _read(peer, b"\r\n\r\n") if not got.endswith(b"\r\n\r\n") else b""
        assert b"hello" not in got and b"content-length: 5" in got
        assert b"transfer-encoding" not in got
        assert conn.done == [head, empty]

    _run(case)


def test_http_1_0_without_a_length_ends_its_body_by_closing() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle(version="1.0", keep_alive=False)
        await c.send(_start(200))
        await c.send(_body(b"all", more=True))
        await c.send(_body(b""))
        got = await _read(peer, b"never")  # read to the close
        assert got.endswith(b"connection: close\r\n\r\nall"), got
        assert b"chunked" not in got
        assert ("close", 0) in conn.transport.calls

    _run(case)


def test_http_1_0_keep_alive_is_said_in_the_head_where_the_length_is_known() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle(version="1.0", keep_alive=True)
        await c.send(_start(200, (b"content-length", b"2")))
        await c.send(_body(b"ok"))
        got = await _read(peer, b"\r\n\r\nok")
        assert b"connection: keep-alive\r\n" in got and b"close" not in got, got
        assert c.keep_alive
        # No length: an HTTP/1.0 body ends with the close, whatever the client asked.
        d = cycle(version="1.0", keep_alive=True)
        await d.send(_start(200))
        await d.send(_body(b"all"))
        got = await _read(peer, b"never")
        assert b"connection: close\r\n" in got and b"keep-alive" not in got, got
        assert not d.keep_alive

    _run(case)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([(b"x-evil", b"a\r\nset-cookie: b")], "line break"),
        ([(b"x-evil\r\nset-cookie", b"b")], "line break"),
        ([(b"x-evil", b"a\nb")], "line break"),
        ([(b"content-length", b"-5")], "not a number of bytes"),
        ([(b"content-length", b" 5")], "not a number of bytes"),
        ([(b"content-length", b"+5")], "not a number of bytes"),
        ([(b"content-length", b"")], "not a number of bytes"),
    ],
)
def test_a_line_break_or_a_bad_length_in_a_response_head_is_refused(
    headers: list[tuple[bytes, bytes]], says: str
) -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle()
        with pytest.raises(RuntimeError, match=says):
            await c.send(_start(200, *headers))
        await asyncio.sleep(0)
        assert conn.transport.calls == []

    _run(case)


def test_a_body_longer_or_shorter_than_its_length_is_an_error() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        long = cycle()
        await long.send(_start(200, (b"content-length", b"2")))
        with pytest.raises(RuntimeError, match="longer"):
            await long.send(_body(b"abc"))
        short = cycle()
        await short.send(_start(200, (b"content-length", b"5")))
        with pytest.raises(RuntimeError, match="shorter"):
            await short.send(_body(b"abc"))

    _run(case)


def test_an_app_that_raises_before_answering_gets_a_500_and_the_connection_closed() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        async def broken(scope: object, receive: object, send: object) -> None:
            raise ValueError("boom")

        await cycle().run(broken)
        got = await _read(peer, b"never")
        assert got.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert b"connection: close" in got and got.endswith(b"Internal Server Error")

    _run(case)


def test_receive_hands_the_body_over_then_waits_for_the_end() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle("POST")
        c.waiting_100 = True  # Expect: 100-continue, the body not sent yet
        got = asyncio.ensure_future(c.receive())
        await asyncio.sleep(0)
        assert await _read(peer, b"\r\n\r\n") == CONTINUE
        assert not got.done()
        assert not c.feed(b'{"a":')
        c.more_body = False
        c.feed(b"1}")
        assert await got == {"type": "http.request", "body": b'{"a":1}', "more_body": False}
        after = asyncio.ensure_future(c.receive())  # the body is all in: wait for the end
        await asyncio.sleep(0)
        assert not after.done()
        await c.send(_start(200, (b"content-length", b"0")))
        await c.send(_body(b""))
        assert await after == {"type": "http.disconnect"}
        assert c.feed(b"x" * 70_000)  # past BODY_HIGH_WATER: the connection pauses reading

    _run(case)


def test_an_answer_before_the_100_continue_closes_the_connection() -> None:
    """A refusal sent before the body was asked for (a 404, a 413 by Content-Length): the
    client may still send the body, or never; the connection cannot be reused either way."""

    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle("POST")
        c.waiting_100 = True  # Expect: 100-continue, and nobody called receive()
        await c.send(_start(404, (b"content-length", b"2")))
        await c.send(_body(b"no"))
        got = await _read(peer, b"no")
        assert got.startswith(b"HTTP/1.1 404") and b"connection: close" in got, got
        assert CONTINUE not in got and not c.keep_alive
        assert conn.lingering and ("write_eof", 0) in conn.transport.calls
        assert await _read(peer, b"never") == b""  # the answer, then the end (a FIN)
        sent = cycle("POST")  # a client that sent its body without waiting for the 100
        sent.waiting_100 = True
        sent.more_body = False
        await sent.send(_start(200, (b"content-length", b"2")))
        assert sent.keep_alive

    _run(case)


def test_the_whole_body_is_handed_over_once_and_only_when_all_in() -> None:
    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle("POST")
        c.feed(b'{"model":')
        assert c.whole_body() is None  # more to come: receive() as usual
        c.feed(b'"m"}')
        c.more_body = False
        assert c.whole_body() == b'{"model":"m"}'
        assert c.whole_body() is None  # handed over: not twice
        waiting = asyncio.ensure_future(c.receive())  # what follows: the end, as after receive
        await asyncio.sleep(0)
        assert not waiting.done()
        c.disconnected = True
        c.wake()
        assert await waiting == {"type": "http.disconnect"}

    _run(case)


def test_an_answer_before_the_body_is_all_in_ends_the_connection_without_a_reset() -> None:
    """No Expect this time (a 408 for a trickle, a 413 by Content-Length): the connection
    is not reused; its write side ends after the answer, reading goes on (a close with the
    body's bytes unread would be an RST), and it closes LINGER_S later."""

    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle("POST")
        await c.send(_start(413, (b"content-length", b"2")))
        await c.send(_body(b"no"))
        got = await _read(peer, b"never")
        assert got.startswith(b"HTTP/1.1 413") and b"connection: close" in got, got
        assert got.endswith(b"no") and not c.keep_alive and conn.lingering
        assert ("close", 0) not in conn.transport.calls  # not yet: the body still comes

    _run(case)


def test_a_body_refused_mid_way_raises_at_the_next_receive_after_what_was_read() -> None:
    """gateway.h1 found the request's own chunk framing bad after a good chunk: the app gets
    that chunk, then the error at its next receive (the 400 is its to answer), and what the
    client still sends is dropped (lingering); once the response started, no longer."""

    async def case(conn: Conn, cycle: Callable[..., Cycle], peer: socket.socket) -> None:
        c = cycle("POST")
        c.feed(b'{"')
        assert await c.receive() == {"type": "http.request", "body": b'{"', "more_body": True}
        err = RequestInvalid("malformed HTTP/1.1 request: invalid chunk size")
        assert c.refuse(err) and conn.lingering
        with pytest.raises(RequestInvalid):
            await c.receive()
        await c.send(_start(400))
        assert not c.refuse(err)  # an answer started: the connection's to cut, not the app's

    _run(case)
