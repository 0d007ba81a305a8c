"""One request and its response on a gateway.h1 connection: the ASGI ``receive`` and ``send``.

What uvicorn's RequestResponseCycle does, with less per request: no asyncio.Event (``receive``
makes a future only when it has to wait, which a proxied request's one receive never does: its
body is in by the time its task runs), the default headers joined once a second, not per
response, one line-break count over the joined head in place of two regular expressions per
header, and a response's head held until its first body write, so that both leave in one
writev (a head that no body write follows in the same loop turn, HEAD or a slow first chunk,
goes out at the turn's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.defaults import LINGER_S
from gateway.h1.pipe import Pipe
from gateway.http.asgi import CHUNK, Message, Scope
from gateway.logs import repeating
from gateway.runtime import log


class Connection(Protocol):
    """What a Cycle and a Pipe use of their connection (gateway.h1.conn.H1, which imports
    this module)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    write_paused: bool
    read_paused: bool
    lingering: bool
    on_writable: Callable[[], None] | None

    @property
    def default_lines(self) -> int: ...
    def default_head(self) -> bytes: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def response_done(self, cycle: Cycle) -> None: ...
    def close_now(self) -> None: ...
    async def drain(self) -> None: ...


# uvicorn's, and the RFC's: past this much request body waiting for the app, reading pauses.
BODY_HIGH_WATER = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY_STATUSES = frozenset((204, 304))


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %b\r\n" % (code, phrase)


STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}
SERVER_ERROR = b"Internal Server Error"


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


