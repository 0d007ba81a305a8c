"""Background loops that observe the world and write what they see into the store: the
prober (health, RTT), the load poller (queue, TTFT), DNS discovery (pool members) and the
GeoIP reloader. None of them is on the request path."""

from __future__ import annotations

import asyncio
import contextlib
import random

from gateway.runtime import Runtime
from gateway.watch.discovery import discover_once, discovery_loop
from gateway.watch.geoip_reload import geoip_reload_loop
from gateway.watch.load_poller import load_loop
from gateway.watch.prober import probe_all, probe_loop


async def first_look(rt: Runtime) -> None:
    """Resolve discovery names, then one probe round, before serving: the first requests
    route on a real pool and real health."""
    await discover_once(rt)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(rt.config.health.timeout_s + 0.5):
            await probe_all(rt)


def start_watchers(rt: Runtime) -> list[asyncio.Task[None]]:
    return [
        asyncio.create_task(probe_loop(rt, random.Random())),
        asyncio.create_task(geoip_reload_loop(rt)),
        asyncio.create_task(load_loop(rt)),
        asyncio.create_task(discovery_loop(rt)),
    ]
