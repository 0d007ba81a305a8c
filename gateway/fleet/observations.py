"""Observations: each gateway worker's view of every upstream, in Redis with a TTL, and what the
fleet makes of them (an upstream most fresh gateways see down is down for everyone).

An observation is one JSON object: ``gateway``, ``region``, ``ts``, ``upstreams`` (id ->
healthy, rtt_ms, error, load) and ``config_version``, the fleet document's version the worker
routes on. That one is top level, beside what a gateway of an earlier release reads (it takes
``gateway`` and ``upstreams``), so it reads ours as before; ``geogate ctl`` and the admin API
read it to refuse a change while Redis holds an older version than the gateways do (Redis lost
data: ``config_io.update``).

Every reader takes what it can and skips the rest: one malformed observation (a bug, a hand
edit, a release that wrote another shape) must not stop every gateway that reads it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from gateway.fleet.keys import Keys
from gateway.fleet.store import RoutingState
from gateway.logs import event

log = logging.getLogger("geogate.fleet")


class RedisClock:
    """Redis's clock, as seen from here: the observers' set is scored and trimmed with it, so
    one gateway whose clock runs ahead by more than redis.observation_ttl_s cannot trim everyone
    else's entries (and one behind is not trimmed by the others). Each exchange reads Redis's
    TIME in its own round trip and keeps the offset for the next; the first asks for it."""

    def __init__(self, local: Callable[[], float] | None = None) -> None:
        # This host's clock, looked up at each call (a test skews time.time).
        self.local = local or (lambda: time.time())
        self.offset: float | None = None

    def now(self) -> float | None:
        """Redis's time now, or None until an exchange has read it."""
        return None if self.offset is None else self.local() + self.offset

    def forget(self) -> None:
        """The connection was lost: the next exchange asks for the offset again (Redis may be
        another node now, a failover's, with a clock of its own)."""
        self.offset = None

    def heard(self, redis_time: tuple[int, int], sent: float, answered: float) -> None:
        """TIME's answer to a round trip sent and answered at these local times."""
        secs, usecs = redis_time
        self.offset = secs + usecs / 1e6 - (sent + answered) / 2


def sibling_ejections(
    views: list[dict[str, Any]], gateway: str, max_s: float, now: float, observer: str = ""
) -> dict[str, float]:
    """upstream -> until when (monotonic) one of gateway ``gateway``'s workers has it
    ejected: its other workers eject it too, so that one gateway routes as one (each worker
    counting its own requests, one ejected what the others kept serving, and the dashboard
    and /routing-table said either, by the worker that answered). One host, one monotonic
    clock; a deadline past ``max_s`` (outlier.max_ejection_s) from ``now`` is another host's
    clock (two hosts under one redis.gateway_id), and is ignored. ``observer``'s own view is
    left out: read back, it may be older than an ejection this worker has ended since."""
    out: dict[str, float] = {}
    for v in views:
        if v.get("gateway") != gateway or not isinstance(v.get("upstreams"), dict):
            continue
        if observer and v.get("observer") == observer:
            continue
        for uid, seen in v["upstreams"].items():
            until = seen.get("ejected_until") if isinstance(seen, dict) else None
            if isinstance(until, int | float) and now < until <= now + max_s:
                out[uid] = max(float(until), out.get(uid, 0.0))
    return out


def view(
    state: RoutingState, gateway: str, region: str, version: int, observer: str = ""
) -> dict[str, Any]:
    """This worker's observation: its view of every upstream it has an opinion on."""
    ups = {}
    now = time.monotonic()
    for u in state.upstreams():
        h = state.health(u.id)
        if h.probed_healthy is None and h.await_probe:
            continue  # joined while running, not probed yet: no opinion to give the fleet
        load = state.load(u.id)
        ups[u.id] = {
            "healthy": h.probed_healthy is not False,
            "rtt_ms": h.rtt_ms,
            "error": h.last_probe_error,
            "queue_depth": load.queue_depth if load else None,
            "ttft_ms": load.ttft_ms if load else None,
            "kv_usage": load.kv_usage if load else None,
            # An ejection this worker made (its cause is set; not one taken from a sibling),
            # for this gateway's other workers only (sibling_ejections): this host's monotonic
            # clock, which means nothing on another host.
            "ejected_until": h.ejected_until if h.ejected(now) and h.ejection_cause else None,
        }
    return {
        "gateway": gateway,
        "observer": observer,  # the worker's key: its siblings tell their views from its own
        "region": region,
        "ts": time.time(),
        "upstreams": ups,
        # Top level, beside what an earlier release reads: the admin API and ctl refuse a
        # change while a gateway routes on a version above Redis's (config_io.update).
        "config_version": version,
    }


