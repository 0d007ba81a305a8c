"""uvicorn's HTTP/1.1 protocol (httptools) with a cap on a request's head, in size and time.

httptools keeps whatever URL and headers a client sends until the head ends: a client could
send megabytes of headers into a worker's memory, where granian and nginx refuse with 431
(tests/gateway/test_h1.py sends 64 MB, in many headers and in one). Past ``head_limit`` bytes of URL
and headers this protocol answers 431, in the API's JSON error shape, and closes the
connection. Under the cap the app's own check (``server.max_header_bytes``, the same 431) still
decides: the cap only bounds the memory one connection can take before that check runs.

uvicorn has no timeout on the head either: a client that sends a byte now and then (slowloris)
would hold its connection for good. Past ``head_timeout_s`` from a request's first byte, with
the head not complete, this protocol answers 408 and closes; a connection that sends nothing
is closed quietly after the keep-alive time, as between requests. The timer is armed only when
a read leaves a head unfinished: a request whose head arrives in one read, as nearly all do,
costs no timer. Every other request the parser refuses gets a JSON 400 too, not uvicorn's
plain text, and one log line, the gateway's (with the client), in place of uvicorn's
"Invalid HTTP request received." (which came before the 431's own line: one event, two lines).

Past ``limit_concurrency`` (server.max_connections) uvicorn answers a request with its own
plain-text 503; this protocol has it answered by a JSON 503 with Retry-After instead, through
uvicorn's own request cycle (pipelined requests, connection: close), so only the app changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway import defaults as d
from gateway.errors import (
    GatewayError,
    GatewayOverloaded,
    HeadersTooLarge,
    HeadTimeout,
    RequestInvalid,
)
from gateway.http.asgi import DISCONNECT_HOOK, PIPE, Receive, Scope, Send
from gateway.http.errors import error_body, send_error, status_of
from gateway.runtime import log

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

# What uvicorn logs for every request its parser refuses: send_400_response logs the gateway's
# own line, with the client, in its place (``capped`` drops uvicorn's).
UVICORN_PARSER_LINE = "Invalid HTTP request received."


def _not_uvicorns_parser_line(record: logging.LogRecord) -> bool:
    return record.msg != UVICORN_PARSER_LINE


class HeadWaits:
    """A request cycle's transport (write, close and is_closing are all uvicorn's cycle uses):
    a response's head, its first write, waits for the first body write, so that both leave in
    one writev. uvicorn writes the head at ``http.response.start``: two system calls per
    response where one will do, and a socket write is the largest single item of a request's
    CPU in bench/profile.py (the own time of the function that writes). A head that no body
    write follows in the same loop turn (HEAD, a slow first chunk) goes out at the turn's end."""

    __slots__ = ("_head", "_loop", "_next_is_head", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._next_is_head = False

    def arm(self) -> None:
        """A new response begins: its first write is its head."""
        self._next_is_head = True

    def write(self, data: bytes) -> None:
        if self._next_is_head and not data.startswith(b"HTTP/1.1 100 "):  # not 100 Continue
            self._next_is_head = False
            self._head = data
            self._loop.call_soon(self.flush)
            return
        head, self._head = self._head, None
        if head is None:
            self._transport.write(data)
        else:
            self._transport.writelines((head, data))

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class Pipe:
    """gateway.http.asgi.ClientPipe on uvicorn: chunked framing, as uvicorn's send does, written
    through the connection's HeadWaits (a head still held goes first)."""

    __slots__ = ("_flow", "_protocol", "_writer")

    def __init__(self, protocol: CappedHttpToolsProtocol, writer: HeadWaits) -> None:
        self._protocol = protocol
        self._writer = writer
        self._flow = protocol.flow

    def write(self, chunk: bytes) -> bool:
        if chunk:
            self._writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return not self._flow.write_paused

    def gone(self) -> bool:
        # uvloop raises on a write to a closed transport; the request's task learns of the
        # loss a loop turn later (the disconnect hook), while upstream reads may still come.
        return self._protocol.lost or self._writer.is_closing()

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        self._protocol.on_writable = callback


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, and uvicorn's 400 path runs, which
    ``send_400_response`` below turns into the 431."""


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """Set ``head_limit`` and ``head_timeout_s`` on a subclass (``capped``): uvicorn builds the
    protocol itself."""

    head_limit: ClassVar[int] = 0
    max_header_bytes: ClassVar[int] = 0  # what the 431 names: the configured limit
    head_timeout_s: ClassVar[float] = 0.0
    _head_bytes = 0  # URL and complete headers, as the parser hands them over
    _raw_head = 0  # bytes read while a head was unfinished (one header may be all of them)
    _began_in_read = False  # the head began in the read being fed: its split is unknown
    _refused = False
    _in_head = False  # between a request's first byte and its head's end
    _first_byte = False  # a byte came on this connection: before it, idle is keep-alive's
    _head_timer: asyncio.TimerHandle | None = None
    _lost = False
    _on_lost: Callable[[], None] | None = None  # the request's (gateway.http.asgi)
    _extensions: dict[str, object] | None = None  # one per connection, shared by its requests
    _writer: HeadWaits | None = None
    _running: RequestResponseCycle | None = None  # the cycle whose app runs (pipelined: in turn)
    on_writable: Callable[[], None] | None = None  # a Pipe's, while the client's buffer is full

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Before any byte a connection is idle, as between requests: closed quietly after the
        # keep-alive time, never answered (a pool may open one ahead of its first request).
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._first_byte:
            self._first_byte = True
            self._disarm()
        self._began_in_read = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # httptools keeps a header's bytes until the next one starts: one endless header is
        # never handed over, so what was read while the head is unfinished is counted too
        # (all of a read, except the one the head began in: memory stays within one read).
        if not self._began_in_read:
            self._raw_head += len(data)
            if self._raw_head > self.head_limit:
                self._too_large()
                return
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._lost = True
        self._tell_lost()

    def _close_now(self) -> None:
        """Close from this side, and tell the request running on the connection at once: with
        a full send buffer uvloop reports connection_lost only once it drains, which a client
        that stopped reading never lets happen (the request would wait for its idle timeout)."""
        self.transport.close()
        self._tell_lost()

    def _tell_lost(self) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def _disconnect_hook(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self._lost:
            callback()
            return
        self._on_lost = callback

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._extensions is None:
            self._extensions = {DISCONNECT_HOOK: self._disconnect_hook, PIPE: self._pipe}
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-item]
        self._head_bytes = self._raw_head = 0
        self._began_in_read = self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response still being sent: an answer now would land
            # inside that response.
            self._close_now()
            return
        log.info(
            "request head not complete in %g s from %s: closed", self.head_timeout_s, self.client
        )
        self._refuse(
            HeadTimeout(
                f"the request line and headers did not arrive within {self.head_timeout_s:g} s "
                "(server.head_timeout_s)"
            ),
            "Request Timeout",
        )

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # "k: v\r\n", as the app counts them
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.head_limit:
            self._refused = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refused: in the API's JSON shape, as every
        other error, and logged here, as uvicorn's own line is not (``capped``)."""
        if self._refused:
            self._too_large()
            return
        log.warning("refused a malformed HTTP/1.1 request from %s", self.client)
        self._refuse(RequestInvalid(f"malformed HTTP/1.1 request: {msg}"), "Bad Request")

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn picked its plain-text 503 (limit_concurrency): the gateway's JSON one instead.
        # Here, not in on_headers_complete, so uvicorn's check and request cycle stay its own.
        if app is service_unavailable:
            app = self._connection_limit_reached  # type: ignore[assignment]
        # One per connection: its cycles run one after another, pipelined ones included.
        if self._writer is None:
            self._writer = HeadWaits(self.transport, self.loop)
        self._writer.arm()
        cycle.transport = self._writer  # type: ignore[assignment]
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _pipe(self) -> Pipe | None:
        """A Pipe for the running response if uvicorn frames it chunked (gateway.http.asgi)."""
        cycle, writer = self._running, self._writer
        if (
            cycle is None
            or writer is None
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.scope["method"] == "HEAD"
        ):
            return None
        return Pipe(self, writer)

    @property
    def lost(self) -> bool:
        return self._lost

    def shutdown(self) -> None:
        # uvicorn's graceful stop closes the real transport: a held head leaves first.
        if self._writer is not None:
            self._writer.flush()
        super().shutdown()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_writable is not None:
            self.on_writable()

    async def _connection_limit_reached(self, scope: Scope, receive: Receive, send: Send) -> None:
        retry = d.CONNECTION_LIMIT_RETRY_AFTER_S
        # limit_concurrency is max_connections + 1 (gateway.server): uvicorn counts this one.
        limit = (self.limit_concurrency or 1) - 1
        err = GatewayOverloaded(
            f"this gateway's connection limit of {limit} open connections was "
            f"reached (server.max_connections); retry in {retry} s",
            retry_after_s=retry,
        )
        # Closed, as uvicorn's 503 is: a connection over the limit should not stay open.
        await send_error(send, err, [(b"connection", b"close")])

    def _too_large(self) -> None:
        log.warning("refused a request head over %d bytes from %s", self.head_limit, self.client)
        self._refuse(
            HeadersTooLarge(  # in the app's words (gateway.http.intake.check_headers)
                f"request headers are over this gateway's limit of {self.max_header_bytes} "
                "bytes (server.max_header_bytes); send fewer or shorter headers"
            ),
            "Request Header Fields Too Large",
        )

    def _refuse(self, err: GatewayError, reason: str) -> None:
        """Answer ``err`` in the API's JSON shape and close: nothing more is read."""
        self._in_head = False
        self._disarm()
        running = self._running
        if running is not None and not running.response_complete:
            # A pipelined request refused behind one still being answered: an answer now
            # would land inside (or in place of) that response. Closed instead.
            self._close_now()
            return
        if self._writer is not None:
            self._writer.flush()  # a response still held goes first (pipelined before this)
        body = json.dumps(error_body(err)).encode()
        head = (
            f"HTTP/1.1 {status_of(err)} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def capped(
    max_header_bytes: int, url_bytes: int, head_timeout_s: float
) -> type[CappedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``: heads over ``max_header_bytes`` +
    ``url_bytes``, or not complete within ``head_timeout_s``, are refused. uvicorn's line for a
    refused request is dropped: the protocol logs its own (adding the filter twice adds one)."""
    logging.getLogger("uvicorn.error").addFilter(_not_uvicorns_parser_line)
    limits = {
        "head_limit": max_header_bytes + url_bytes,
        "max_header_bytes": max_header_bytes,
        "head_timeout_s": head_timeout_s,
    }
    return type("CappedHttpToolsProtocol", (CappedHttpToolsProtocol,), limits)
