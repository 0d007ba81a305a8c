"""The upstream client: keep-alive connections pooled per origin (scheme, host, port), one
client per process for the proxy, the prober and the load poller alike, so probes also keep a
connection to each upstream warm."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from gateway.client.conn import Conn
from gateway.client.failures import ConnectFailed, ConnectionLost, ConnectTimeout, Reach
from gateway.client.response import Response
from gateway.routing.members import default_port, split_member

# Idle connections are kept 60 s, so a quiet backend still finds a warm one (probes every 2 s
# also keep one alive); older ones are closed when next looked at, or by the sweep. Longer
# than most servers' own idle timeout (uvicorn's, under vLLM and SGLang, is 5 s): a shorter
# one here would cost a gateway-to-gateway leg across an ocean a new handshake (one or two
# round trips, 100-300 ms) after every few seconds of quiet. The race that leaves (a request
# written on a connection the server is closing as idle) is retried once on a new connection
# in Client.request, which costs a local connect only when it happens.
POOL_KEEPALIVE_S: Final = 60.0
# A pooled connection lost this soon after the request was written, before any byte of an
# answer, was closed by its server as idle while the request was on its way (the close
# arrives within a round trip: 300 ms across an ocean): the request is sent once more. Later,
# the upstream failed while it may have been running the request: not retried.
STALE_RETRY_WINDOW_S: Final = 1.0
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


@dataclass(slots=True)
class Origin:
    """Where one base URL's requests go, and its idle connections (last used last)."""

    host: str  # dialled: the URL's host, or a discovered member's address
    port: int
    host_header: bytes
    tls: ssl.SSLContext | None
    server_name: str  # what TLS sends (SNI) and checks the certificate for: the URL's host
    auth: bytes | None  # an Authorization header from user:password in the URL, as curl does
    idle: list[Conn] = field(default_factory=list)


