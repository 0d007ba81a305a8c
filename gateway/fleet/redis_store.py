"""Shared state in Redis: many gateways act as one fleet.

The request path never waits for Redis. This store *is* the in-memory store (the local
snapshot routing reads), plus a background task that every ``refresh_interval_s``:
  - writes this gateway's observations (health, RTT of each upstream) with a TTL, batched in
    one pipeline, and reads every fresh observer's;
  - marks an upstream down for the fleet when most fresh gateways see it down (a gateway's
    workers are one vote; with redis.share_health = false, none of this). A gateway
    that alone cannot reach a backend (a partition) routes around it on its own view,
    without taking it away from everyone else;
  - checks the config version, and on a published change reloads the routing config at once.
    Only a newer version is adopted; a gateway that finds an older one (or none) puts its own
    back, so a Redis that lost the document ends on the newest one, not on a fresh gateway's.
Redis unreachable: routing goes on with the last snapshot, ``stale_since`` says since when,
reconnects back off, and on return the config is re-read (or put back if Redis came back
empty or older).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway import checks
from gateway.config import Config
from gateway.fleet import config_doc, config_io
from gateway.fleet.keys import Keys, connect
from gateway.fleet.memory import MemoryStateStore
from gateway.logs import event
from gateway.routing.model import Snapshot, UpstreamView

log = logging.getLogger("geogate.fleet")
INITIAL_BACKOFF_S = 0.1


# Set by ``geogate gateway`` (gateway.server) to its own pid before its workers start: they
# are one gateway, so one observer with one vote, not one per worker.
ENV_GATEWAY_PID = "_GEOGATE_GATEWAY_PID"  # not GEOGATE_: that prefix is a config override


def default_gateway_id() -> str:
    """hostname-pid of the gateway: of the ``geogate gateway`` process that forked this worker,
    else of this process."""
    return f"{socket.gethostname()}-{os.environ.get(ENV_GATEWAY_PID) or os.getpid()}"


class RedisStateStore(MemoryStateStore):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        rc = config.redis
        self.keys = Keys(rc.deployment)
        self.gateway_id = rc.gateway_id or default_gateway_id()
        # Each worker writes its own view (its own probes), under a key of its own; the views
        # of one gateway's workers make one vote (_merge).
        self.observer = f"{self.gateway_id}/{os.getpid()}"
        self.version = 0
        # The fleet document at ``version`` as Redis held it (None: never seen one): what we
        # put back if Redis loses it, exactly, even one this gateway refused to apply.
        self._doc: dict[str, Any] | None = None
        # The file's routing part: what a fleet document adopted at start is compared with.
        self._file_doc = config_doc.routing_doc(config)
        self.stale_since: float | None = time.time()  # until the first sync succeeds
        self._synced_once = False
        self._down_said = False  # this outage is in the log (at start too: stale_since is set)
        self._redis: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- routing view ----------------------------------------------------------------------
    def _build(self, now: float) -> Snapshot:
        snap = super()._build(now)
        if not self.fleet_down:
            return snap
        views = tuple(
            v if v.id not in self.fleet_down else _with_health(v, False) for v in snap.upstreams
        )
        return Snapshot(views, snap.regions, snap.in_flight)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.zrem(self.keys.observers, self.observer)
            await self._redis.aclose()

    def redis(self) -> Redis:
        if self._redis is None:
            rc = self.config.redis
            self._redis = connect(rc.url, rc.connect_timeout_s)
        return self._redis

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while True:
            listener: asyncio.Task[None] | None = None
            try:
                await self._sync_config()
                listener = asyncio.create_task(self._listen())
                while True:
                    version = await self._exchange_observations()
                    # Not equal: a published change we did not hear, or Redis holds an older
                    # version or none (it lost the document): the sync puts ours back.
                    if version != self.version:
                        await self._sync_config()
                    if self.stale_since is not None:
                        again = " again" if self._synced_once else ""
                        log.info(
                            "shared state in sync%s (version %d)",
                            again,
                            self.version,
                            extra=event("shared-state-fresh", config_version=self.version),
                        )
                    self._synced_once = True
                    self.stale_since = None
                    self._down_said = False
                    backoff = INITIAL_BACKOFF_S
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._wake.wait(), self.config.redis.refresh_interval_s
                        )
                    if listener.done():
                        listener.result()  # re-raise the listener's connection error
            except (RedisError, OSError) as exc:
                if self.stale_since is None:
                    self.stale_since = time.time()
                # Said once per outage, the first at start too (stale_since is set from the
                # start until the first sync): a wrong URL or password was otherwise silent,
                # the fleet quietly one gateway per host.
                if not self._down_said:
                    self._down_said = True
                    log.error(
                        "Redis at %s unreachable (%s); %s",
                        checks.redact_url(self.config.redis.url),
                        type(exc).__name__,
                        "routing on the last snapshot"
                        if self._synced_once
                        else "routing on this gateway's own file and view until it answers",
                        extra=event("shared-state-stale", reason=type(exc).__name__),
                    )
                await self._drop_idle_connections()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.redis.max_backoff_s)
            finally:
                if listener is not None:
                    listener.cancel()

    async def _drop_idle_connections(self) -> None:
        """Close the pool's idle connections: after Redis restarts they are sockets it already
        closed, and redis-py 8 hands them out unchecked (its pool skips the check while
        maintenance notifications are "auto", the default). A command retries on a fresh one;
        the listener's SUBSCRIBE does not: it read "closed by server" just after the sync,
        a false "Redis unreachable" 0.5 s after "in sync again"."""
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    # --- config ----------------------------------------------------------------------------
    async def _sync_config(self) -> None:
        """Adopt the fleet document only if Redis holds a newer version than ours. An older one
        (or none) means Redis lost it (restarted empty, failed over, flushed) and someone, or
        no one yet, seeded an older document: we put ours back, so the fleet converges on the
        newest operator state rather than on a fresh gateway's file. The same rule keeps a read
        that completes late (the listener and the loop both sync) from re-applying an older
        document."""
        r = self.redis()
        doc, version = await config_io.load(r, self.keys)
        if doc is not None and version >= self.version:
            if version > self.version:
                self._adopt(doc, version)
            return
        # Ours is the newest we know of; version 1 and our file's routing if we never had one.
        mine = max(self.version, 1)
        ours = self._doc if self._doc is not None else config_doc.routing_doc(self.config)
        if await config_io.put_back(r, self.keys, ours, mine):
            why = "none" if doc is None else f"older (version {version})"
            log.info(
                "seeded the fleet config in Redis (version %d; Redis held %s)",
                mine,
                why,
                extra=event("config-seeded", reason=why, change=True, config_version=mine),
            )
        doc, version = await config_io.load(r, self.keys)
        if doc is not None and version > self.version:  # ours, or a newer one written since
            self._adopt(doc, version)

    def _adopt(self, doc: dict[str, Any], version: int) -> None:
        first = self._doc is None  # the file's routing is what this gateway had until now
        try:
            new = config_doc.apply_doc(self.config, doc)
        except Exception as exc:  # a bad document must not take the gateway down
            log.error(
                "ignoring fleet config version %d: %s",
                version,
                exc,
                extra=event("config-refused", reason=str(exc), config_version=version),
            )
            self.version, self._doc = version, doc
            return
        self.version, self._doc = version, doc
        self.replace_config(new)
        log.info(
            "applied fleet config version %d",
            version,
            extra=event("config-applied", change=True, config_version=version),
        )
        if first:
            self._warn_if_file_differs(config_doc.routing_doc(new), version)

    def _warn_if_file_differs(self, fleet_doc: dict[str, Any], version: int) -> None:
        """The fleet's document wins over the file (the file only seeds a fleet without one),
        so a changed file has no effect: say so once, and what differs, rather than let the
        start-up line's upstream count (the file's) stand for what is routed."""
        differs = config_doc.file_differences(self._file_doc, fleet_doc)
        if not differs:
            return
        deployment = self.config.redis.deployment
        log.warning(
            "the config file's routing differs from the fleet's in Redis (deployment %r, "
            "version %d), which this gateway follows: %s. The file only seeds a fleet that "
            "has none; to apply a changed file, start its gateways as a new fleet under a new "
            "redis.deployment (GEOGATE_REDIS__DEPLOYMENT, e.g. named after the file's hash)",
            deployment,
            version,
            "; ".join(differs),
            extra=event(
                "config-file-ignored",
                reason="; ".join(differs),
                config_version=version,
                deployment=deployment,
            ),
        )

    async def _listen(self) -> None:
        pubsub = self.redis().pubsub()
        try:
            await pubsub.subscribe(self.keys.events)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await self._sync_config()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    # --- observations ----------------------------------------------------------------------
    def _my_view(self) -> dict[str, Any]:
        ups = {}
        for u in self.upstreams():
            h = self.health(u.id)
            if h.probed_healthy is None and h.await_probe:
                continue  # joined while running, not probed yet: no opinion to give the fleet
            load = self.load(u.id)
            ups[u.id] = {
                "healthy": h.probed_healthy is not False,
                "rtt_ms": h.rtt_ms,
                "error": h.last_probe_error,
                "queue_depth": load.queue_depth if load else None,
                "ttft_ms": load.ttft_ms if load else None,
                "kv_usage": load.kv_usage if load else None,
            }
        return {
            "gateway": self.gateway_id,
            "region": self.config.gateway.region,
            "ts": time.time(),
            "upstreams": ups,
        }

    async def _exchange_observations(self) -> int | None:
        """Write ours, read everyone's, and read the config version, in one round trip
        (plus one MGET for the observations). Returns the version (None: no config)."""
        r = self.redis()
        rc = self.config.redis
        if not rc.share_health:  # the config alone is shared (README, "One fleet")
            raw = await r.hget(self.keys.config, "version")
            return None if raw is None else int(raw)
        now = time.time()
        ttl_ms = max(1, math.ceil(rc.observation_ttl_s * 1000))
        async with r.pipeline(transaction=False) as pipe:  # one round trip for all of it
            pipe.set(self.keys.obs(self.observer), json.dumps(self._my_view()), px=ttl_ms)
            pipe.zadd(self.keys.observers, {self.observer: now})
            pipe.zremrangebyscore(self.keys.observers, "-inf", now - rc.observation_ttl_s)
            pipe.zrangebyscore(self.keys.observers, now - rc.observation_ttl_s, "+inf")
            pipe.hget(self.keys.config, "version")
            results = await pipe.execute()
        observers: list[str] = results[-2]
        version = None if results[-1] is None else int(results[-1])
        raws = await r.mget([self.keys.obs(g) for g in observers]) if observers else []
        views = [json.loads(raw) for raw in raws if raw]
        self._merge(views)
        return version

    def _merge(self, views: list[dict[str, Any]]) -> None:
        """Each gateway's vote on each upstream (its workers': healthy if any of them reached
        it, the same host's probes), and the upstreams most gateways see down."""
        seen: dict[str, dict[str, bool]] = {}
        for v in views:
            for uid, o in v.get("upstreams", {}).items():
                votes = seen.setdefault(uid, {})
                votes[v["gateway"]] = votes.get(v["gateway"], False) or bool(o.get("healthy"))
        down = frozenset(
            uid
            for uid, votes in seen.items()
            if sum(1 for ok in votes.values() if not ok) * 2 > len(votes)
        )
        self.observations = seen
        if down != self.fleet_down:
            if down - self.fleet_down:
                newly = sorted(down - self.fleet_down)
                log.warning(
                    "down for the fleet: %s",
                    ", ".join(newly),
                    extra=event("fleet-down", upstreams=newly),
                )
            self.fleet_down = down
            self._snap = None

    # --- operator changes ------------------------------------------------------------------
    # Each first syncs: if Redis lost the document, ours goes back before the change builds on
    # it. Otherwise a change made on an older seed would get a version below ours, and the
    # next sync here (or on any gateway at our version) would put ours back over it.
    async def update_upstream(self, uid: str, changes: dict[str, Any], who: str) -> dict[str, Any]:
        await self._sync_config()
        return self._applied(
            *await config_io.update_upstream(
                self.redis(), self.keys, self.config, uid, changes, who
            )
        )

    async def update_region(self, rid: str, changes: dict[str, Any], who: str) -> dict[str, Any]:
        await self._sync_config()
        return self._applied(
            *await config_io.update_region(self.redis(), self.keys, self.config, rid, changes, who)
        )

    def _applied(self, version: int, new: Config, entry: dict[str, Any]) -> dict[str, Any]:
        if version > self.version:  # apply here at once; the others hear it published
            self.version, self._doc = version, config_doc.routing_doc(new)
            self.replace_config(new)
        return dict(entry)

    async def audit(self, count: int) -> list[dict[str, str]]:
        return await config_io.read_audit(self.redis(), self.keys, count)


def _with_health(v: UpstreamView, healthy: bool) -> UpstreamView:
    return replace(v, healthy=healthy)
