"""Routing state: the StateStore Protocol and the embedded in-memory store.

All methods are synchronous on purpose: the request path must never wait on shared state.
A Redis store (issue 5) implements the same Protocol over a local snapshot that a background
task keeps fresh, so nothing here changes for the router or the proxy.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from gateway.config import Config, Upstream
from gateway.defaults import AUDIT_MAX_LEN
from gateway.health import UpstreamHealth, apply_probe, apply_result
from gateway.load_metrics import LoadReading
from gateway.members import Address, expand
from gateway.router import RegionPoint, Snapshot, UpstreamView


@dataclass(slots=True)
class LoadState:
    """Latest load of one upstream, from polling its /metrics."""

    at: float  # monotonic time of the sample
    queue_depth: float | None
    ttft_ms: float | None  # EWMA of the mean TTFT between polls
    ttft_sum_s: float | None  # last cumulative readings, to take differences
    ttft_count: float | None
    # When a request last confirmed ttft_ms. A backend shunned for a high TTFT gets no
    # requests, so nothing would ever show that it recovered: an unconfirmed estimate
    # expires like a stale sample, and the backend is tried (and measured) again.
    ttft_at: float = 0.0
    kv_usage: float | None = None  # shown in /routing-table and fleet observations


class StateStore(Protocol):
    @property
    def config(self) -> Config: ...
    def replace_config(self, config: Config) -> None: ...
    def set_members(self, upstream_id: str, addresses: tuple[Address, ...]) -> bool: ...
    def snapshot(self, now: float) -> Snapshot: ...
    def upstreams(self) -> tuple[Upstream, ...]: ...
    def health(self, upstream_id: str) -> UpstreamHealth: ...
    def record_probe(
        self, upstream_id: str, ok: bool, rtt_ms: float | None, error: str | None
    ) -> None: ...
    def record_result(self, upstream_id: str, ok: bool, now: float) -> bool: ...
    def record_loads(self, readings: Mapping[str, LoadReading], now: float) -> None: ...
    def load(self, upstream_id: str) -> LoadState | None: ...
    def acquire(self, upstream_id: str) -> None: ...
    def release(self, upstream_id: str) -> None: ...
    def in_flight(self) -> Mapping[str, int]: ...

    # Fleet side: background sync, versioned operator changes and their audit trail.
    version: int
    stale_since: float | None  # unix time shared state went stale; None = fresh or local
    on_config: Callable[[Config], None]  # applies a routing config change
    fleet_down: frozenset[str]  # upstreams most fresh observers see down
    observations: dict[str, dict[str, bool]]  # upstream -> gateway -> healthy (explain)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def update_upstream(
        self, uid: str, changes: dict[str, Any], who: str
    ) -> dict[str, Any]: ...
    async def audit(self, count: int) -> list[dict[str, str]]: ...


class MemoryStateStore:
    """One gateway's state, in process memory: the zero-setup default."""

    def __init__(self, config: Config) -> None:
        self._health: dict[str, UpstreamHealth] = {}
        self._in_flight: dict[str, int] = {}
        self._load: dict[str, LoadState] = {}
        self._members: dict[str, tuple[Address, ...]] = {}  # discovery: id -> addresses
        self._snap: Snapshot | None = None
        self.version = 1
        self.stale_since: float | None = None
        self.on_config = self.replace_config
        self.fleet_down: frozenset[str] = frozenset()  # one gateway: no fleet opinion
        self.observations: dict[str, dict[str, bool]] = {}
        self._audit: collections.deque[dict[str, str]] = collections.deque(maxlen=AUDIT_MAX_LEN)
        self.replace_config(config)

    async def start(self) -> None:
        """Nothing to sync: this store is the whole truth."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def update_upstream(self, uid: str, changes: dict[str, Any], who: str) -> dict[str, Any]:
        from gateway import fleet_config  # the same validation as the fleet's

        doc, before, after = fleet_config.change_upstream(
            fleet_config.routing_doc(self._config), uid, changes
        )
        self.on_config(fleet_config.apply_doc(self._config, doc))
        self.version += 1
        entry = fleet_config.audit_entry(who, f"upstream {uid}", before, after, self.version)
        self._audit.appendleft({"id": str(self.version), **entry})
        return dict(entry)

    async def audit(self, count: int) -> list[dict[str, str]]:
        return list(self._audit)[:count]

    def replace_config(self, config: Config) -> None:
        """Take new regions, upstreams, weights, drains (a fleet config change, a DNS change).
        Health and in-flight counts of upstreams that stay are kept."""
        self._config = config
        self._upstreams = expand(config.upstreams, self._members)
        self._regions = MappingProxyType(
            {r.id: RegionPoint(r.id, r.latitude, r.longitude) for r in config.regions}
        )
        self._health = {u.id: self._health.get(u.id) or UpstreamHealth() for u in self._upstreams}
        # In-flight entries of removed upstreams stay until their requests end.
        for uid in self._health:
            self._in_flight.setdefault(uid, 0)
        self._snap = None
        self._valid_until = math.inf  # an ejection ends at this time: rebuild then

    # Who applies a config change: the runtime points this at its apply_config, so the
    # policy (residency) follows along with the upstreams.
    on_config: Callable[[Config], None]

    @property
    def config(self) -> Config:
        """The declared config (file or fleet); upstreams() has discovery expanded."""
        return self._config

    def set_members(self, upstream_id: str, addresses: tuple[Address, ...]) -> bool:
        """New DNS answer for a discovery upstream; True when the pool changed."""
        if self._members.get(upstream_id) == addresses:
            return False
        self._members[upstream_id] = addresses
        self.replace_config(self._config)
        return True

    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def health(self, upstream_id: str) -> UpstreamHealth:
        # An upstream removed by a config change while a probe or request was out.
        return self._health.get(upstream_id) or UpstreamHealth()

    def in_flight(self) -> Mapping[str, int]:
        return self._in_flight

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
        cfg = self._config.outlier
        out = sum(1 for h in self._health.values() if h.ejected(now))
        cap = max(1, math.floor(cfg.max_ejected_share * len(self._health)))
        ejected = apply_result(self._health[upstream_id], ok, now, cfg, may_eject=out < cap)
        if ejected:
            self._snap = None
        return ejected

    def load(self, upstream_id: str) -> LoadState | None:
        return self._load.get(upstream_id)

    def record_load(self, upstream_id: str, reading: LoadReading, now: float) -> None:
        self.record_loads({upstream_id: reading}, now)

    def record_loads(self, readings: Mapping[str, LoadReading], now: float) -> None:
        """One polling round's samples together: the snapshot is rebuilt once per round,
        not once per upstream (a pool of 300 polled 4x a second would otherwise rebuild a
        300-entry snapshot 1,200 times a second)."""
        for upstream_id, reading in readings.items():
            if upstream_id in self._health:
                self._load[upstream_id] = self._next_load(upstream_id, reading, now)
        self._snap = None

    def _next_load(self, upstream_id: str, reading: LoadReading, now: float) -> LoadState:
        prev = self._load.get(upstream_id)
        max_age = self._config.load.max_age_s
        # An estimate past its age is not blended into the next one: it restarts from the
        # first new measurement.
        ttft = prev.ttft_ms if prev and now < prev.ttft_at + max_age else None
        ttft_at = prev.ttft_at if prev else now
        if (
            prev
            and reading.ttft_sum_s is not None
            and reading.ttft_count is not None
            and prev.ttft_sum_s is not None
            and prev.ttft_count is not None
            and reading.ttft_count > prev.ttft_count
        ):
            # The mean TTFT of the requests that finished their first token since last poll.
            mean_ms = (
                1000
                * (reading.ttft_sum_s - prev.ttft_sum_s)
                / (reading.ttft_count - prev.ttft_count)
            )
            a = self._config.load.ttft_ewma_alpha
            ttft = mean_ms if ttft is None else a * mean_ms + (1 - a) * ttft
            ttft_at = now
        return LoadState(
            now,
            reading.queue_depth,
            ttft,
            reading.ttft_sum_s,
            reading.ttft_count,
            ttft_at,
            reading.kv_usage,
        )

    def acquire(self, upstream_id: str) -> None:
        self._in_flight[upstream_id] = self._in_flight.get(upstream_id, 0) + 1

    def release(self, upstream_id: str) -> None:
        left = self._in_flight[upstream_id] - 1
        if left or upstream_id in self._health:
            self._in_flight[upstream_id] = left
        else:
            del self._in_flight[upstream_id]  # removed upstream, last request done
