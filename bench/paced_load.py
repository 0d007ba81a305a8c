"""Closed-loop load of paced SSE chat completions, for bench/overhead.py's streaming cells.

h2load cannot time these: its per-request log has the start and the end of each request only,
and its "time to 1st byte" is per connection (the first request's). Here ``conc`` workers each
keep one streaming request in flight, over HTTP/1.1 (one keep-alive connection per worker) or
h2c with prior knowledge (bench/paced_h2.py; 16 streams per connection, as bench/overhead.py
gives h2load), and every request is timed:
  TTFT   request sent -> the first event with content text (the role chunk, which the sim
         backend sends before its TTFT, does not count)
  total  request sent -> the end of the stream, which must close with ``data: [DONE]``.
Both clients are asyncio protocols with hand-written framing: an aiohttp client spent about
0.8 ms of CPU per 16-token stream, and the load CPU also runs the backend, so at c=128 the rig
would have set the latency instead of the proxy.
The run is warm-up then a window; ``marks`` is called at the window's two ends (where the
caller reads the proxy's CPU counters). Requests that started inside the window are the
latency samples; requests that completed inside it are what the window's CPU paid for.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from bench.paced_h2 import H2cConnection

# A delta with text in it; the role chunk's content is "" (json.dumps spacing, or none).
CONTENT = re.compile(rb'"content": ?"[^"]')
DONE = b"data: [DONE]\n\n"
H2_STREAMS_PER_CONN = 16
FAILURE_PAUSE_S = 0.01  # a target that refuses at once must not turn a worker into a busy loop


class Probe:
    """Watches one response body: when the first token arrived, and whether it ended right."""

    def __init__(self) -> None:
        self.sent = time.perf_counter()
        self.first = 0.0
        self.head = b""  # bytes before the first token (a token may straddle two reads)
        self.tail = b""

    def feed(self, data: bytes, now: float) -> None:
        if not self.first:
            self.head += data
            if CONTENT.search(self.head):
                self.first, self.head = now, b""
        self.tail = (self.tail + data)[-len(DONE) :]

    def sample(self, outcome: str) -> Sample:
        """outcome: "" when the transport says the response ended well, else why not."""
        why = outcome or ("" if self.first else "no content token")
        why = why or ("" if self.tail == DONE else "no [DONE] at the end")
        ttft = 0.0 if why else self.first - self.sent
        return Sample(self.sent, time.perf_counter(), ttft, why)


@dataclass
class Sample:
    sent: float
    ended: float
    ttft_s: float  # 0 when failed
    failure: str  # "" when the stream completed


@dataclass
class PacedResult:
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    started: int = 0  # requests sent inside the window
    completed_in_window: int = 0  # requests that ended, complete, inside the window
    # Complete streams, each counted by the share of its life inside the window. What the
    # window's CPU paid for: streams started together end together (the paced clock), so a
    # count of ends moves in steps of the concurrency as the window's edges fall between two
    # bursts, and one target can sit a step above another in every round (bench/ab.py).
    streams_in_window: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    window_s: float = 0.0


class H1Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; the body de-chunked."""

    def __init__(self, url: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.left = 0  # >0: chunk bytes to come; -1 size line; -2 CRLF after data; -3 last CRLF
        self.in_head = True
        self.chunked = True
        self.feed: Callable[[bytes, float], None] = lambda data, now: None
        self.done: asyncio.Future[str] | None = None

    async def connect(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    async def send(self, feed: Callable[[bytes, float], None]) -> str:
        if self.transport is None or self.transport.is_closing():
            return "connection closed"
        self.feed, self.in_head, self.buf = feed, True, b""
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(self.request)
        return await self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.in_head:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data, self.buf = self.buf[:end].lower(), self.buf[end + 4 :], b""
            self.in_head, self.left = False, -1
            self.chunked = b"transfer-encoding: chunked" in head
            if head[9:12] != b"200":
                self._finish(f"HTTP {head[9:12].decode(errors='replace')}")
                return
        if not self.chunked:  # the body ends when the connection does
            self.feed(data, now)
        elif self._dechunk(data, now):
            self._finish("")

    def _dechunk(self, data: bytes, now: float) -> bool:
        """Feeds the chunks' payload; True once the last chunk and its CRLF are in."""
        buf, pos = self.buf + data, 0
        while pos < len(buf):
            if self.left > 0:
                piece = buf[pos : pos + self.left]
                self.feed(piece, now)
                pos += len(piece)
                self.left -= len(piece)
                self.left = self.left or -2
            elif self.left in (-2, -3):
                if len(buf) - pos < 2:
                    break
                pos += 2
                if self.left == -3:  # no trailers: a response from these servers has none
                    self.buf = b""
                    return True
                self.left = -1
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                pos, self.left = eol + 2, size or -3
        self.buf = buf[pos:]
        return False

    def _finish(self, outcome: str) -> None:
        if outcome and self.transport is not None:
            self.transport.close()  # the rest of a failed response is not worth parsing
        if self.done is not None and not self.done.done():
            self.done.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_head or self.chunked:
            self._finish(f"connection lost ({type(exc).__name__})" if exc else "connection closed")
        else:
            self._finish("")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Connection = H1Connection | H2cConnection


async def _worker(
    conns: list[Connection],
    i: int,
    make: Callable[[], Connection],
    stop_at: float,
    timeout_s: float,
    out: list[Sample],
) -> None:
    """Keeps one request in flight on conns[i] (shared with other workers for h2c) until
    stop_at; a failed connection is replaced."""
    while time.perf_counter() < stop_at:
        conn, probe = conns[i], Probe()
        try:
            async with asyncio.timeout(timeout_s):
                out.append(probe.sample(await conn.send(probe.feed)))
        except TimeoutError:
            out.append(probe.sample("timeout"))
        if not out[-1].failure:
            continue
        await asyncio.sleep(FAILURE_PAUSE_S)
        if conns[i] is conn:  # the first worker to see it fail replaces it, the others follow
            conn.close()
            conns[i] = make()
            try:
                await conns[i].connect()
            except OSError as exc:
                out.append(Sample(probe.sent, time.perf_counter(), 0.0, type(exc).__name__))


async def _open(make: Callable[[], Connection]) -> Connection:
    conn = make()
    await conn.connect()
    return conn


async def run_paced(
    url: str,
    proto: str,
    conc: int,
    body: bytes,
    warmup_s: float,
    window_s: float,
    marks: Callable[[], None],
    timeout_s: float = 30.0,
) -> PacedResult:
    """``conc`` requests in flight for warmup_s + window_s; ``marks()`` runs at both ends of
    the window (it should be quick: it runs on the event loop)."""
    samples: list[Sample] = []
    bounds: list[float] = []
    make: Callable[[], Connection]
    if proto == "h1":
        make, n_conns = (lambda: H1Connection(url, body)), conc
    else:
        make, n_conns = (lambda: H2cConnection(url, body)), -(-conc // H2_STREAMS_PER_CONN)
    conns = [await _open(make) for _ in range(n_conns)]
    # h2c: worker w uses connection w % n_conns; a replaced connection serves the workers
    # that share the slot from their next request on.
    slots = [w % n_conns for w in range(conc)]

    async def mark_window() -> None:
        for at in (start + warmup_s, start + warmup_s + window_s):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            marks()
            bounds.append(time.perf_counter())

    start = time.perf_counter()
    stop_at = start + warmup_s + window_s
    try:
        await asyncio.gather(
            mark_window(),
            *(_worker(conns, s, make, stop_at, timeout_s, samples) for s in slots),
        )
    finally:
        for c in conns:
            c.close()
    return _summarise(samples, bounds[0], bounds[1])


def _summarise(samples: list[Sample], t0: float, t1: float) -> PacedResult:
    res = PacedResult(window_s=t1 - t0)
    for s in samples:
        if t0 <= s.ended < t1 and not s.failure:
            res.completed_in_window += 1
        if not s.failure and s.ended > s.sent:
            inside = min(s.ended, t1) - max(s.sent, t0)
            res.streams_in_window += max(0.0, inside) / (s.ended - s.sent)
        if not t0 <= s.sent < t1:
            continue
        res.started += 1
        if s.failure:
            res.failures[s.failure] += 1
        else:
            res.ttft_ms.append(s.ttft_s * 1000)
            res.total_ms.append((s.ended - s.sent) * 1000)
    return res
