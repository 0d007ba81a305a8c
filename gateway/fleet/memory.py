"""One gateway's state, in process memory: the zero-setup default, and the local snapshot the
Redis store builds on.

It owns the routing config (and the policy derived from it), health and load per upstream,
DNS-discovered members, and this gateway's in-flight counts. The snapshot the router reads is
rebuilt only when something it shows changed, or when an ejection or a load sample expires.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config, Upstream
from gateway.defaults import AUDIT_MAX_LEN
from gateway.errors import NothingToRestore
from gateway.fleet import config_doc, last_known
from gateway.fleet.sessions import EndedSessions
from gateway.fleet.settle import Stored
from gateway.routing.health import (
    UpstreamHealth,
    apply_probe,
    apply_result,
    ejection_over,
    end_ejection,
)
from gateway.routing.load import LoadReading, LoadState, next_load
from gateway.routing.members import Address, expand, member_id, split_member
from gateway.routing.model import RegionPoint, Snapshot, UpstreamView
from gateway.routing.policy import Policy, policy_from


class MemoryStateStore:
    def __init__(self, config: Config) -> None:
        self._health: dict[str, UpstreamHealth] = {}
        self._in_flight: dict[str, int] = {}
        self._load: dict[str, LoadState] = {}
        self._upstreams: tuple[Upstream, ...] = ()
        self._members: dict[str, tuple[Address, ...]] = {}  # discovery: id -> addresses
        self._shares: dict[str, dict[Address, float]] = {}  # their SRV weights' shares
        self._snap: Snapshot | None = None
        self.version = 1
        self.stale_since: float | None = None
        self.synced_once = True  # this store is the whole truth: nothing to sync with
        self.refused: str | None = None  # no fleet document to refuse
        self.fleet_down: frozenset[str] = frozenset()  # one gateway: no fleet opinion
        self.observations: dict[str, dict[str, bool]] = {}
        self._audit: collections.deque[dict[str, str]] = collections.deque(maxlen=AUDIT_MAX_LEN)
        self.sessions = EndedSessions()  # dashboard logouts (fleet.sessions)
        # The upstreams of the first config may take traffic before their first probe (the
        # start-up's first look probes them before serving); any added later wait for one.
        self._starting = True
        # Set when replace_config adds an upstream: the prober probes it at once
        # (gateway.watch.prober), with no polling while nothing joins.
        self.joined = asyncio.Event()
        self.replace_config(config)
        self._kept_as = last_known.memory_fleet(config_doc.routing_doc(config))
        self._resume()
        self._starting = False

    def _resume(self) -> None:
        """The operator changes of the worker this one replaces (fleet.last_known)."""
        kept = last_known.load(self._kept_as)
        if kept is not None and kept.doc is not None:
            self.replace_config(config_doc.apply_doc(self._config, kept.doc))
            self.version = kept.version

    # --- control side ----------------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to sync: this store is the whole truth."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def update_upstream(self, uid: str, changes: dict[str, Any], who: str) -> dict[str, Any]:
        # The same validation as the fleet's.
        now = config_doc.routing_doc(self._config)
        doc, before, after = config_doc.change_upstream(now, uid, changes)
        return self._changed(f"upstream {uid}", now, doc, before, after, who)

    async def update_region(self, rid: str, changes: dict[str, Any], who: str) -> dict[str, Any]:
        now = config_doc.routing_doc(self._config)
        doc, before, after = config_doc.change_region(now, rid, changes)
        return self._changed(f"region {rid}", now, doc, before, after, who)

    def _changed(
        self,
        what: str,
        now: dict[str, Any],
        doc: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        who: str,
    ) -> dict[str, Any]:
        if doc == now:
            return dict(config_doc.unchanged(who, what, before, self.version))
        self.replace_config(config_doc.apply_doc(self._config, doc))
        self.version += 1
        last_known.save(Stored(doc, self.version, time.time()), self._kept_as)
        entry = config_doc.audit_entry(who, what, before, after, self.version)
        self._audit.appendleft({"id": str(self.version), **entry})
        return dict(entry)

    async def audit(self, count: int) -> list[dict[str, str]]:
        return list(self._audit)[:count]

    async def restore(self, who: str) -> dict[str, Any]:
        raise NothingToRestore(
            "nothing to restore: this gateway keeps its state in memory (no redis.url), so "
            "the document it routes on is the only one"
        )

    async def end_session(self, sid: str, until: float) -> None:
        """A dashboard logout: the session is no session from now on (fleet.sessions)."""
        self.sessions.end(sid, until, time.time())

    def session_ended(self, sid: str, until: float) -> bool:
        return self.sessions.ended(sid, until)

    # --- the routing config ----------------------------------------------------------------
    def replace_config(self, config: Config) -> None:
        """Take new regions, upstreams, weights, drains (of upstreams and regions), residency
        (a fleet config change, a DNS change). Health and in-flight counts of upstreams that
        stay are kept."""
        self._config = config
        self._policy = policy_from(config)
        servers = {u.id: _server(u.url) for u in self._upstreams}
        self._upstreams = expand(config.upstreams, self._members, self._shares)
        self._regions = MappingProxyType(
            {r.id: RegionPoint(r.id, r.latitude, r.longitude) for r in config.regions}
        )
        # Its members' flags already say drained (config_doc writes them so); read as well in
        # case a file lists a region without them.
        # One that appears now (a DNS member, an upstream a fleet config change adds) may have
        # been published before its server finished loading: not routable until a probe has
        # seen it answer (UpstreamHealth.await_probe), so its first requests are not refused.
        # One whose URL changed is another server: its health, RTT, ejection and load samples
        # were the old one's (it kept an ejection the new URL never earned).
        moved = {
            u.id for u in self._upstreams if u.id in servers and servers[u.id] != _server(u.url)
        }
        before = {uid: h for uid, h in self._health.items() if uid not in moved}
        for uid in moved:
            self._load.pop(uid, None)
        self._health = {
            u.id: before.get(u.id) or UpstreamHealth(await_probe=not self._starting)
            for u in self._upstreams
        }
        if not self._starting and not self._health.keys() <= before.keys():
            self.joined.set()
        # In-flight entries of removed upstreams stay until their requests end.
        for uid in self._health:
            self._in_flight.setdefault(uid, 0)
        self._snap = None
        self._valid_until = math.inf  # an ejection ends at this time: rebuild then

    @property
    def config(self) -> Config:
        """The declared config (file or fleet); upstreams() has discovery expanded."""
        return self._config

    @property
    def policy(self) -> Policy:
        return self._policy

    def set_members(
        self,
        upstream_id: str,
        addresses: tuple[Address, ...],
        shares: Mapping[Address, float] | None = None,
    ) -> bool:
        """New DNS answer for a discovery upstream, with each member's share of its weight
        (SRV's weights; none: equal); True when the pool changed."""
        weights = dict(shares or {})
        if self._members.get(upstream_id) == addresses and self._shares.get(upstream_id) == (
            weights
        ):
            return False
        self._members[upstream_id] = addresses
        self._shares[upstream_id] = weights
        self.replace_config(self._config)
        return True

    def member_shares(self) -> dict[str, float]:
        """Each DNS member's share of its upstream's weight (SRV weights), by member id; a
        member not here has an equal share (1)."""
        return {
            member_id(uid, host, port): share
            for uid, shares in self._shares.items()
            for (host, port), share in shares.items()
        }

    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def takes_new_work(self, upstream_id: str) -> bool:
        """Configured and not drained (its region neither), now: what a failover checks, its
        order made when the request was routed."""
        return any(u.id == upstream_id and not u.drained for u in self._upstreams)

    # --- the read side ---------------------------------------------------------------------
    def health(self, upstream_id: str) -> UpstreamHealth:
        # An upstream removed by a config change while a probe or request was out.
        return self._health.get(upstream_id) or UpstreamHealth()

    def in_flight(self) -> Mapping[str, int]:
        return self._in_flight

    def load(self, upstream_id: str) -> LoadState | None:
        return self._load.get(upstream_id)

    def snapshot(self, now: float) -> Snapshot:
        if self._snap is None or now >= self._valid_until:
            self._snap = self._build(now)
        return self._snap

    def _build(self, now: float) -> Snapshot:
        views = []
        max_age = self._config.load.max_age_s
        ends = [h.ejected_until for h in self._health.values() if h.ejected_until > now]
        ends += [
            t + max_age
            for ls in self._load.values()
            for t in (ls.at, ls.ttft_at)
            if t + max_age > now
        ]
        self._valid_until = min(ends, default=math.inf)
        for u in self._upstreams:
            h = self._health[u.id]
            ls = self._load.get(u.id)
            # Stale samples are ignored; the same strict bound as the expiry scheduled above,
            # so a sample that stops being fresh always triggers a rebuild.
            fresh = ls is not None and now < ls.at + max_age
            views.append(
                UpstreamView(
                    id=u.id,
                    region=u.region,
                    models=frozenset(u.models),
                    weight=u.weight,
                    bias_ms=u.bias_ms,
                    # Its region's drain included: Config sets the flag of every upstream
                    # of a region in drained_regions.
                    drained=u.drained,
                    healthy=h.healthy(now),
                    rtt_ms=h.rtt_ms,
                    ttft_ms=ls.ttft_ms if fresh and ls and now < ls.ttft_at + max_age else None,
                    queue_depth=ls.queue_depth if fresh and ls else None,
                    slots=u.slots,
                    url=u.url.rstrip("/"),
                )
            )
        return Snapshot(tuple(views), self._regions, self._in_flight)

    # --- observations ----------------------------------------------------------------------
    def record_probe(
        self, upstream_id: str, ok: bool, rtt_ms: float | None, error: str | None
    ) -> None:
        if upstream_id not in self._health:
            return
        apply_probe(self._health[upstream_id], ok, rtt_ms, error, self._config.health)
        # Even without a health change the RTT moved and it feeds scores; a rebuild per
        # probe (one per upstream per interval) is cheap.
        self._snap = None

    def record_result(self, upstream_id: str, ok: bool, now: float) -> bool:
        if upstream_id not in self._health:
            return False
        # Only a failure can eject: a success need not count the pool's ejected.
        may_eject = not ok and self._room_to_eject(upstream_id, now)
        cfg = self._config.outlier
        ejected = apply_result(self._health[upstream_id], ok, now, cfg, may_eject=may_eject)
        if ejected:
            self._snap = None
        return ejected

    def adopt_ejection(self, upstream_id: str, until: float, now: float) -> bool:
        """A sibling worker's ejection of ``upstream_id``, to ``until`` (monotonic), taken here
        too, within the pool's cap as one made here would be (outlier.max_ejected_share).
        Its cause stays None: the one that ejected tells it, probes it and tells its return
        (fleet.redis_store). False where it is not taken."""
        h = self._health.get(upstream_id)
        # Not over one made here (its cause set): that one is this worker's to publish, probe
        # and end, and a sibling's later deadline published as its own came back after the
        # sibling's probe had ended it.
        if h is None or h.ejected_until >= until or h.ejection_cause is not None:
            return False
        if not h.ejected(now) and not self._room_to_eject(upstream_id, now):
            return False
        h.ejected_until = until
        self._snap = None
        return True

    def _room_to_eject(self, upstream_id: str, now: float) -> bool:
        """Whether ``upstream_id`` may go out too: in the pool of each model it serves (its
        upstreams not drained), at most outlier.max_ejected_share (always at least one) is
        ejected at once, as Envoy caps each cluster. Counted over the whole gateway, one model's
        ejected upstream kept another model's failing one in rotation, and drained upstreams,
        which serve nothing, raised the cap."""
        share = self._config.outlier.max_ejected_share
        models = next((u.models for u in self._upstreams if u.id == upstream_id), ())
        for model in models:
            pool = [u.id for u in self._upstreams if model in u.models and not u.drained]
            out = sum(1 for uid in pool if uid != upstream_id and self._health[uid].ejected(now))
            if out >= max(1, math.floor(share * len(pool))):
                return False
        return True

    def release_ejection(self, upstream_id: str, until: float, now: float) -> None:
        """The sibling's ejection to ``until`` ended before its time (its completion probe):
        here too, unless this worker has since ejected it itself."""
        h = self._health.get(upstream_id)
        if h is not None and h.ejection_cause is None and h.ejected_until == until > now:
            h.ejected_until = now
            self._snap = None

    def end_ejection(self, upstream_id: str, now: float) -> bool:
        h = self._health.get(upstream_id)
        if h is None or not end_ejection(h, now):
            return False
        self._snap = None
        return True

    def ejection_over(self, upstream_id: str, now: float) -> bool:
        # The snapshot already rebuilt itself when the ejection ran out (_valid_until).
        h = self._health.get(upstream_id)
        return h is not None and ejection_over(h, now)

    def record_load(self, upstream_id: str, reading: LoadReading, now: float) -> None:
        self.record_loads({upstream_id: reading}, now)

    def record_loads(self, readings: Mapping[str, LoadReading], now: float) -> None:
        """One polling round's samples together: the snapshot is rebuilt once per round,
        not once per upstream (a pool of 300 polled 4x a second would otherwise rebuild a
        300-entry snapshot 1,200 times a second)."""
        lc = self._config.load
        for upstream_id, reading in readings.items():
            if upstream_id in self._health:
                prev = self._load.get(upstream_id)
                self._load[upstream_id] = next_load(
                    prev, reading, now, lc.max_age_s, lc.ttft_ewma_alpha
                )
        self._snap = None

    def acquire(self, upstream_id: str) -> None:
        self._in_flight[upstream_id] = self._in_flight.get(upstream_id, 0) + 1

    def release(self, upstream_id: str) -> None:
        left = self._in_flight[upstream_id] - 1
        if left or upstream_id in self._health:
            self._in_flight[upstream_id] = left
        else:
            del self._in_flight[upstream_id]  # removed upstream, last request done


def _server(url: str) -> tuple[str, str, int | None, str, Address | None]:
    """The server a URL names: not its credentials (a rotated password is the same server),
    nor a trailing slash; a DNS member's, its address too (split as text first: urlsplit
    refuses "name|[fd00::5]:443" on CPythons with CVE-2025-0938's fix, routing.members)."""
    named, address = split_member(url)
    p = urlsplit(named)
    return p.scheme, p.hostname or "", p.port, p.path.rstrip("/"), address
