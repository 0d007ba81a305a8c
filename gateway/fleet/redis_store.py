"""Shared state in Redis: many gateways act as one fleet.

The request path never waits for Redis. This store *is* the in-memory store (the local
snapshot routing reads), plus a background task that every ``refresh_interval_s``:
  - writes this gateway's observations (health, RTT of each upstream) with a TTL, batched in
    one pipeline, and reads every fresh observer's;
  - marks an upstream down for the fleet when most fresh gateways see it down (a gateway's
    workers are one vote; with redis.share_health = false, none of this). A gateway that alone
    cannot reach a backend (a partition) routes around it on its own, not for everyone else;
  - checks the config's version and digest, and on a published change reloads the routing
    config at once. Only a newer document is adopted; a gateway that finds an older one (or
    none) puts its own back, so a Redis that lost the document ends on the newest one, not on
    a fresh gateway's; two different documents are settled on the newer change (``settle``).
Redis unreachable, or any other error of the sync: routing goes on with the last snapshot,
``stale_since`` says since when, the sync backs off and retries, and on return the config is
re-read (or put back if Redis came back empty or older).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.config import Config
from gateway.defaults import FIRST_SYNC_WAIT_S
from gateway.errors import FleetConfigInvalid, NothingToRestore
from gateway.fleet import config_doc, config_io, last_known, observations, sessions, sync_log
from gateway.fleet.keys import Keys, check_url, connect, default_gateway_id
from gateway.fleet.memory import MemoryStateStore
from gateway.fleet.restore import restore as put_back
from gateway.fleet.settle import Stored
from gateway.logs import event
from gateway.routing.model import Snapshot

log = logging.getLogger("geogate.fleet")
INITIAL_BACKOFF_S = 0.1
STOP_WAIT_S = 2.0  # stop(): the sync's task ends within this, or the shutdown goes on


class RedisStateStore(MemoryStateStore):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        rc = config.redis
        # A URL redis-py cannot use is said here, in one line, as the gateway starts (its
        # preflight builds this store before any worker), not by the sync task later.
        check_url(rc.url)
        self.keys = Keys(rc.deployment)
        self.gateway_id = rc.gateway_id or default_gateway_id()
        # Each worker writes its own view (its own probes), under a key of its own; the views
        # of one gateway's workers make one vote (_merge).
        self.observer = f"{self.gateway_id}/{os.getpid()}"
        self.version = 0
        # The fleet document at ``version`` as Redis held it, with its digest and change time
        # (None: never seen one): what we route on, compare with Redis's and put back, exactly,
        # if Redis loses it. Never one this gateway refused to apply (_adopt): Redis losing a
        # document every gateway refused puts back the one before it.
        self._held: Stored | None = None
        # The config hash's (version, digest) as the last sync left them: a refresh that reads
        # others syncs again (a change not heard, Redis lost it, another document at ours).
        self._seen: tuple[str | None, str | None] = (None, None)
        # The file's routing part: what a fleet document adopted at start is compared with.
        self._file_doc = config_doc.routing_doc(config)
        self.clock = observations.RedisClock()
        self.stale_since: float | None = time.time()  # until the first sync succeeds
        self.synced_once = False  # until then, stale means routing on the file's own config
        self.refused: str | None = None  # why Redis's document is not routed on (/readyz)
        # What this outage's log line named (the error's type; at start too, stale_since is
        # set): said once per outage and cause.
        self._said: str | None = None
        self._redis: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()  # the first sync's outcome, either way (start waits)
        self._adopted: dict[str, float] = {}  # upstream -> a sibling worker's ejection taken
        # A worker started while the gateway runs (in place of one that died) starts on the
        # fleet document its siblings last routed on, not on the file (fleet.last_known).
        self._fleet = last_known.fleet_of(rc.url, rc.deployment)
        cached = last_known.load(self._fleet)
        if cached is not None:
            self._adopt(cached)
            self.refused = None  # a refusal of the last-known copy is no fleet document's
            # Routing on the fleet's state, if not a fresh one (unless this file refused it)
            self.synced_once = self._held is not None

    def _resume(self) -> None:
        """Not the in-memory store's way: the fleet's last document is taken above."""

    # --- routing view ----------------------------------------------------------------------
    def _build(self, now: float) -> Snapshot:
        snap = super()._build(now)
        if not self.fleet_down:
            return snap
        views = tuple(
            v if v.id not in self.fleet_down else replace(v, healthy=False) for v in snap.upstreams
        )
        return Snapshot(views, snap.regions, snap.in_flight)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """The sync's task, and its first round's outcome before serving: a worker started
        while the fleet runs routes on the fleet's state from its first request (it served
        the file's while it synced). Redis away is known within the connect timeout."""
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._ended)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_SYNC_WAIT_S):
                await self._first.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            # asyncio.wait neither raises the task's end (_ended says an error) nor absorbs a
            # cancel of this caller, as suppressing CancelledError around the task did; bounded:
            # a cancel lost in a library must not keep the worker from exiting.
            await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.zrem(self.keys.observers, self.observer)
            await self._redis.aclose()

    def redis(self) -> Redis:
        if self._redis is None:
            rc = self.config.redis
            self._redis = connect(rc.url, rc.connect_timeout_s)
        return self._redis

    def _ended(self, task: asyncio.Task[None]) -> None:
        """_run retries every error, so it ends only when stop() cancels it. Should it end
        otherwise, say so, and say stale: /readyz and the metric would say "fresh" forever of
        a fleet this gateway no longer follows."""
        if not task.cancelled():
            self.stale_since = self.stale_since or time.time()
            sync_log.ended(task.exception())

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while True:
            listener: asyncio.Task[None] | None = None
            try:
                await self._sync_config()
                listener = asyncio.create_task(self._listen())
                # An error redis-py ends it on after the cancel below: retrieved, not logged
                listener.add_done_callback(lambda t: t.cancelled() or t.exception())
                while True:
                    await self._refresh()
                    self._in_sync()
                    backoff = INITIAL_BACKOFF_S
                    # A sleep: an asyncio.wait_for on an event nothing set was here, and 3.11's
                    # wait_for can swallow the cancel stop() sends (python/cpython#86296): the
                    # sync went on, stop() waited on it, and the worker never exited.
                    await asyncio.sleep(self.config.redis.refresh_interval_s)
                    if listener.done():
                        listener.result()  # re-raise the listener's connection error
            # Any error, not only Redis's: a bug, or data in Redis no reader expected, must not
            # end the sync for good while /readyz says ready.
            except Exception as exc:
                self._out_of_sync(exc)
                await self._drop_idle_connections()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.redis.max_backoff_s)
            finally:
                if listener is not None:
                    listener.cancel()

    async def _refresh(self) -> None:
        """One round: observations exchanged, and the config synced when Redis's hash is not
        what the last sync left: a published change we did not hear, Redis holds an older
        version or none (it lost the document), or another document at our version."""
        if await self._exchange_observations() != self._seen:
            await self._sync_config()
        await sessions.sync(self.redis(), self.keys, self.sessions, time.time())

    def _in_sync(self) -> None:
        if self.stale_since is not None:
            sync_log.fresh(self.version, again=self.synced_once)
        self.synced_once = True
        self.stale_since = None
        self._said = None
        self._first.set()

    def _out_of_sync(self, exc: Exception) -> None:
        self._first.set()
        # A sibling's ejection taken here ends with the sync: its end could not be heard, and
        # only the sibling probes it. Meanwhile each worker ejects on its own, as without Redis.
        now = time.monotonic()
        for uid, until in self._adopted.items():
            self.release_ejection(uid, until, now)
        self._adopted.clear()
        if self.stale_since is None:
            self.stale_since = time.time()
        # Redis's clock is read again on return: it may be another node's (a Sentinel
        # failover), whose offset, taken for the old one's, would trim the others' entries.
        self.clock.forget()
        # Said once per outage and cause, the first at start too (stale_since is set from the
        # start until the first sync): a wrong URL or password was otherwise silent, the fleet
        # quietly one gateway per host.
        if self._said != type(exc).__name__:
            self._said = type(exc).__name__
            sync_log.stale(exc, self.config.redis.url, self.synced_once)

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
        """Settle this gateway's document and Redis's on one (``settle``): adopt Redis's when
        it is the newer change; put ours back when Redis holds an older one or none (it lost
        it: restarted empty, failed over, flushed, restored), so the fleet converges on the
        newest operator state rather than on a fresh gateway's file; two different documents
        are settled on the newer change, at a version above both, the other one named in the
        log. Adopting only a higher version keeps a sync that completes late (the listener and
        the loop both sync) from re-applying an older document."""
        r = self.redis()
        mine = self._mine()
        try:
            out = await config_io.settle(r, self.keys, mine, self.gateway_id)
        except FleetConfigInvalid as exc:
            await self._unreadable(r, exc)
            return
        self.refused = None  # unless _adopt refuses what Redis holds now
        holds = out.holds
        if out.write is not None:
            sync_log.wrote(out, mine)
        if self._held is None or holds.version > self.version:
            self._adopt(holds)
        # What the loop compares Redis's hash with (else a refused document's, _adopt): a sync
        # that read before another adopted a newer version leaves the newer one's, so a Redis
        # back at what it read (restored) still differs and is synced. The digest beside it:
        # ours if we wrote, else as read (an earlier release leaves another document's there:
        # compared as it is, it syncs no more than once).
        if self._held is not None and (self._held.version, self._held.digest) == (
            holds.version,
            holds.digest,
        ):
            field = holds.digest if out.write is not None else holds.stored_digest
            self._seen = (str(holds.version), field)

    def _mine(self) -> Stored:
        if self._held is None:
            # Never synced: the file's routing, no operator's change, at version 0: whatever
            # Redis holds wins over it, and with nothing there it seeds version 1.
            return Stored(self._file_doc, 0, 0.0)
        return self._held

    async def _unreadable(self, r: Redis, exc: FleetConfigInvalid) -> None:
        """Redis holds a document or version no gateway can read (a hand edit): route on
        ours, say so once per such document, and do not read it again each refresh."""
        seen = await config_io.mark(r, self.keys)
        try:  # mended since the read that failed (a hand fix publishes nothing): that mark
            await config_io.read(r, self.keys)  # kept, no refresh would sync it
        except FleetConfigInvalid:
            self.refused = str(exc)
        else:
            return
        if seen != self._seen:
            log.error(
                "ignoring the fleet config in Redis: %s",
                exc,
                extra=event("config-refused", reason=str(exc)),
            )
        self._seen = seen

    def _adopt(self, holds: Stored) -> None:
        first = self._held is None  # the file's routing is what this gateway had until now
        same = self._held is not None and self._held.digest == holds.digest
        if not same:  # else the same document at another version (put back, or settled ours)
            try:
                new = config_doc.apply_doc(self.config, holds.doc or {})
            except Exception as exc:  # a bad document must not take the gateway down
                # Nor pass for what it routes on: the version, /admin/config and the parent's
                # last-known document (a replaced worker's start) stay the routed one's. Said
                # once: the loop's mark is this document's until Redis holds another.
                mark = (str(holds.version), holds.stored_digest)
                self.refused = f"version {holds.version}: {exc}"
                if self._seen != mark:
                    sync_log.refused(holds.version, exc, self.version)
                self._seen = mark
                return
        self._held, self.version = holds, holds.version
        last_known.save(holds, self._fleet)
        if same:
            return
        self.replace_config(new)
        log.info(
            "applied fleet config version %d",
            holds.version,
            extra=event("config-applied", change=True, config_version=holds.version),
        )
        # Compared as this release writes it (defaults filled in), not as Redis holds it.
        differs = config_doc.file_differences(self._file_doc, config_doc.routing_doc(new))
        if first and differs:
            sync_log.file_ignored(differs, self.config.redis.deployment, holds.version)

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
        region = self.config.gateway.region
        return observations.view(self, self.gateway_id, region, self.version, self.observer)

    async def _exchange_observations(self) -> tuple[str | None, str | None]:
        """Write ours, read everyone's (a vote each), and read the config's version and digest
        as Redis holds them (None: no config)."""
        r = self.redis()
        if not self.config.redis.share_health:  # the config alone is shared (README, "One fleet")
            return await config_io.mark(r, self.keys)
        mine = json.dumps(self._my_view())
        ttl_s = self.config.redis.observation_ttl_s
        views, version, digest = await observations.exchange(
            r, self.keys, self.observer, mine, ttl_s, self.clock
        )
        self._merge(views)
        return version, digest

    def _merge(self, views: list[dict[str, Any]]) -> None:
        """Each gateway's vote on each upstream, and the upstreams most gateways see down; and
        the ejections of this gateway's other workers, taken here too."""
        now = time.monotonic()
        max_s = self.config.outlier.max_ejection_s
        siblings = observations.sibling_ejections(views, self.gateway_id, max_s, now, self.observer)
        for uid, until in list(self._adopted.items()):
            if siblings.get(uid) != until:  # ended early (or ended, or ejected anew) there
                self.release_ejection(uid, until, now)
                del self._adopted[uid]
        for uid, until in siblings.items():
            if self.adopt_ejection(uid, until, now):
                self._adopted[uid] = until
        seen = observations.votes(views)
        down = observations.down(seen)
        self.observations = seen
        if down != self.fleet_down:
            sync_log.fleet_votes(self.fleet_down, down)
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

    def _applied(self, stored: Stored, new: Config, entry: dict[str, Any]) -> dict[str, Any]:
        if stored.version > self.version:  # apply here at once; the others hear it published
            self._held, self.version, self.refused = stored, stored.version, None
            last_known.save(stored, self._fleet)
            self._seen = (str(stored.version), stored.digest)
            self.replace_config(new)
        return dict(entry)

    async def audit(self, count: int) -> list[dict[str, str]]:
        return await config_io.read_audit(self.redis(), self.keys, count)

    async def restore(self, who: str) -> dict[str, Any]:
        if self._held is None:  # its own file, never the fleet's: not one to impose on it
            raise NothingToRestore("nothing to restore: this gateway never routed on the fleet's")
        r, held = self.redis(), self._held
        stored, entry = await put_back(r, self.keys, self.config, held, who)
        return self._applied(stored, self.config, entry)

    async def end_session(self, sid: str, until: float) -> None:
        """Here at once; the fleet at its next refresh. Raises RedisError or OSError when
        Redis is away: ended here only, which the logout says."""
        await super().end_session(sid, until)
        await sessions.end(self.redis(), self.keys, sid, until, time.time())
