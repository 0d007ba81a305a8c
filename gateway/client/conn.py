"""One HTTP/1.1 connection to an upstream: an asyncio protocol that writes a request and
parses its response with httptools (llhttp, as uvicorn and Node), handing the body on as it
comes. It replaced aiohttp's client, a third of a worker's CPU per request (bench/results/
round4/profile.md), keeping pooling, flow control, chunked and close-delimited bodies, 1xx skips.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import cast

import httptools

from gateway.client.failures import BadResponse, ConnectionLost
from gateway.defaults import PAUSE_BYTES, UPSTREAM_HEAD_MAX_BYTES

HEAD_TOO_LONG = f"a response head over {UPSTREAM_HEAD_MAX_BYTES} bytes"


class Conn(asyncio.Protocol):
    """One connection. It carries one request at a time: ``start`` writes it, ``head`` waits
    for the status and headers, ``read`` hands on the body. Between requests it sits idle in
    its origin's pool (gateway.client.pool), which it leaves when the upstream closes it."""

    __slots__ = (
        "buffered",
        "busy",
        "chunked",
        "chunks",
        "complete",
        "ends_line",
        "error",
        "field_bytes",
        "framed",
        "handed_off",
        "head_bytes",
        "head_done",
        "headers",
        "heard",
        "idle_in",
        "idle_since",
        "interim",
        "keep_alive",
        "loop",
        "lost",
        "no_body",
        "on_body",
        "on_chunk_complete",
        "on_chunk_header",
        "open_chunks",
        "parser",
        "paused",
        "sink",
        "status",
        "timer",
        "transport",
        "until_body",
        "waiter",
        "wants_hand_off",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        # llhttp's body callback is the list's own append (a C call per chunk, no frame),
        # looked up once by httptools: the list is kept for good, emptied in place (clear()).
        self.on_body: Callable[[bytes], None] = self.chunks.append
        # Inside a chunk (its header seen, its CRLF not yet): no hand-off to gateway._splice.
        self.open_chunks: list[bool] = []
        self.on_chunk_header = functools.partial(self.open_chunks.append, True)
        self.on_chunk_complete = self.open_chunks.pop
        self.parser = httptools.HttpResponseParser(self)
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.busy = False  # a request is out and its response not complete
        self.head_done = self.complete = False
        self.interim = False  # inside a 1xx answer, which a final one follows
        self.keep_alive = False  # read at the head: llhttp forgets it once the message ends
        self.framed = self.chunked = False  # Content-Length or chunked: no end by the close
        self.wants_hand_off = False  # hand_off(): stop at the next chunk boundary
        self.ends_line = False  # the last read ended in LF (a chunk's, or the head's)
        self.handed_off = False  # stopped there: the body's rest is read by gateway._splice
        self.no_body = False  # a HEAD request's response: headers only
        self.until_body = False  # head() waits for a 2xx answer's first body bytes too
        self.error: BaseException | None = None
        self.lost = self.paused = self.heard = False  # heard: a byte of its answer (pool.py)
        self.head_bytes = self.field_bytes = 0  # read while the head was unfinished; its fields
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None  # the wait for the first byte's deadline
        # While set, the body goes to sink() from data_received, each read's chunks joined;
        # sink returning False (its taker is full) pauses reading until resume().
        self.sink: Callable[[bytes], bool] | None = None
        self.idle_in: list[Conn] | None = None  # its origin's idle list, while pooled

    # -- the request --------------------------------------------------------------------

    def start(
        self, head: bytes, body: bytes, no_body: bool, timeout_s: float | None, until_body: bool
    ) -> None:
        """Write one request (head and body in one writev). With ``timeout_s``, ``head`` and
        ``wait_body`` raise TimeoutError once that long passed without the body's first bytes
        (one timer handle, not an ``asyncio.timeout``: its ``get_running_loop`` is a getpid()
        in CPython 3.11). ``until_body``: ``head`` returns at a 2xx head only with the body's
        first bytes (or its end): a stream's head and first event, one wake-up, not two."""
        assert self.transport is not None and not self.busy
        if self.lost:
            raise ConnectionLost("closed by the upstream before the request was sent")
        self.busy, self.head_done, self.complete = True, False, False
        self.status, self.headers, self.framed = 0, [], False
        self.no_body, self.until_body = no_body, until_body
        self.chunked = self.wants_hand_off = self.handed_off = False
        self.chunks.clear()
        self.open_chunks.clear()
        self.buffered, self.error, self.heard, self.head_bytes = 0, None, False, 0
        self.transport.writelines((head, body) if body else (head,))
        if timeout_s is not None:
            self.timer = self.loop.call_later(timeout_s, self._expire)

    async def head(self) -> None:
        """Wait for the response's status and headers (``until_body``: see ``start``)."""
        while not self.head_done or (self.until_body and not (self.chunks or self.complete)):
            await self._wait()

    async def wait_body(self) -> None:
        """Wait until some of the body is here, or its end."""
        while not self.chunks and not self.complete:
            await self._wait()  # a body's first read and its end disarm the first-byte timer

    async def read(self) -> bytes:
        """Whatever body has come since the last read; waits when none has. b"" at the end.
        Raises ConnectionLost or BadResponse when the response cannot complete."""
        while not self.chunks:
            if self.complete:
                return b""
            await self._wait()
        data = self._take_chunks()
        self.resume()
        return data

    async def drain_to(self, sink: Callable[[bytes], bool]) -> None:
        """Hand the rest of the body to ``sink``: what is buffered now, then what each read of
        the socket brings (the chunks of one read joined: one write onward, not one per
        chunk), from data_received, with no task woken per chunk; never b"" (llhttp hands on
        no empty span). Returns at the body's end; raises as ``read`` does."""
        self.sink = sink
        try:
            if self.chunks:  # what came before the sink was set; later reads: data_received
                # Full, and more to come: wait for the taker. A response already complete is
                # not paused: its connection goes back to the pool and must read the next one.
                if sink(self._take_chunks()) or self.complete:
                    self.resume()  # reading may have paused before the sink was set
                else:
                    self._pause()
            while not (self.complete or self.handed_off):
                await self._wait()
        finally:
            self.sink = None

    def replace_unread(self, data: bytes) -> None:  # what is left to read becomes ``data``
        self.chunks[:], self.buffered = ([data] if data else []), len(data)

    def _take_chunks(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()  # not a new list per read: fewer young objects, fewer collections
        self.buffered = 0
        return data

    def resume(self) -> None:
        """The sink's taker drained: read again (not while the socket is lent)."""
        if self.paused and not self.handed_off and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def at_eof(self) -> bool:
        return self.complete and not self.chunks

    def reusable(self) -> bool:
        """Read to its end (nothing of this response left to read), kept alive, in step."""
        if not self.at_eof() or self.lost or self.paused or self.error is not None:
            return False
        return self.keep_alive and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        # Never after the body's first bytes: data_received and on_message_complete cancel it.
        self.timer = None
        if self.error is None:
            self.error = TimeoutError()
        self._wake()

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is no asyncio.Transport subclass: no isinstance check).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, read: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for (an idle pooled connection): the stream is out of step.
            self.lost = True  # not reused meanwhile: connection_lost comes a loop turn later
            self.close()
            return
        self.heard, self.ends_line, in_head = True, read[-1] == 10, not self.head_done
        try:
            self.parser.feed_data(read)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self.complete:
                # Bytes after a whole response: that one stands, the connection is out of step
                # and not reused (on_message_begin stopped the parser).
                self.lost = True
                self.close()
            else:
                self._fail(BadResponse(f"not an HTTP/1.1 response ({exc})"))
        if in_head:  # llhttp holds a header until its end: bound what it holds; a head this
            self.head_bytes += len(read)  # read ended, by its fields (the read was not counted)
            held = self.field_bytes if self.head_done else self.head_bytes
            if held > UPSTREAM_HEAD_MAX_BYTES and self.error is None:
                return self._fail(BadResponse(HEAD_TOO_LONG))
        chunks = self.chunks
        if not chunks:
            return
        if self.timer is not None:  # the body's first bytes: the wait for them is over
            self._disarm()
        sink = self.sink
        if sink is None:
            # The read's size, framing and all: a bound on the body it brought, without
            # summing every chunk still unread on each read (quadratic in many small chunks).
            self.buffered += len(read)
            if self.buffered > PAUSE_BYTES:
                self._pause()
            self._wake()
            return
        # A streamed token's way on, inline: this runs once per socket read of every stream,
        # and under load each Python call costs (bench/perf_split.py). Reading is not paused
        # while reads come, so nothing resumes here; the rule for pausing is drain_to's.
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if not (sink(data) or self.complete):
            self._pause()
        elif self.wants_hand_off and self._at_boundary():
            self.wants_hand_off, self.handed_off, self.sink = False, True, None
            self._pause()
            self._wake()

    # -- a body's rest carried elsewhere (gateway.http.splice) ----------------------------

    def _at_boundary(self) -> bool:
        # Between chunks: none open (llhttp's chunk callbacks) and the last read ended in a
        # chunk's final LF or the head's, so llhttp holds no partial size line either.
        return not (self.complete or self.chunks or self.open_chunks) and self.ends_line

    def hand_off(self) -> None:
        """Stop reading between chunks: now, or after the next read that ends between two."""
        if self._at_boundary():
            self.handed_off = True
            self._pause()
        else:
            self.wants_hand_off = True

    def splicable(self) -> bool:  # what gateway._splice can carry: a chunked body (TLS too)
        return self.chunked and self.transport is not None

    def lend(self) -> asyncio.Transport | None:
        """The transport, for gateway._splice to read as its protocol, once handed off."""
        t = self.transport
        return t if self.handed_off and t is not None and not t.is_closing() else None

    def lent_end(self, extra: bool) -> None:
        """The splice read the body to its last chunk: llhttp, which still stands at the chunk
        boundary where it stopped, is fed that last chunk, and the response completes as if
        it had read it. ``extra``: bytes came after it (the connection is out of step)."""
        self.handed_off = False
        try:
            self.parser.feed_data(b"0\r\n\r\n")
        except httptools.HttpParserError:  # not at a boundary after all: out of step
            extra = True
        if extra or self.transport is None or self.transport.is_closing():
            self.lost = True  # out of step, or closed by the upstream meanwhile: not pooled
            self.close()
        else:
            self.resume()

    def lent_back(self) -> None:
        """Not carried, or only in part, to a chunk boundary (llhttp's too): reading goes on."""
        self.handed_off = False
        self.resume()

    def lent_failed(self, error: BaseException) -> None:
        """The splice ended before the body's end: the connection is out of step."""
        self.handed_off = False
        self.lost, self.error = True, self.error or error
        self.close()

    def eof_received(self) -> bool:
        return False  # close: a half-closed upstream sends no more

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy and not self.complete and self.error is None:
            if self.head_done and not self.framed and exc is None:
                self.on_message_complete()  # the body ran until the close: that is its end
            else:
                what = type(exc).__name__ if exc is not None else "closed by the upstream"
                self.error = ConnectionLost(f"{what} before the response was complete")
                self._wake()
        if self.idle_in is not None and self in self.idle_in:
            self.idle_in.remove(self)  # closed by the upstream while idle: out of the pool

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()
        self.close()

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a chunked body's trailer: not the head's (they were merged in)
            return
        self.field_bytes += len(name) + len(value) + 4  # ": " and CRLF
        lname = name.lower()
        self.headers.append((lname, value))  # in lower case, as ASGI's: readers compare them
        if lname == b"content-length":
            self.framed = True
        elif lname == b"transfer-encoding":  # chunked only as the last coding, as llhttp
            self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"  # reads it
            self.framed = self.framed or self.chunked  # (RFC 9112 6.3: "xchunked" is none)

    def on_message_begin(self) -> None:
        if not self.busy:  # a response nobody asked for, after the one that was: stop here
            raise BadResponse("bytes after the end of the response")
        self.field_bytes = 0  # each head's own (a 1xx answer's, then the final one's)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # llhttp reads any 3 digits: a 999 went on to the client
            return self._fail(BadResponse(f"status {status} is not an HTTP status (100-599)"))
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: a final answer follows
            self.interim, self.headers, self.framed, self.chunked = True, [], False, False
            return
        self.status = status
        self.head_done = True
        # A 204 announcing a body breaks RFC 9110 15.3.5: its bytes may follow; not reused.
        zero = status == 204 and (b"content-length", b"0") in self.headers  # common, harmless
        lied = status == 204 and (self.chunked or (self.framed and not zero))
        self.keep_alive = self.parser.should_keep_alive() and not lied
        if self.no_body:
            # llhttp cannot be told the request was HEAD: it would wait for the body the
            # headers announce. The response ends here; the connection is not reused.
            self.complete, self.busy, self.lost = True, False, True
            self.close()
        self.until_body = self.until_body and 200 <= status < 300  # only a 2xx waits on
        if self.complete or not self.until_body:
            self._wake()  # else at the body's first bytes (start's ``until_body``)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.busy = False
        self._disarm()
        self._wake()
