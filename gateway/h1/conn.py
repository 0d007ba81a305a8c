"""The gateway's HTTP/1.1 protocol, on httptools (llhttp): the uvicorn engine's (uvicorn's
server builds it as ``http=``: sockets, workers, TLS, lifespan, graceful stop) and the ops
listener's (gateway.http.ops). Requests go to the ASGI app through gateway.h1.cycle.

Why not uvicorn's HttpToolsProtocol: bench/floor_proxy.py's proxy costs a little less CPU on
this one (0.99x and 0.94x at c = 16, 0.93x at c = 1: bench/results/round5/h1_floor*.md), and
what the gateway adds (head caps, JSON refusals, the extensions) reaches into no internals.

Head caps and own answers: gateway.h1.refuse; upgrade offers: gateway.h1.upgrade; the scope:
gateway.h1.scope; flow control and the keep-alive timer: gateway.h1.flow; room made past
server.max_connections: gateway.h1.reclaim.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import httptools

from gateway.defaults import LINGER_S
from gateway.h1 import refuse
from gateway.h1.cycle import Cycle
from gateway.h1.flow import Flow
from gateway.h1.reclaim import Reclaimer
from gateway.h1.refuse import Refused
from gateway.h1.scope import Addresses, addresses, check_framing, request_scope
from gateway.h1.upgrade import declared_length, feed_body
from gateway.http.asgi import BODY, DISCONNECT_HOOK, PIPE, ClientPipe
from gateway.logs import repeating
from gateway.runtime import log

App = Callable[..., Any]
_OWS = (b" ", b"\t")


class H1(Flow, asyncio.Protocol):
    """Set ``head_limit``, ``max_header_bytes``, ``head_timeout_s`` and ``raw_body_limit`` on a
    subclass (gateway.h1.capped): its server builds the protocol itself, with its four arguments."""

    # uvicorn offers its class's ALPN list on TLS: README (and strict clients) expect http/1.1.
    alpn_protocols: ClassVar[list[str]] = ["http/1.1"]
    head_limit: ClassVar[int] = 0
    max_header_bytes: ClassVar[int] = 0  # what the 431 names: the configured limit
    head_timeout_s: ClassVar[float] = 0.0
    raw_body_limit: ClassVar[int] = 0  # a body's bytes as read: its data and its framing
    # The server's default headers (Date, each second), joined, shared, rejoined when replaced.
    _defaults_of: ClassVar[list[tuple[bytes, bytes]] | None] = None
    _defaults: ClassVar[bytes] = b""
    default_lines: ClassVar[int] = 0
    reclaimer: ClassVar[Reclaimer] = Reclaimer()  # capped() gives each server its own

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
        self._where: Addresses | None = None  # at the first request (gateway.h1.scope)
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.on_writable: Callable[[], None] | None = None  # a Pipe's, while the buffer is full
        self.read_paused = False
        # Answered, the request's body still coming (Cycle._linger), or a later request refused
        # and waiting for the answers before it: what still comes is dropped unparsed.
        self.lingering = False
        self.lost = False
        self._on_lost: Callable[[], None] | None = None  # the running request's hook
        self._extensions: dict[str, object] = {
            DISCONNECT_HOOK: self._disconnect_hook,
            PIPE: self._pipe,
            BODY: self._whole_body,
        }
        self.cycle: Cycle | None = None  # the newest request's (its body is being read)
        self.running: Cycle | None = None  # the one whose app runs (pipelined: in turn)
        self._queued: deque[tuple[Cycle, App]] = deque()
        self.idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_head = False  # between a request's first byte and its head's end
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = self._framing = False  # _framing: a request check_framing must see
        self._hosts = 0
        self._head_bytes = 0  # URL and complete headers, as the parser hands them over
        self._raw = 0  # bytes read while a head was unfinished, then while its body is read
        self._began_in_read = False  # the head began in the read being fed
        # An upgrade offer's body bytes still to come (gateway.h1.upgrade)
        self._upgrade_left: int | None = None
        self._write_paused_at = 0.0
        self._pending_mark = -1
        self._closing_seen = False  # the idle timer found the transport closing (draining)
        self._refusal: Refused | None = None  # a later request's, answered after those before
        self._good_host: bytes | None = None  # the last Host check_framing took, unchanged since
        self._host = b""  # the request's Host, as on_header saw it

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # A request with Connection: close answered, bytes after it are ignored, not an error.
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    # --- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.state.connections.add(self)
        self.transport = transport  # type: ignore[assignment]
        self.reclaimer.arrived(self, len(self.state.connections), self.limit)  # idle, for now
        # Before any byte a connection is idle, as between requests: closed quietly after the
        # keep-alive time, never answered (a pool may open one ahead of its first request).
        self.idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.keepalive_s, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.reclaimer.gone(self)
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
        # The parser and extensions hold this protocol's bound methods: cut, freed at once.
        self.parser = None  # type: ignore[assignment]
        self._extensions.clear()
        self.running = self.cycle = None

    def default_head(self) -> bytes:
        """The server's default header lines (uvicorn refreshes its list each second)."""
        defaults, cls = self.state.default_headers, type(self)  # per server (capped)
        if defaults is not cls._defaults_of:
            cls._defaults = b"".join(b"%b: %b\r\n" % (k, v) for k, v in defaults)
            cls.default_lines = len(defaults)
            cls._defaults_of = defaults
        return cls._defaults

    # --- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.lingering:  # the rest of a request already answered: dropped, unparsed
            return
        if self._upgrade_left is not None:
            left, data, pause = feed_body(self.cycle, self._upgrade_left, data)
            self._upgrade_left = left or None
            if pause:
                self.pause_reading()
            if left or not data:
                return
        self._began_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The offer is declined (gateway.h1.upgrade): llhttp stopped at the head; its
            # body is read by its length, and a new parser takes what follows it.
            self.parser = self._new_parser()
            rest = data[exc.args[0] :] if exc.args else b""
            if self._upgrade_left is None:
                self._upgrade_left = 0
            self.data_received(rest)
            return
        except httptools.HttpParserError as exc:
            stop = exc.__context__  # what a callback raised, if one did
            if not isinstance(stop, Refused):
                stop = refuse.malformed(f"malformed HTTP/1.1 request: {exc}")
            self._refuse(stop)
            return
        if self.transport.is_closing():
            return
        if not self.in_head:  # a body's chunk sizes, extensions and trailers reach no callback:
            self._raw += len(data)  # a chunk extension with no end was read until the body's
            cycle = self.cycle  # deadline (tens of GB, in a one-off run): its bytes as read count
            if self._raw > self.raw_body_limit and cycle is not None and cycle.more_body:
                self._refuse(refuse.framing_too_large(self.raw_body_limit))
            return
        # httptools keeps a header's bytes until the next one starts: one endless header is
        # never handed over, so what was read while the head is unfinished is counted too
        # (all of a read, except the one the head began in: memory stays within one read).
        if not self._began_in_read:
            self._raw += len(data)
            if self._raw > self.head_limit:
                self._refuse(refuse.too_large(self.head_limit, self.max_header_bytes))
                return
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        # Busy, none to close for room; idle from here, not from any read: CRLFs, which begin
        # no request, kept a connection open and first among the idle, stopping every reclaim.
        self.reclaimer.conns.pop(self, None)
        self.idle_since = self.loop.time()
        self._url = b""
        self._headers = []
        self._expect_100 = self._framing = False
        self._hosts = 0
        self._head_bytes = self._raw = 0
        self._began_in_read = self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # "k: v\r\n", as the app counts them
        if not self.in_head:  # a chunked body's trailer field: not a header (RFC 9110 6.5.1)
            return
        name = name.lower()
        if value[-1:] in _OWS:  # whitespace after a value is not in it (RFC 9112 5)
            value = value.rstrip(b" \t")
        if name == b"host":
            self._hosts += 1
            self._host = value
            self._framing |= value != self._good_host  # not the last one checked: check it
        elif name == b"transfer-encoding":
            self._framing = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.head_limit:
            raise refuse.too_large(self.head_limit, self.max_header_bytes)  # httptools stops

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        parser = self.parser
        if parser.should_upgrade():
            self._upgrade_left = declared_length(self._headers)
        version = parser.get_http_version()
        # The connection's usual request (its Host checked before, no transfer coding) is
        # not checked again: a call per request fewer (bench/calls.py counts them).
        if self._framing or self._hosts != 1 or version != "1.1":
            check_framing(version, self._headers)
            self._good_host = self._host if self._hosts == 1 else None
        cycle = Cycle(
            self,
            request_scope(
                parser.get_method().decode("ascii"),
                version,
                self._url,
                self._headers,
                self.addresses(),
                self.root_path,
                self.app_state,
                self._extensions,
            ),
            # HTTP/1.0 keeps its connection only when it asks (Connection: keep-alive), as
            # nginx's does; llhttp's answer says that for either version.
            parser.should_keep_alive(),
            self._expect_100 and version == "1.1",  # no 1xx to HTTP/1.0 (RFC 9110 15.2)
        )
        limit, app = self.limit, self.app
        # The asker is among the open ones, its request not yet a task; idle ones make room.
        conns, tasks = len(self.state.connections), len(self.state.tasks)
        if (
            limit is not None
            and (conns > limit or tasks >= limit)
            and self.reclaimer.full(conns, tasks, limit)
        ):
            app = refuse.connection_limit_reached(limit, app)
            line, extra = "connection limit reached: refused a request from %s", repeating("cap")
            log.warning(line, self.client_text(), extra=extra)
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
        if self._upgrade_left:  # its body is still to be read (gateway.h1.upgrade)
            return
        if cycle is not None and not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()

    def response_done(self, cycle: Cycle) -> None:
        """``cycle``'s response is sent: the next pipelined request's turn, or idle."""
        self.state.total_requests += 1
        if self.transport.is_closing():
            return
        self.idle_since = self.loop.time()
        if self._queued:
            self._start(*self._queued.popleft())
        elif self._refusal is not None:  # every response before it is out: now its answer
            stop, self._refusal = self._refusal, None
            self.transport.write(refuse.answered(self.app, stop.err))
            # A FIN after it, not a close that the client's unread bytes turn into an RST,
            # which can wipe every answer before it from the client's buffers (Cycle._linger).
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
            return
        elif not (self.in_head or self.lingering):  # idle again: no next request, no linger
            self.reclaimer.conns[self] = None
        self.resume_reading()

    def addresses(self) -> Addresses:
        self._where = self._where or addresses(self.transport)
        return self._where

    def client_text(self) -> str:
        return self.addresses().client_text()

    def shutdown(self) -> None:
        """uvicorn's graceful stop: idle closes now, busy after its response (a head: first)."""
        running = self.running
        if running is None or running.response_complete:
            if running is not None:
                running.flush_head()
            self.transport.close()
        else:
            running.keep_alive = False

    # --- the extensions (gateway.http.asgi) ------------------------------------------------
    def _pipe(self) -> ClientPipe | None:  # typed so: mypy checks that a Pipe is one
        return None if self.running is None else self.running.pipe()

    def _whole_body(self) -> bytes | None:
        return None if self.running is None else self.running.whole_body()

    # --- refusals (gateway.h1.refuse) ------------------------------------------------------
    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.in_head or self.transport.is_closing():
            return
        if self.read_paused:  # waiting for a pipelined response: late on this side
            self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            return
        self._refuse(refuse.timed_out(self.head_timeout_s))

    def _refuse(self, stop: Refused) -> None:
        """Answer ``stop`` and close; a request's own bad body: the app's to answer
        (Cycle.refuse); a later request's: answered after those before it."""
        log.warning("%s from %s", stop.line, self.client_text(), extra=repeating("refused"))
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        running = self.running
        if running is not None and not running.response_complete:
            if running.refuse(stop.err):
                return  # its own body: the app answers it
            if running.more_body:  # its own body, with its answer going out: cut
                self.close_now()
                return
            newest = self.cycle
            if newest is not running and newest is not None and newest.refuse(stop.err):
                return  # a queued request's own body: the app answers it in turn
            # A later request's head: answered after every response before it (RFC 9112 9.3.2).
            self.lingering, self._refusal = True, stop
            return
        if running is not None:
            running.flush_head()  # a response still held goes first
        self.transport.write(refuse.answered(self.app, stop.err))
        self.transport.close()
