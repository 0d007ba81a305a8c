"""An upstream's answer as the proxy, the prober and the load poller read it: its status and
headers, then its body as it comes, read whole, handed to a sink, lent to gateway._splice or
dropped; the connection back to its pool (gateway.client.pool) or closed at the end."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from gateway.client.conn import Conn
from gateway.client.discard import drain
from gateway.client.failures import BadResponse, status_detail
from gateway.defaults import REFUSAL_BODY_MAX_BYTES

# A body read whole (a health answer, a /metrics or /load scrape) larger than this is refused:
# vLLM's /metrics is a few hundred KiB; nothing the gateway reads whole needs more.
MAX_READ_BYTES: Final = 16 * 1024 * 1024


class Pool(Protocol):
    """What an answer hands its connection back to (gateway.client.pool's Client), under
    ``origin``, the pool's own key: this module imports no pool."""

    def put(self, origin: Any, conn: Conn, /) -> None: ...


class Response:
    """An upstream's answer: the status and headers, then the body as it comes. ``release``
    hands the connection back to the pool once the body was read to its end; ``close`` drops
    it (how the upstream learns nobody is listening any more)."""

    __slots__ = ("_client", "_conn", "_origin", "raw_headers", "status")

    def __init__(self, client: Pool, origin: object, conn: Conn) -> None:
        self._client = client
        self._origin = origin
        self._conn: Conn | None = conn
        self.status = conn.status
        # The connection forgets them: a stream may let them go once its head is sent.
        self.raw_headers, conn.headers = conn.headers, []

    def header(self, name: bytes) -> str | None:
        """The first header named ``name`` (lower case, as ``raw_headers`` are), or None."""
        for n, v in self.raw_headers:
            if n == name:
                return v.decode("latin-1")
        return None

    async def wait_body(self) -> None:
        """Wait until some of the body has come (or all of it: an empty one), reading none."""
        assert self._conn is not None, "read after release"
        await self._conn.wait_body()

    async def readany(self) -> bytes:
        """The body that has come since the last call, waiting for some; b"" at its end."""
        assert self._conn is not None, "read after release"
        return await self._conn.read()

    def peek(self) -> bytes:
        """The first piece of the body that came (b"" while none has), leaving it unread."""
        conn = self._conn
        return conn.chunks[0] if conn is not None and conn.chunks else b""

    def reader(self) -> Callable[[], Awaitable[bytes]]:
        """``readany`` bound to the connection: a stream's loop calls it once per chunk, and
        this saves a coroutine frame each time. Not to be called after release or close."""
        assert self._conn is not None, "read after release"
        return self._conn.read

    async def drain_to(self, sink: Callable[[bytes], bool]) -> None:
        """Hand the rest of the body to ``sink`` as it arrives, from the connection's own read
        callback: no task wake-up and no ``readany`` per chunk. ``sink`` returning False (its
        taker is full) pauses reading until ``resume()``. Returns at the body's end."""
        assert self._conn is not None, "read after release"
        await self._conn.drain_to(sink)

    def resume(self) -> None:
        if self._conn is not None:
            self._conn.resume()

    # -- the body's rest carried by gateway._splice (gateway.http.splice) ----------------

    def splicable(self) -> bool:
        """A chunked body, over TCP or TLS: what gateway._splice can carry (it reads what the
        transport decrypted, as this connection's protocol would)."""
        return self._conn is not None and self._conn.splicable()

    def hand_off(self) -> None:
        """Stop at a chunk boundary, now or (drain_to returning there) at the next one, the
        connection's reading paused (``handed_off()``), for ``lend()``'s transport to carry the
        rest."""
        if self._conn is not None:
            self._conn.hand_off()

    def handed_off(self) -> bool:
        return self._conn is not None and self._conn.handed_off

    def lend(self) -> asyncio.Transport | None:
        """The connection's transport, once handed off, for gateway._splice to read as its
        protocol (then given back by ``lent_end``, ``lent_failed`` or ``lent_back``); None
        where it cannot be lent: ``drain_to`` may then go on with the rest."""
        return None if self._conn is None else self._conn.lend()

    def lent_end(self, extra: bool) -> None:
        if self._conn is not None:
            self._conn.lent_end(extra)

    def lent_back(self) -> None:
        if self._conn is not None:
            self._conn.lent_back()

    def lent_failed(self, error: BaseException) -> None:
        if self._conn is not None:
            self._conn.lent_failed(error)

    async def read(self, limit: int = MAX_READ_BYTES) -> bytes:
        """The whole body (BadResponse past ``limit`` bytes), then the connection goes back to
        the pool; closed instead if the read failed or was cut short (a timeout, a cancel),
        which leaves the connection out of step."""
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await self.readany():
                size += len(chunk)
                if size > limit:
                    raise BadResponse(f"a body over {limit} bytes")
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self.release()
        return b"".join(parts)

    async def read_whole(self, limit: int) -> bytes | None:
        """The whole body where it is at most ``limit`` bytes, the connection kept (``release``
        as after any read to the end); else None, what was read left to read again."""
        assert self._conn is not None, "read after release"
        parts: list[bytes] = []
        size = 0
        while chunk := await self._conn.read():
            parts.append(chunk)
            size += len(chunk)
            if size > limit:  # read() took all there was: nothing unread is behind these
                self._conn.replace_unread(b"".join(parts))
                return None
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._conn is not None and self._conn.at_eof()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client.put(self._origin, conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def whole_body(self) -> bytes | None:
        """The body if all of it came (a short answer's, as a rule with its head), else None:
        nothing is waited for or taken."""
        conn = self._conn
        return b"".join(conn.chunks) if conn is not None and conn.complete else None

    def replace_whole(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Stand ``headers`` and ``body`` for the answer's own, which came whole
        (``whole_body``): the rest of the gateway reads them as if the upstream had sent them."""
        conn = self._conn
        assert conn is not None and conn.complete, "replaced before the body came whole"
        conn.replace_unread(body)
        self.raw_headers = headers

    def readable_body(self) -> bytes | None:
        """``whole_body`` where it is a few bytes, at most REFUSAL_BODY_MAX_BYTES, that are
        not compressed: an error's, to read its message (nothing is decoded here: a gzipped
        429 behind nginx's gzip_types read as a message of replacement characters)."""
        coding = self.header(b"content-encoding")
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            return None
        body = self.whole_body()
        return body if body is not None and len(body) <= REFUSAL_BODY_MAX_BYTES else None

    def refusal(self) -> str:
        """This answer as a refusal's failure names it (``status_detail``), with its body's
        message where it is readable."""
        return status_detail(self.status, self.readable_body())

    def discard(self) -> None:
        """Done with an answer nobody reads (a 429, 502 or 503 failed over from): its body is
        dropped and the connection pooled once it is in (gateway.client.discard), not closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            drain(conn, functools.partial(self._client.put, self._origin))
