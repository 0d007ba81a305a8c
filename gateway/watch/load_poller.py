"""Scrape each upstream's Prometheus /metrics for its load (queue, TTFT) on a short interval.

A failed scrape records nothing: the last sample ages out after ``load.max_age_s`` and the
router stops using it, rather than trusting numbers nobody has confirmed for seconds.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.config import Upstream
from gateway.routing.load import LoadReading, parse_load
from gateway.runtime import Runtime

# A scrape gets two poll intervals, and at least SCRAPE_TIMEOUT_MIN_S: an edge reading a
# regional gateway's /load across an ocean (300 ms RTT, a new connection's handshake first)
# would otherwise time out at the default 0.25 s interval, and that region would go unmeasured.
# A slow scrape delays only the next round (the rounds wait for it), not the requests.
SCRAPE_TIMEOUT_MIN_S = 1.0


async def poll_once(rt: Runtime, u: Upstream) -> LoadReading | None:
    cfg = rt.config.load
    url = u.url.rstrip("/") + (u.load_path or cfg.path)
    try:
        async with (
            asyncio.timeout(max(2 * cfg.poll_interval_s, SCRAPE_TIMEOUT_MIN_S)),
            rt.http().get(url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                return None
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError):
        return None
    try:
        return parse_load(text)
    except ValueError:
        return None  # not Prometheus text: a backend without metrics is simply unmeasured


async def load_loop(rt: Runtime) -> None:
    while rt.config.load.enabled:
        ups = rt.store.upstreams()
        pause = asyncio.ensure_future(asyncio.sleep(rt.config.load.poll_interval_s))
        readings = await asyncio.gather(*(poll_once(rt, u) for u in ups))
        rt.store.record_loads(
            {u.id: r for u, r in zip(ups, readings, strict=True) if r is not None},
            time.monotonic(),
        )
        await pause
