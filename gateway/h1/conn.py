"""The uvicorn engine's HTTP/1.1 protocol: the gateway's own, on httptools (llhttp), run by
uvicorn's server (sockets, workers, TLS, lifespan, graceful stop), which builds it as
``http=``. Requests go to the ASGI app through gateway.h1.cycle.

Why not uvicorn's HttpToolsProtocol: bench/floor_proxy.py's proxy took a median 121 µs of CPU
per request on it and 109.5 µs on this one, in alternating rounds (bench/ab.py, c = 16:
bench/results/round5/h1_floor.md). What it did per request that this one does not: an
asyncio.Event, a keep-alive timer armed and cancelled (here one timer per connection checks the
time of the last answer when it fires), two regular expressions per response header (here one
count of line ends over the joined head); per connection, address look-ups up front (here at
the first request). What it lacked, and the gateway added on top of it before: caps on a
request's head (below), JSON errors, and the extensions of gateway.http.asgi (disconnect hook,
pipe, whole body).
The caps on a request's head and the protocol's own answers: gateway.h1.refuse.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import httptools

from gateway.errors import RequestInvalid
from gateway.h1.cycle import Cycle, Pipe, address, request_scope
from gateway.h1.refuse import (
    HeadTooLarge,
    connection_limit_reached,
    head_timed_out,
    refusal,
    refuse,
    refuse_too_large,
)
from gateway.h1.upgrade import declared_length, upgrade_body
from gateway.http.asgi import BODY, DISCONNECT_HOOK, PIPE
from gateway.runtime import log

App = Callable[..., Any]


class H1(asyncio.Protocol):
    """Set ``head_limit``, ``max_header_bytes`` and ``head_timeout_s`` on a subclass
    (gateway.h1.capped): uvicorn builds the protocol itself, with its four arguments."""

    head_limit: ClassVar[int] = 0
    max_header_bytes: ClassVar[int] = 0  # what the 431 names: the configured limit
    head_timeout_s: ClassVar[float] = 0.0
    # The server's default headers (Date, refreshed each second by uvicorn), joined: shared by
    # the worker's connections, rejoined when uvicorn replaces the list.
    _defaults_of: ClassVar[list[tuple[bytes, bytes]] | None] = None
    _defaults: ClassVar[bytes] = b""
    default_lines: ClassVar[int] = 0

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state  # uvicorn's: connections and tasks, for its graceful stop
        self.app_state = app_state
        self.limit: int | None = config.limit_concurrency
        self.keepalive_s: float = config.timeout_keep_alive
        self.root_path: str = config.root_path
        self.parser = self._new_parser()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._scheme = "http"
        self._addressed = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.on_writable: Callable[[], None] | None = None  # a Pipe's, while the buffer is full
        self.read_paused = False
        self.lost = False
        self._on_lost: Callable[[], None] | None = None  # the running request's hook
        self._extensions = {
            DISCONNECT_HOOK: self._disconnect_hook,
            PIPE: self._pipe,
            BODY: self._whole_body,
        }
        self.cycle: Cycle | None = None  # the newest request's (its body is being read)
        self.running: Cycle | None = None  # the one whose app runs (pipelined: in turn)
        self._queued: deque[tuple[Cycle, App]] = deque()
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_head = False  # between a request's first byte and its head's end
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False
        self._head_bytes = 0  # URL and complete headers, as the parser hands them over
        self._raw_head = 0  # bytes read while a head was unfinished
        self._began_in_read = False  # the head began in the read being fed
        self._too_large = False
        self._why = ""  # what a callback refused, for the 400
        # An upgrade offer's body bytes still to come (Content-Length), read here: llhttp
        # stops at the head of a request that offers a protocol switch.
        self._upgrade_left: int | None = None
        self._write_paused_at = 0.0

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # A request with Connection: close answered, bytes after it are ignored, not an error.
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    # --- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.state.connections.add(self)
        self.transport = transport  # type: ignore[assignment]
        # Before any byte a connection is idle, as between requests: closed quietly after the
        # keep-alive time, never answered (a pool may open one ahead of its first request).
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.keepalive_s, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.lost = True
        for timer in (self._idle_timer, self.head_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self.head_timer = None
        self._queued.clear()
        for cycle in (self.running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.wake()
        self.resume_writing()
        self._tell_lost()
        # The parser and the extensions hold bound methods of this protocol: cut, so that a
        # closed connection is freed at once, not by the cyclic collector.
        self.parser = None  # type: ignore[assignment]
        self._extensions.clear()
        self.running = self.cycle = None

    def close_now(self) -> None:
        """Close from this side, and tell the running request at once: with a full send buffer
        uvloop reports connection_lost only once it drains, which a client that stopped reading
        never lets happen (the request would wait for its idle timeout)."""
        self.transport.close()
        self._tell_lost()

    def _tell_lost(self) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def _disconnect_hook(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self.lost:
            callback()
            return
        self._on_lost = callback

    def _idle_check(self) -> None:
        """One timer per connection: it fires keep-alive seconds after it was armed and closes
        the connection if no request has run since; otherwise it waits out the rest."""
        self._idle_timer = None
        now = self.loop.time()
        stalled = self.write_paused and now - self._write_paused_at >= self.keepalive_s
        if self.transport.is_closing() or stalled:
            # A close waits for the send buffer to drain, and a client that reads nothing
            # never lets it: after a keep-alive time of that, the connection is dropped, and
            # a response waiting to write learns it is gone.
            self.transport.abort()
            return
        busy = self.in_head or (self.running is not None and not self.running.response_complete)
        left = self.keepalive_s - (now - self._idle_since)
        if not busy and left <= 0:
            self.transport.close()
            self._idle_timer = self.loop.call_later(self.keepalive_s, self._idle_check)
            return
        self._idle_timer = self.loop.call_later(
            self.keepalive_s if busy else left, self._idle_check
        )

    def default_head(self) -> bytes:
        """The server's default header lines (uvicorn refreshes its list each second)."""
        defaults = self.state.default_headers
        if defaults is not H1._defaults_of:
            H1._defaults = b"".join(b"%b: %b\r\n" % (k, v) for k, v in defaults)
            H1.default_lines = len(defaults)
            H1._defaults_of = defaults
        return H1._defaults

    # --- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._idle_since = self.loop.time()  # bytes still coming: not idle
        if self._upgrade_left is not None:
            data = upgrade_body(self, data)
            if not data:
                return
        self._began_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No protocol switch here (no WebSocket, no h2c): the offer is declined by
            # answering in HTTP/1.1, as RFC 9110 §7.8 allows. llhttp stopped at the head; its
            # body is read here, and a new parser takes what follows it.
            self.parser = self._new_parser()
            rest = data[exc.args[0] :] if exc.args else b""
            if self._upgrade_left is None:
                self._upgrade_left = 0
            self.data_received(rest)
            return
        except httptools.HttpParserError as exc:
            if self._too_large:
                refuse_too_large(self)
            else:
                log.warning("refused a malformed HTTP/1.1 request from %s", self.client_text())
                why = self._why or f"malformed HTTP/1.1 request: {exc}"
                refuse(self, refusal(RequestInvalid(why)))
            return
        if not self.in_head or self.transport.is_closing():
            return
        # httptools keeps a header's bytes until the next one starts: one endless header is
        # never handed over, so what was read while the head is unfinished is counted too
        # (all of a read, except the one the head began in: memory stays within one read).
        if not self._began_in_read:
            self._raw_head += len(data)
            if self._raw_head > self.head_limit:
                refuse_too_large(self)
                return
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout_s, head_timed_out, self)

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_100 = False
        self._head_bytes = self._raw_head = 0
        self._began_in_read = self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # "k: v\r\n", as the app counts them
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.head_limit:
            self._too_large = True
            raise HeadTooLarge  # httptools stops; data_received answers 431

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        parser = self.parser
        if parser.should_upgrade():
            self._upgrade_left = declared_length(self)
        version = parser.get_http_version()
        cycle = Cycle(
            self,
            request_scope(self, parser.get_method().decode("ascii"), version),
            version != "1.0" and parser.should_keep_alive(),
            self._expect_100,
        )
        limit = self.limit
        app = self.app
        if limit is not None and (
            len(self.state.connections) >= limit or len(self.state.tasks) >= limit
        ):
            app = connection_limit_reached(limit)
            log.warning("connection limit reached: refused a request from %s", self.client_text())
        self.cycle = cycle
        if self.running is None or self.running.response_complete:
            self._start(cycle, app)
        else:  # pipelined behind a response still going out: in turn
            self.pause_reading()
            self._queued.append((cycle, app))

    def _start(self, cycle: Cycle, app: App) -> None:
        self.running = cycle
        task = self.loop.create_task(cycle.run(app))
        task.add_done_callback(self.state.tasks.discard)
        self.state.tasks.add(task)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.feed(body):
            self.pause_reading()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if self._upgrade_left:  # its body is still to be read (_upgrade_body)
            return
        if cycle is not None and not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()

    def response_done(self, cycle: Cycle) -> None:
        """``cycle``'s response is sent: the next pipelined request's turn, or idle."""
        self.state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = self.loop.time()
        if self._queued:
            self._start(*self._queued.popleft())
        self.resume_reading()

    def client_text(self) -> str:
        if not self._addressed:
            address(self)
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    def shutdown(self) -> None:
        """uvicorn's graceful stop: an idle connection closes now, a busy one after its
        response (a held head leaves first)."""
        running = self.running
        if running is None or running.response_complete:
            if running is not None:
                running.flush_head()
            self.transport.close()
        else:
            running.keep_alive = False

    # --- flow control ----------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # Not while a pipelined request waits its turn: its body would pile up unread.
        if self.read_paused and not self._queued:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.on_writable is not None:
            self.on_writable()

    async def drain(self) -> None:
        if self._drained is None:
            self._drained = self.loop.create_future()
        await asyncio.shield(self._drained)

    # --- the pipe (gateway.http.asgi.PIPE) -------------------------------------------------
    def _pipe(self) -> Pipe | None:
        """A Pipe for the running response if it is framed chunked."""
        cycle = self.running
        if (
            cycle is None
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked
        ):
            return None
        return Pipe(self, cycle)

    def _whole_body(self) -> bytes | None:
        """gateway.http.asgi.BODY, for the request whose app runs."""
        return None if self.running is None else self.running.whole_body()
