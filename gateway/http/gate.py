"""The ``/v1/*`` requests in flight in one worker: a fast 503 beyond ``server.max_streams``,
never a silent queue, and the SIGTERM drain that waits for them.

The server's own connection limit (``capacity().connections``: uvicorn's limit_concurrency,
granian's backpressure) sits above the stream limit, also when the descriptors are short (the
headroom comes out of the streams then), so a request over it reaches this gate and is answered
at once, counted.

On SIGTERM the worker keeps accepting connections: ``/readyz`` answers 503 ("draining") on new
and kept-alive connections alike, so a load balancer sees a draining target, not a dead one,
while the requests in flight finish. ``/v1`` requests that arrive meanwhile are served, as
nginx and Envoy do while the balancer catches up. The drain ends when nothing is in flight or
after ``server.drain_timeout_s``, when what is left is cut; then the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway import defaults as d
from gateway.errors import GatewayError, GatewayOverloaded
from gateway.http.asgi import Receive, Scope, Send
from gateway.http.errors import send_error
from gateway.http.final_error import DRAIN_CUT
from gateway.logs import event
from gateway.runtime import Runtime, log

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# How the gate answers a request it refuses (gateway.http.intake's Proxy.refuse: with the
# access line and the request metrics every answer gets).
Refuse = Callable[[Scope, Send, GatewayError], Awaitable[None]]


async def _plain_refusal(scope: Scope, send: Send, err: GatewayError) -> None:
    await send_error(send, err)


CUT_WAIT_S = 2.0  # cancelled requests unwind (upstream closed, access line written) this fast


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one worker can hold, given its descriptor limit."""

    fds: int  # the worker's soft RLIMIT_NOFILE
    # Streams those descriptors allow (a client and an upstream socket each) with the
    # connections' headroom above them kept
    fd_streams: int
    streams: int  # the gate's limit: max_streams, or fewer when the descriptors allow fewer
    connections: int  # the server's connection limit, within the descriptors left
    # Connections wanted above the streams (max_connections - max_streams: idle keep-alive
    # ones, the 503s over the limit); with descriptors short, fewer are kept
    wanted_headroom: int


def capacity(fds: int, max_streams: int, max_connections: int = 0) -> Capacity:
    """``max_connections`` 0: ``max_streams`` + headroom (idle keep-alive connections, health
    checks, and the requests over the limit, which need a connection to get their 503)."""
    max_connections = max_connections or max_streams + d.CONNECTION_HEADROOM
    budget = max(0, fds - d.FD_RESERVE)
    # The headroom is kept first, out of the streams, when the descriptors are short: with the
    # connection limit at the stream limit, the server's refusal (on granian: its backpressure,
    # no answer at all) came before this gate's 503 (round sixteen's review). A 32nd of the
    # budget at most (621 connections of 20,000 descriptors, which still hold 9,639 streams),
    # so that a short budget goes to streams first.
    wanted = max(0, max_connections - max_streams)
    headroom = min(wanted, budget // d.HEADROOM_SHARE_MAX)
    fd_streams = (budget - headroom) // d.FDS_PER_STREAM
    streams = max(1, min(max_streams, fd_streams))
    # Never below streams: a connection the server does not accept never reaches the gate.
    connections = max(streams, min(max_connections, budget - streams))
    return Capacity(fds, fd_streams, streams, connections, wanted)


def fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class StreamGate:
    """ASGI wrapper around the proxy: counts its requests, refuses those over the limit."""

    def __init__(
        self, rt: Runtime, app: ASGIApp, limit: int, refuse: Refuse = _plain_refusal
    ) -> None:
        self.rt = rt
        self.app = app
        self.refuse = refuse
        self.limit = limit
        self.in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()  # to cut them when the drain times out
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain: asyncio.Task[None] | None = None
        rt.metrics.max_streams.set(limit)
        # Read when scraped: an inc() and a dec() per request each took the gauge's lock.
        rt.metrics.requests_in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.rt.metrics
        if self.in_flight >= self.limit:
            m.overloaded.labels("max_streams").inc()
            retry = d.OVERLOAD_RETRY_AFTER_S
            await self.refuse(
                scope,
                send,
                GatewayOverloaded(
                    f"this gateway is serving its maximum of {self.limit} concurrent requests "
                    f"(server.max_streams); retry in {retry} s",
                    retry_after_s=retry,
                ),
            )
            return
        task = self.rt.current_task()
        self.in_flight += 1
        if self.in_flight == 1:  # busy from idle: the drain's event says so (not per request)
            self._idle.clear()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if task is not None:
                self._tasks.discard(task)
            if not self.in_flight:
                self._idle.set()

    def on_sigterm(self, timeout_s: float, stop: Callable[[], None]) -> None:
        """The worker's SIGTERM handler: drain once, then ``stop`` the server. A second
        SIGTERM (the ASGI server's parent relaying its own) changes nothing."""
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then(timeout_s, stop))

    async def _drain_then(self, timeout_s: float, stop: Callable[[], None]) -> None:
        try:
            await self.drain(timeout_s)
        finally:
            stop()

    async def drain(self, timeout_s: float) -> None:
        self.rt.draining = True
        log.info(
            # No signal named: SIGHUP drains too (the parent relays it as SIGTERM).
            "draining (/readyz answers 503); %d request(s) in flight get up to %g s",
            self.in_flight,
            timeout_s,
            extra=event("drain-started", in_flight=self.in_flight),
        )
        try:  # asyncio.timeout, not 3.11's wait_for, which can lose a cancel (redis_store)
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
            log.info("drained: no request in flight", extra=event("drained"))
        except TimeoutError:
            log.warning(
                "drain: server.drain_timeout_s (%g s) passed; cutting %d request(s) in flight",
                timeout_s,
                self.in_flight,
                extra=event("drain-timeout", in_flight=self.in_flight),
            )
            for task in list(self._tasks):
                task.cancel(DRAIN_CUT)  # the message tells the proxy's stream what cut it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CUT_WAIT_S):
                    await self._idle.wait()