async def exchange(
    r: Redis, keys: Keys, observer: str, mine: str, ttl_s: float, clock: RedisClock
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """Write ``mine`` (JSON) with a TTL, read every fresh observer's, and read the config's
    version and digest, in one round trip (plus one MGET for the observations). Returns (the
    views that read as one, version, digest)."""
    if clock.offset is None:  # the first exchange: Redis's clock is not known yet
        sent = clock.local()
        clock.heard(await r.time(), sent, clock.local())
    now = clock.now()
    assert now is not None
    ttl_ms = max(1, math.ceil(ttl_s * 1000))
    sent = clock.local()
    async with r.pipeline(transaction=False) as pipe:  # one round trip for all of it
        pipe.set(keys.obs(observer), mine, px=ttl_ms)
        pipe.zadd(keys.observers, {observer: now})
        pipe.zremrangebyscore(keys.observers, "-inf", now - ttl_s)
        pipe.zrangebyscore(keys.observers, now - ttl_s, "+inf")
        pipe.hmget(keys.config, ["version", "digest"])
        pipe.time()
        results = await pipe.execute()
    clock.heard(results[-1], sent, clock.local())
    observers: list[str] = results[-3]
    version, digest = results[-2]
    raws = await r.mget([keys.obs(o) for o in observers]) if observers else []
    return parse(raws), _text(version), _text(digest)


def _text(value: str | bytes | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def parse(raws: Iterable[str | bytes | None]) -> list[dict[str, Any]]:
    """The observations that read as one (a gateway name, upstreams as an object); the others
    are skipped with one warning per round, not raised into the sync task."""
    views, bad = [], 0
    for raw in raws:
        if not raw:
            continue  # expired between the set's read and the MGET
        try:
            v = json.loads(raw)
        except (ValueError, RecursionError):
            v = None
        if isinstance(v, dict) and isinstance(v.get("gateway"), str):
            ups = v.get("upstreams", {})
            if isinstance(ups, dict):
                views.append(
                    {**v, "upstreams": {k: o for k, o in ups.items() if isinstance(o, dict)}}
                )
                continue
        bad += 1
    if bad:
        log.warning(
            "skipped %d observation(s) in Redis that are not a gateway's view",
            bad,
            extra=event("observation-skipped", reason="malformed"),
        )
    return views


def votes(views: Iterable[dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """upstream -> gateway -> up: a gateway's workers are one vote, up when any of them reached
    it (the same host's probes)."""
    seen: dict[str, dict[str, bool]] = {}
    for v in views:
        gw = v["gateway"]
        for uid, o in v["upstreams"].items():
            votes = seen.setdefault(uid, {})
            votes[gw] = votes.get(gw, False) or bool(o.get("healthy"))
    return seen


def down(seen: dict[str, dict[str, bool]]) -> frozenset[str]:
    """The upstreams most voting gateways see down (a tie is not a majority)."""
    return frozenset(
        uid for uid, by in seen.items() if sum(1 for ok in by.values() if not ok) * 2 > len(by)
    )


async def versions(r: Redis, keys: Keys) -> dict[str, int]:
    """gateway -> the highest config version its fresh workers route on, from observations
    still alive (their TTL is what makes one fresh: no clock of ours is compared). Gateways of
    an earlier release say none."""
    observers = [str(o) for o in await r.zrange(keys.observers, 0, -1)]
    raws = await r.mget([keys.obs(o) for o in observers]) if observers else []
    out: dict[str, int] = {}
    for v in parse(raws):
        held = v.get("config_version")
        if isinstance(held, int) and not isinstance(held, bool):
            out[v["gateway"]] = max(out.get(v["gateway"], 0), held)
    return out
