"""Reload the GeoIP database when its file is replaced (a weekly GeoLite2 update)."""

from __future__ import annotations

import asyncio

from gateway.runtime import Runtime
from gateway.ticks import Beat
from geodb.reader import GeoIPSource, Reload


async def geoip_reload_loop(rt: Runtime) -> None:
    geo = rt.geo
    if not isinstance(geo, GeoIPSource):
        return
    loop = asyncio.get_running_loop()
    beat = Beat(loop.time())  # on the worker's tick (gateway.ticks), with the background work
    while True:
        await asyncio.sleep(beat.wait(loop.time(), rt.config.geoip.reload_interval_s))
        # Reading a 70 MB City file would stall the event loop: do it on a thread.
        result = await asyncio.to_thread(geo.maybe_reload)
        if result is not Reload.UNCHANGED:
            rt.metrics.geoip_reloads.labels(str(result)).inc()
