"""Active health probes: each upstream's health URL on an interval, with jitter.

Probes go through the proxy's own connection pool, so they also keep one connection to each
upstream warm: the first real request after a quiet spell pays no handshake.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from gateway.client import CLIENT_ERRORS, classify
from gateway.config import Upstream
from gateway.runtime import Runtime

log = logging.getLogger("geogate.health")


async def probe_once(rt: Runtime, u: Upstream) -> None:
    cfg = rt.config.health
    url = u.url.rstrip("/") + u.health_path
    t0 = time.perf_counter()
    ok, error = False, None
    try:
        async with (
            asyncio.timeout(cfg.timeout_s),
            rt.http().get(url, allow_redirects=False) as resp,
        ):
            await resp.read()
            ok = 200 <= resp.status < 300
            error = None if ok else f"HTTP {resp.status}"
    except (TimeoutError, *CLIENT_ERRORS) as exc:
        error = classify(exc, f"no answer in {cfg.timeout_s:g} s")[1]
    rtt_ms = (time.perf_counter() - t0) * 1000 if ok else None
    before = rt.store.health(u.id).healthy(time.monotonic())
    rt.store.record_probe(u.id, ok, rtt_ms, error)
    h = rt.store.health(u.id)
    after = h.healthy(time.monotonic())
    if before != after:
        log.warning(
            "upstream %s (%s) is now %s%s",
            u.id,
            u.region,
            "healthy" if after else "unhealthy",
            f": {error}" if error else "",
        )
    rt.metrics.healthy.labels(u.id, u.region).set(1 if after else 0)
    if h.rtt_ms is not None:
        rt.metrics.rtt.labels(u.id, u.region).set(h.rtt_ms)


async def probe_all(rt: Runtime) -> None:
    await asyncio.gather(*(probe_once(rt, u) for u in rt.store.upstreams()))


async def probe_loop(rt: Runtime, rng: random.Random) -> None:
    """Probe every current upstream each interval: the set can change at run time (fleet
    config, DNS discovery), so it is read afresh each round. Each probe starts at its own
    jittered offset within the round so a fleet's probes do not arrive together."""
    while True:
        cfg = rt.config.health
        interval = cfg.interval_s * (1 + cfg.jitter * (2 * rng.random() - 1))
        ups = rt.store.upstreams()
        await asyncio.gather(
            *(_probe_after(rt, u, rng.random() * cfg.jitter * interval) for u in ups),
            asyncio.sleep(interval),
        )


async def _probe_after(rt: Runtime, u: Upstream, delay: float) -> None:
    await asyncio.sleep(delay)
    await probe_once(rt, u)
