"""Routing state: the StateStore Protocol and the embedded in-memory store.

All methods are synchronous on purpose: the request path must never wait on shared state.
A Redis store (issue 5) implements the same Protocol over a local snapshot that a background
task keeps fresh, so nothing here changes for the router or the proxy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from gateway.config import Config, Upstream
from gateway.health import UpstreamHealth, apply_probe, apply_result
from gateway.router import RegionPoint, Snapshot, UpstreamView


class StateStore(Protocol):
    def snapshot(self, now: float) -> Snapshot: ...
    def upstreams(self) -> tuple[Upstream, ...]: ...
    def health(self, upstream_id: str) -> UpstreamHealth: ...
    def record_probe(
        self, upstream_id: str, ok: bool, rtt_ms: float | None, error: str | None
    ) -> None: ...
    def record_result(self, upstream_id: str, ok: bool, now: float) -> bool: ...
    def acquire(self, upstream_id: str) -> None: ...
    def release(self, upstream_id: str) -> None: ...
    def in_flight(self) -> Mapping[str, int]: ...


class MemoryStateStore:
    """One gateway's state, in process memory: the zero-setup default."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._upstreams = config.upstreams
        self._regions = MappingProxyType(
            {r.id: RegionPoint(r.id, r.latitude, r.longitude) for r in config.regions}
        )
        self._health = {u.id: UpstreamHealth() for u in self._upstreams}
        self._in_flight: dict[str, int] = dict.fromkeys(self._health, 0)
        self._snap: Snapshot | None = None
        self._valid_until = math.inf  # an ejection ends at this time: rebuild then

    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def health(self, upstream_id: str) -> UpstreamHealth:
        return self._health[upstream_id]

    def in_flight(self) -> Mapping[str, int]:
        return self._in_flight

    def snapshot(self, now: float) -> Snapshot:
        if self._snap is None or now >= self._valid_until:
            self._snap = self._build(now)
        return self._snap

    def _build(self, now: float) -> Snapshot:
        views = []
        ends = [h.ejected_until for h in self._health.values() if h.ejected_until > now]
        self._valid_until = min(ends, default=math.inf)
        for u in self._upstreams:
            h = self._health[u.id]
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
                    slots=u.slots,
                )
            )
        return Snapshot(tuple(views), self._regions, self._in_flight)

    def record_probe(
        self, upstream_id: str, ok: bool, rtt_ms: float | None, error: str | None
    ) -> None:
        apply_probe(self._health[upstream_id], ok, rtt_ms, error, self._config.health)
        # Even without a health change the RTT moved and it feeds scores; a rebuild per
        # probe (one per upstream per interval) is cheap.
        self._snap = None

    def record_result(self, upstream_id: str, ok: bool, now: float) -> bool:
        ejected = apply_result(self._health[upstream_id], ok, now, self._config.outlier)
        if ejected:
            self._snap = None
        return ejected

    def acquire(self, upstream_id: str) -> None:
        self._in_flight[upstream_id] += 1

    def release(self, upstream_id: str) -> None:
        self._in_flight[upstream_id] -= 1