class Client:
    """Requests over pooled HTTP/1.1 connections. No overall cap on the pool: the gateway's
    own concurrency (server.max_streams) is the bound."""

    def __init__(self, connect_timeout_s: float, keepalive_s: float = POOL_KEEPALIVE_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        reach: Reach | None = None,
        timeout_s: float | None = None,
        until_body: bool = False,
    ) -> Response:
        """Send a request and wait for the response's head. ``url`` is absolute and already
        encoded (the client's own path, passed on as it came). ``reach`` (if given) is marked
        once a connection is held: from then on the request may have reached the upstream.
        ``timeout_s`` bounds the wait for the body's first bytes, the connect included (here
        for the head, then in ``Response.wait_body``): TimeoutError past it. ``until_body``:
        a 2xx head is returned only with its body's first bytes (or its end), so the whole
        wait, and its TimeoutError, is here: a stream's head and first event come apart, and
        the caller that waits for both wakes once.

        A pooled connection lost before any byte of the answer (closed or reset by the
        upstream) is the keep-alive race: the upstream closed it as idle while the request
        was on its way, and never ran it. The request goes once more, on a new connection,
        within what is left of ``timeout_s``. Go's net/http does so for idempotent requests;
        a POST too here, as the proxy would otherwise fail it over and send it again anyway
        (elsewhere, with a health failure recorded). Only within STALE_RETRY_WINDOW_S of the
        write (a close already on its way arrives within a round trip; one later is the
        upstream dying mid-work, which may have run it), and not after a byte of an answer,
        nor on a new connection, nor on a timeout: those are the upstream's own failures."""
        split = url.find("/", url.find("//") + 2)
        base, target = (url, "/") if split < 0 else (url[:split], url[split:])
        origin = self._origins.get(base) or self._origin(base)
        # Built first: a head that cannot be sent (a line break in it) costs no connection and
        # reaches nobody.
        head = self._head(method, target, origin, headers, body)
        conn = self._take(origin)
        pooled = conn is not None
        t0 = 0.0 if conn is None else conn.loop.time()  # the write's time, near enough
        if conn is None:
            conn, timeout_s = await self._connect_within(origin, timeout_s)
        while True:
            if reach is not None:
                reach.connected = True
            try:
                conn.start(head, body, method == "HEAD", timeout_s, until_body)
                await conn.head()
                return Response(self, origin, conn)
            except BaseException as exc:
                conn.close()
                stale = pooled and isinstance(exc, ConnectionLost) and not conn.heard
                if not (stale and conn.loop.time() - t0 <= STALE_RETRY_WINDOW_S):
                    raise
            # The stale connection's request ran nowhere: until a new connection is held,
            # it has reached nobody (a connect that times out may fail over, as any other).
            pooled = False
            if reach is not None:
                reach.connected = False
            if timeout_s is not None:  # the retry waits what is left, not a second budget
                timeout_s -= conn.loop.time() - t0
                if timeout_s <= 0:
                    raise TimeoutError
            conn, timeout_s = await self._connect_within(origin, timeout_s)

    def put(self, origin: Origin, conn: Conn) -> None:
        """A connection whose response was read whole goes back to the pool; any other closes."""
        if self._closed or not conn.reusable():
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        conn.idle_in = origin.idle
        origin.idle.append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_later(self.keepalive_s, self._sweep_idle, conn.loop)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.idle_in = None
                conn.close()
            origin.idle.clear()

    def idle_count(self) -> int:
        return sum(len(o.idle) for o in self._origins.values())

    @staticmethod
    def _head(
        method: str,
        target: str,
        origin: Origin,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> bytes:
        if origin.auth is not None:  # the URL's credentials, not the client's
            headers = [h for h in headers if h[0].lower() != b"authorization"]
        lines = [f"{method} {target} HTTP/1.1\r\nHost: ".encode("latin-1"), origin.host_header]
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        breaks = 3 + len(headers)  # the request line's, one per header, the blank line's two
        if origin.auth is not None:
            lines += (b"\r\nAuthorization: ", origin.auth)
            breaks += 1
        if body or method in _BODY_METHODS:
            lines.append(b"\r\nContent-Length: %d" % len(body))
            breaks += 1
        lines.append(b"\r\n\r\n")
        head = b"".join(lines)
        # One line per header and no more: a CR or LF inside a name, a value or the target
        # would start a header (or a request) of its own at the upstream.
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
            raise ValueError("a line break inside the request target or a header")
        return head

    def _origin(self, base: str) -> Origin:
        # A discovered member's URL also names its upstream (routing.members): Host, TLS and
        # credentials come from the upstream's URL as they would for the upstream itself, and
        # only the connect goes to the member's address.
        named, address = split_member(base)
        parts = urlsplit(named)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        tls = None
        if parts.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        host, port = address or (parts.hostname, default_port(named))
        host_header = parts.netloc.rpartition("@")[2].encode("idna")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = b"Basic " + base64.b64encode(pair.encode())
        origin = Origin(host, port, host_header, tls, parts.hostname, auth)
        self._origins[base] = origin
        return origin

    def _take(self, origin: Origin) -> Conn | None:
        idle = origin.idle
        while idle:
            conn = idle.pop()
            conn.idle_in = None
            # Closed meanwhile (lost, or closing), or idle too long: not for a request.
            if not conn.reusable() or conn.loop.time() - conn.idle_since > self.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect_within(
        self, origin: Origin, timeout_s: float | None
    ) -> tuple[Conn, float | None]:
        """A new connection, and what is left of ``timeout_s`` once it is made."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn = await self._connect(loop, origin, timeout_s)
        if timeout_s is not None:
            timeout_s -= loop.time() - t0
            if timeout_s <= 0:  # the connect took it all: send nothing that would be cut
                conn.close()
                raise TimeoutError
        return conn, timeout_s

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, origin: Origin, timeout_s: float | None
    ) -> Conn:
        conn = Conn(loop)
        limit = (
            self.connect_timeout_s if timeout_s is None else min(timeout_s, self.connect_timeout_s)
        )
        try:
            async with asyncio.timeout(limit):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=origin.tls,
                    server_hostname=origin.server_name if origin.tls else None,
                )
        except TimeoutError:
            conn.close()
            raise ConnectTimeout(f"{origin.host}:{origin.port}: connect timed out") from None
        except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
            raise ConnectFailed(f"{origin.host}:{origin.port}", exc) from None
        return conn

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle past keepalive_s; run again while any are left."""
        self._sweep = None
        cutoff = loop.time() - self.keepalive_s
        left = False
        for origin in self._origins.values():
            for conn in [c for c in origin.idle if c.idle_since <= cutoff]:
                origin.idle.remove(conn)
                conn.idle_in = None
                conn.close()
            left = left or bool(origin.idle)
        if left:
            self._sweep = loop.call_later(self.keepalive_s, self._sweep_idle, loop)