class Cycle:
    __slots__ = (
        "_bodiless",
        "_body",
        "_buffered",
        "_conn",
        "_handed_over",
        "_head",
        "_remaining",
        "_waiter",
        "chunked",
        "disconnected",
        "keep_alive",
        "last_written",
        "more_body",
        "refused",
        "response_complete",
        "response_started",
        "scope",
        "waiting_100",
    )

    def __init__(self, conn: Connection, scope: Scope, keep_alive: bool, expect_100: bool) -> None:
        self._conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.waiting_100 = expect_100
        self._body: list[bytes] = []
        self._buffered = 0
        self._handed_over = False  # the request's last body message went to the app
        self._waiter: asyncio.Future[None] | None = None
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self._remaining = -1  # bytes Content-Length still owes; -1: no Content-Length
        self._head: bytes | None = None
        self._bodiless = False  # HEAD, 204, 304: body bytes the app sends are not written
        self.last_written = False  # a pipe's owner wrote the last chunk (Pipe.body_ended)
        self.refused: Exception | None = None  # the request's body was malformed: refuse()

    # --- the request's side, fed by the connection ---------------------------------------
    def feed(self, body: bytes) -> bool:
        """A piece of the request body; True once past BODY_HIGH_WATER unread (pause)."""
        self._body.append(body)
        self._buffered += len(body)
        self.wake()
        return self._buffered > BODY_HIGH_WATER

    def wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def refuse(self, err: Exception) -> bool:
        """The request's own body could not be parsed (bad chunk framing): if the app has not
        answered yet, ``receive`` raises ``err`` (a RequestInvalid, which the app answers as
        any 400, with its access line) and True; no more is read. Else False."""
        if not self.more_body or self.response_started or self.response_complete:
            return False
        self.refused = err
        # The parser failed: whatever the client still sends is dropped unparsed, as after
        # an early answer (_linger), so that it cannot fail again and cut the app's 400.
        self._conn.lingering = True
        self.wake()
        return True

    def whole_body(self) -> bytes | None:
        """The whole request body if it is all in and none of it was handed over yet
        (gateway.http.asgi.BODY); else None, and ``receive`` as usual."""
        if self.more_body or self._handed_over or self.disconnected:
            return None
        return self._take()

    def _take(self) -> bytes:
        """The body read so far, handed to the app; reading resumes."""
        body = b"".join(self._body)  # one piece: that piece itself, no copy
        self._body.clear()
        self._buffered = 0
        self._handed_over = not self.more_body
        self._conn.resume_reading()
        return body

    async def receive(self) -> Message:
        conn = self._conn
        if self.waiting_100 and not conn.transport.is_closing():
            self.waiting_100 = False
            if self.more_body:  # the body is not all here: the client waits for this
                conn.transport.write(CONTINUE)
        while not (self.disconnected or self.response_complete) and (
            (self.more_body and not self._body) or (not self.more_body and self._handed_over)
        ):
            if self.refused is not None:
                raise self.refused
            conn.resume_reading()
            if self._waiter is None:  # a second receive() waits on the same future
                self._waiter = conn.loop.create_future()
            await asyncio.shield(self._waiter)
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self._take(), "more_body": self.more_body}

    # --- the response's side ----------------------------------------------------------------
    async def send(self, message: Message) -> None:
        conn = self._conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} in a response")
        self._body_part(message.get("body", b""), message.get("more_body", False))

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        conn = self._conn
        parts = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, conn.default_head()]
        lines = conn.default_lines + 2  # the status line and the empty one
        has_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and not self.chunked:
                if not value.isdigit():  # int() would take "-5" and " 5": a framing to refuse
                    raise RuntimeError("a response Content-Length that is not a number of bytes")
                self._remaining = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self._remaining = -1
                self.chunked = True
            elif name == b"connection" and b"close" in _tokens(value):
                self.keep_alive = False
                has_close = True
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        bodiless = self._bodiless = self.scope["method"] == "HEAD" or status in NO_BODY_STATUSES
        if self._remaining < 0 and not self.chunked and not bodiless:
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False  # HTTP/1.0 has no chunks: the close ends the body
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
                lines += 1
        if bodiless:
            self.chunked = False  # a HEAD's Content-Length stays in its head, as the GET's
            self._remaining = -1
        if self.more_body:
            # Answered before the body was all in (a 408 for a trickle, a 413 by Content-Length,
            # a refusal before the 100 Continue): the rest may come slowly, or never, and the
            # connection cannot be reused; it ends after the answer (_linger), as nginx's and
            # Go's do. (A body read whole, Expect or not, keeps its connection.)
            self.keep_alive = False
        if not self.keep_alive and not has_close:
            parts.append(b"connection: close\r\n")
            lines += 1
        elif self.keep_alive and self.scope["http_version"] == "1.0":
            # An HTTP/1.0 client closes unless told otherwise (RFC 9112 9.3, Appendix C.2.2).
            parts.append(b"connection: keep-alive\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # A line break inside a name or value would end the head early or add a header of the
        # sender's making (response splitting): the count of line ends says so, for all at once.
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise RuntimeError("a response header name or value holds a line break")
        self.response_started = True  # only now: an invalid head leaves room for a 500
        self.waiting_100 = False
        self._head = head
        conn.loop.call_soon(self.flush_head)

    def _body_part(self, body: bytes, more: bool) -> None:
        if self._bodiless:
            data = b""
        elif self.last_written:
            # The body has ended on the wire (a splice wrote its last chunk): nothing may
            # follow it, and a late part (an error event after a deadline that fired as the
            # body ended) closes the connection rather than corrupt the next response.
            data = b""
            if body:
                line = "a response part after its last chunk was dropped; closing"
                log.warning(line, extra=repeating("late-part"))
                self.keep_alive = False
        elif self.chunked:
            data = CHUNK % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
            if self._remaining >= 0:
                self._remaining -= len(body)
                if self._remaining < 0:
                    raise RuntimeError("response body longer than its Content-Length")
        self.write(data)
        if more:
            return
        if self._remaining > 0:
            raise RuntimeError("response body shorter than its Content-Length")
        self.response_complete = True
        self.wake()
        if self.more_body:
            self._linger()
        elif not self.keep_alive:
            self._conn.transport.close()
        self._conn.response_done(self)

    def _linger(self) -> None:
        """End a connection whose request body is still coming. A close with its bytes unread
        would send an RST, which can wipe the answer from the client's buffers before it is
        read: the write side ends instead (a FIN after the answer; TLS has none), what still
        comes is dropped (gateway.h1.conn), and the close follows LINGER_S later, or at once
        at the client's own end (nginx's lingering close)."""
        conn = self._conn
        transport = conn.transport
        if transport.is_closing():
            return
        conn.lingering = True
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered: the answer
        conn.resume_reading()
        conn.loop.call_later(LINGER_S, transport.close)

    def pipe(self) -> Pipe | None:
        """A Pipe for this response (gateway.http.asgi.PIPE) once it has started, chunked. A
        head still held goes out first (the proxy sends the first chunk before it asks, so
        there is none as a rule): the pipe's writes then go straight to the transport."""
        if not self.response_started or self.response_complete or not self.chunked:
            return None
        self.flush_head()
        return Pipe(self._conn, self)

    def write(self, data: bytes) -> None:
        """Body bytes, framed: the held head, if any, goes with them in one writev."""
        transport = self._conn.transport
        head, self._head = self._head, None
        if head is None:
            if data:
                transport.write(data)
        elif data:
            transport.writelines((head, data))
        else:
            transport.write(head)

    def flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._conn.transport.is_closing():
            self._conn.transport.write(head)

    # --- running the app ---------------------------------------------------------------------
    async def run(self, app: Callable[..., object]) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)  # type: ignore[misc]
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                line = "request cancelled (the server's graceful stop timed out)"
                log.info(line, extra=repeating("cut-at-stop"))
            elif not getattr(exc, "logged", False):  # the app said why (StreamAborted)
                log.error("the app raised while answering a request", exc_info=exc)
            if not self.response_started and not self.disconnected:
                await self._server_error()
            elif not self.response_complete:
                self._cut()
            return
        if result is not None:
            log.error("the ASGI app returned %r, not None", result)
        if not self.response_started and not self.disconnected:
            log.error("the ASGI app returned without starting a response")
            await self._server_error()
        elif not self.response_complete and not self.disconnected:
            log.error("the ASGI app returned without completing its response")
            self._cut()

    def _cut(self) -> None:
        """End a response mid-way so that the client can tell: a chunked or sized body ends
        short at the close, but a close-delimited one (HTTP/1.0 with no length: nginx's
        default to its upstreams) would read as whole, so its connection is reset instead."""
        conn = self._conn
        if not self.chunked and self._remaining < 0 and not self._bodiless:
            sock = conn.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):  # linger 0: the close is an RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.transport.abort()
        conn.close_now()

    async def _server_error(self) -> None:
        self.keep_alive = False
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(SERVER_ERROR)),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": SERVER_ERROR})
