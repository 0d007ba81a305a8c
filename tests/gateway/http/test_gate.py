"""The stream gate in-process: what a descriptor limit allows, the fast 503 past the limit, and
the drain (wait for what is in flight, cut it at the timeout). Real processes, signals and
both servers: tests/gateway/test_server.py and tests/gateway/test_capacity.py."""

from __future__ import annotations

import asyncio
import time

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.config import Config
from gateway.defaults import FD_RESERVE
from gateway.http.asgi import Receive, Scope, Send, send_json
from gateway.http.gate import StreamGate, capacity
from gateway.runtime import Runtime, build_runtime

CFG = Config.model_validate(
    {"gateway": {"region": "eu"}, "regions": [{"id": "eu", "latitude": 50, "longitude": 8}]}
)


def test_capacity_follows_the_descriptor_limit() -> None:
    plenty = capacity(1_000_000, 10_000, 11_024)
    assert (plenty.streams, plenty.connections, plenty.wanted_headroom) == (10_000, 11_024, 1_024)
    # 20,000 descriptors (this machine's hard limit): two per stream and one per connection
    # beyond them, less the reserve; a headroom of connections is kept (a 32nd of them), so a
    # request over the stream limit still finds a connection and gets the gate's counted 503.
    tight = capacity(20_000, 10_000, 11_024)
    budget = 20_000 - FD_RESERVE
    assert tight.fd_streams == (budget - budget // 32) // 2 == tight.streams == 9_639
    assert tight.connections - tight.streams >= budget // 32 and tight.wanted_headroom == 1_024
    assert tight.streams + tight.connections <= budget
    # However few, a worker takes at least the connections its streams need.
    starved = capacity(FD_RESERVE + 10, 10_000, 11_024)
    assert starved.streams == 5 and starved.connections >= starved.streams


class Slow:
    """An app whose requests take as long as they are told, or until cancelled."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self._changed = asyncio.Event()

    async def until_started(self, n: int) -> None:
        while self.started < n:
            self._changed.clear()
            await self._changed.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started += 1
        self._changed.set()
        try:
            await asyncio.sleep(float(scope["path"].rsplit("/", 1)[1]))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await send_json(send, 200, {"ok": True})


def _client(gate: StreamGate) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/v1/{path:path}", gate, methods=["POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_past_the_limit_a_fast_503_with_retry_after() -> None:
    rt = build_runtime(CFG)
    slow = Slow()
    gate = StreamGate(rt, slow, limit=2)
    async with _client(gate) as c:
        held = [asyncio.create_task(c.post("/v1/sleep/0.5")) for _ in range(2)]
        await slow.until_started(2)
        assert _gauge(rt, "geogate_requests_in_flight") == 2  # read at the scrape
        t0 = time.monotonic()
        r = await c.post("/v1/sleep/0.5")
        # fast: not after a held request's 0.5 s (the suite's other workers load the cores)
        assert time.monotonic() - t0 < 0.4
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == {
            "message": "this gateway is serving its maximum of 2 concurrent requests "
            "(server.max_streams); retry in 1 s",
            "type": "service_unavailable",
            "param": None,
            "code": "gateway_at_capacity",
        }
        assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200]
        assert (await c.post("/v1/sleep/0")).status_code == 200  # room again
    assert _sample(rt, "geogate_overload_rejected_total", {"limit": "max_streams"}) == 1
    assert gate.in_flight == 0
    assert _gauge(rt, "geogate_requests_in_flight") == 0


def _gauge(rt: Runtime, name: str) -> float | None:
    return rt.metrics.registry.get_sample_value(name)


def _sample(rt: Runtime, name: str, labels: dict[str, str]) -> float | None:
    return rt.metrics.registry.get_sample_value(name, labels)


async def test_drain_waits_for_requests_in_flight_and_serves_new_ones() -> None:
    rt = build_runtime(CFG)
    slow = Slow()
    gate = StreamGate(rt, slow, limit=10)
    async with _client(gate) as c:
        first = asyncio.create_task(c.post("/v1/sleep/0.3"))
        await slow.until_started(1)
        drain = asyncio.create_task(gate.drain(timeout_s=5))
        await asyncio.sleep(0.05)
        assert rt.draining and not drain.done()
        assert (await c.post("/v1/sleep/0")).status_code == 200  # served while draining
        assert (await first).status_code == 200
        await asyncio.wait_for(drain, 1)  # over once nothing is in flight
    assert slow.cancelled == 0


async def test_drain_timeout_cuts_what_is_left() -> None:
    rt = build_runtime(CFG)
    slow = Slow()
    gate = StreamGate(rt, slow, limit=10)
    stopped = asyncio.Event()
    async with _client(gate) as c:
        long = asyncio.create_task(c.post("/v1/sleep/30"))
        await slow.until_started(1)
        t0 = time.monotonic()
        gate.on_sigterm(0.2, stopped.set)
        gate.on_sigterm(0.2, stopped.set)  # a second SIGTERM starts no second drain
        await asyncio.wait_for(stopped.wait(), 3)
        assert 0.2 <= time.monotonic() - t0 < 1
        assert slow.cancelled == 1 and gate.in_flight == 0
        long.cancel()
