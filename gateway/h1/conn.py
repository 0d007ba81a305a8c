"""The uvicorn engine's HTTP/1.1 protocol: the gateway's own, on httptools (llhttp), run by
uvicorn's server (sockets, workers, TLS, lifespan, graceful stop), which builds it as
``http=``. Requests go to the ASGI app through gateway.h1.cycle.

Why not uvicorn's HttpToolsProtocol: bench/floor_proxy.py's proxy cost 0.21 ms of CPU per
request on it at c = 1 and 0.107 ms at c = 16, against 0.117 and 0.084 ms on a protocol that
does only what a request needs (bench/results/h1_floor.md). What it did per request that this
one does not: an asyncio.Event, a keep-alive timer armed and cancelled (here one timer per
connection checks the time of the last answer when it fires), the default headers joined, two
regular expressions per response header; per connection, four address look-ups up front (here
at the first request). What it lacked, and the gateway added on top of it before: caps on a
request's head (below), JSON errors, the disconnect hook and the pipe (gateway.http.asgi).

httptools keeps whatever URL and headers a client sends until the head ends: past
``head_limit`` bytes of URL and headers this protocol answers 431, in the API's JSON error
shape, and closes (under the cap the app's own ``server.max_header_bytes`` check decides: the
cap only bounds what one connection can hold before it runs). Past ``head_timeout_s`` from a
request's first byte with the head unfinished (slowloris), a JSON 408; the timer is armed only
when a read leaves a head unfinished, which almost no request's does. A malformed request gets
a JSON 400 and one log line. Past ``limit_concurrency`` (server.max_connections) a request gets
the gateway's JSON 503 with Retry-After and its connection closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import unquote

import httptools

from gateway.errors import HeadersTooLarge, HeadTimeout, RequestInvalid
from gateway.h1.cycle import Cycle
from gateway.h1.refuse import HeadTooLarge, connection_limit_reached, refusal
from gateway.http.asgi import DISCONNECT_HOOK, PIPE, Scope
from gateway.runtime import log

ASGI_VERSIONS = {"version": "3.0", "spec_version": "2.3"}
App = Callable[..., Any]


def _address(transport: asyncio.BaseTransport, which: str) -> tuple[str, int] | None:
    info = transport.get_extra_info(which)
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) else None


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
        self.parser = httptools.HttpRequestParser(self)
        # A request with Connection: close answered, bytes after it are ignored, not an error.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._scheme = "http"
        self._addressed = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.on_writable: Callable[[], None] | None = None  # a Pipe's, while the buffer is full
        self._read_paused = False
        self.lost = False
        self._on_lost: Callable[[], None] | None = None  # the running request's hook
        self._extensions = {DISCONNECT_HOOK: self._disconnect_hook, PIPE: self._pipe}
        self.cycle: Cycle | None = None  # the newest request's (its body is being read)
        self.running: Cycle | None = None  # the one whose app runs (pipelined: in turn)
        self._queued: deque[tuple[Cycle, App]] = deque()
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # between a request's first byte and its head's end
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False
        self._head_bytes = 0  # URL and complete headers, as the parser hands them over
        self._raw_head = 0  # bytes read while a head was unfinished
        self._began_in_read = False  # the head began in the read being fed
        self._too_large = False

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
        for timer in (self._idle_timer, self._head_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._head_timer = None
        self._queued.clear()
        for cycle in (self.running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.wake()
        self.resume_writing()
        self._tell_lost()

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
        if self.transport.is_closing():
            return
        busy = self._in_head or (self.running is not None and not self.running.response_complete)
        left = self.keepalive_s - (self.loop.time() - self._idle_since)
        if not busy and left <= 0:
            self.transport.close()
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
        self._began_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here (no WebSocket): the request is answered as any other,
            # and the connection closed after it, since what follows its head is not HTTP.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self.pause_reading()
            return
        except httptools.HttpParserError as exc:
            if self._too_large:
                self._refuse_too_large()
            else:
                log.warning("refused a malformed HTTP/1.1 request from %s", self.client_text())
                self._refuse(refusal(RequestInvalid(f"malformed HTTP/1.1 request: {exc}")))
            return
        if not self._in_head or self.transport.is_closing():
            return
        # httptools keeps a header's bytes until the next one starts: one endless header is
        # never handed over, so what was read while the head is unfinished is counted too
        # (all of a read, except the one the head began in: memory stays within one read).
        if not self._began_in_read:
            self._raw_head += len(data)
            if self._raw_head > self.head_limit:
                self._refuse_too_large()
                return
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_100 = False
        self._head_bytes = self._raw_head = 0
        self._began_in_read = self._in_head = True

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
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parser = self.parser
        version = parser.get_http_version()
        cycle = Cycle(
            self,
            self._scope(parser.get_method().decode("ascii"), version),
            version != "1.0" and parser.should_keep_alive(),
            self._expect_100,
        )
        limit = self.limit
        app = self.app
        if limit is not None and (
            len(self.state.connections) >= limit or len(self.state.tasks) >= limit
        ):
            app = connection_limit_reached(limit)
        self.cycle = cycle
        if self.running is None or self.running.response_complete:
            self._start(cycle, app)
        else:  # pipelined behind a response still going out: in turn
            self.pause_reading()
            self._queued.append((cycle, app))

    def _address(self) -> None:
        """The connection's addresses, at its first request (or refusal), not up front: a
        connection that never sends one costs no look-ups."""
        self._addressed = True
        transport = self.transport
        self.client = _address(transport, "peername")
        self._server = _address(transport, "sockname")
        self._scheme = "https" if transport.get_extra_info("sslcontext") else "http"

    def _scope(self, method: str, version: str) -> Scope:
        if not self._addressed:
            self._address()
        url = httptools.parse_url(self._url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        return {
            "type": "http",
            "asgi": ASGI_VERSIONS,
            "http_version": version,
            "server": self._server,
            "client": self.client,
            "scheme": self._scheme,
            "root_path": self.root_path,
            "method": method,
            "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": url.query or b"",
            "headers": self._headers,
            "state": self.app_state.copy(),
            "extensions": self._extensions,
        }

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
        if cycle is not None and not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()

    def response_done(self, cycle: Cycle) -> None:
        """``cycle``'s response is sent: the next pipelined request's turn, or idle."""
        self.state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = self.loop.time()
        self.resume_reading()
        if self._queued:
            self._start(*self._queued.popleft())

    def client_text(self) -> str:
        if not self._addressed:
            self._address()
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
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

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

    # --- refusals --------------------------------------------------------------------------
    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        log.info(
            "request head not complete in %g s from %s: closed",
            self.head_timeout_s,
            self.client_text(),
        )
        self._refuse(
            refusal(
                HeadTimeout(
                    f"the request line and headers did not arrive within {self.head_timeout_s:g} s "
                    "(server.head_timeout_s)"
                )
            )
        )

    def _refuse_too_large(self) -> None:
        log.warning(
            "refused a request head over %d bytes from %s", self.head_limit, self.client_text()
        )
        self._refuse(
            refusal(
                HeadersTooLarge(  # in the app's words (gateway.http.intake.check_headers)
                    f"request headers are over this gateway's limit of {self.max_header_bytes} "
                    "bytes (server.max_header_bytes); send fewer or shorter headers"
                )
            )
        )

    def _refuse(self, answer: bytes) -> None:
        """Send ``answer`` (a whole response, Connection: close) and close: nothing more is
        read. Behind a response still going out it would land inside that response: the
        connection is closed instead, and the request running on it told at once."""
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        running = self.running
        if running is not None and not running.response_complete:
            self.close_now()
            return
        if running is not None:
            running.flush_head()  # a response still held goes first
        self.transport.write(answer)
        self.transport.close()


class Pipe:
    """gateway.http.asgi.ClientPipe on this protocol: chunked framing, written through the
    cycle (a head still held goes first)."""

    __slots__ = ("_conn", "_cycle")

    def __init__(self, conn: H1, cycle: Cycle) -> None:
        self._conn = conn
        self._cycle = cycle

    def write(self, chunk: bytes) -> bool:
        if chunk:
            self._cycle.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return not self._conn.write_paused

    def gone(self) -> bool:
        # uvloop raises on a write to a closed transport; the request's task learns of the
        # loss a loop turn later (the disconnect hook), while upstream reads may still come.
        return self._conn.lost or self._conn.transport.is_closing()

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        self._conn.on_writable = callback
