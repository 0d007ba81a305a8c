"""gateway.h1.pipe: what a pipe's owner (the relay, the splice) may borrow, and what it gives
back. Fakes for the transport and the connection: the pipe's rules, not a socket's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest

from gateway.h1.pipe import Pipe


class Transport:
    def __init__(self, sock: socket.socket, tls: bool = False) -> None:
        self.sock, self.tls = sock, tls
        self.closing, self.held = False, 0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.held

    def get_extra_info(self, name: str) -> Any:
        return {"socket": self.sock, "sslcontext": object() if self.tls else None}.get(name)


class Conn:
    def __init__(self, transport: Transport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.read_paused = self.write_paused = False
        self.on_writable: Callable[[], None] | None = None
        self.closed = False

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def close_now(self) -> None:
        self.closed = True


class Response:
    last_written = False


@pytest.fixture
def sock() -> Any:
    s = socket.socket()
    yield s
    s.close()


def test_lend_gives_the_socket_and_pauses_reading_till_given_back(sock: socket.socket) -> None:
    conn = Conn(Transport(sock))
    pipe = Pipe(conn, Response())
    assert pipe.lend() == sock.fileno() and conn.read_paused
    pipe.give_back()
    assert not conn.read_paused


def test_reading_paused_before_the_lend_stays_paused_after_it(sock: socket.socket) -> None:
    conn = Conn(Transport(sock))
    conn.read_paused = True  # a pipelined request waits its turn: not the pipe's to resume
    pipe = Pipe(conn, Response())
    assert pipe.lend() == sock.fileno()
    pipe.give_back()
    assert conn.read_paused


@pytest.mark.parametrize("why", ["closing", "bytes held", "tls"])
def test_no_lend_where_the_socket_is_not_the_pipes_to_write(sock: socket.socket, why: str) -> None:
    transport = Transport(sock, tls=why == "tls")
    transport.closing = why == "closing"
    transport.held = 10 if why == "bytes held" else 0
    conn = Conn(transport)
    assert Pipe(conn, Response()).lend() is None
    assert not conn.read_paused


def test_the_pipe_writes_through_the_transport_and_marks_the_bodys_end(sock: socket.socket) -> None:
    transport = Transport(sock)
    conn, response = Conn(transport), Response()
    pipe = Pipe(conn, response)
    pipe.write(b"5\r\nhello\r\n")
    assert transport.written == [b"5\r\nhello\r\n"] and pipe.buffered() == 0
    callback = lambda: None  # noqa: E731
    pipe.on_writable(callback)
    assert conn.on_writable is callback
    pipe.body_ended()
    assert response.last_written
    pipe.abort()
    assert conn.closed
