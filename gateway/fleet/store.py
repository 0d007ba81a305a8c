"""What a state store is. Two sides, because they have two kinds of caller:

- ``RoutingState``: synchronous on purpose. The request path and the watchers read the
  snapshot and record outcomes without ever waiting on shared state.
- ``FleetControl``: asynchronous. Start and stop the background sync, apply an operator's
  change (fleet-wide with Redis), read the audit trail.

The store is the one owner of the routing config: whoever needs it reads ``config`` (or the
``policy`` derived from it) here, and a change (fleet config, DNS discovery) goes through
``replace_config``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.config import Config, Upstream
from gateway.routing.health import UpstreamHealth
from gateway.routing.load import LoadReading, LoadState
from gateway.routing.members import Address
from gateway.routing.model import Snapshot
from gateway.routing.policy import Policy


class RoutingState(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def policy(self) -> Policy: ...
    def replace_config(self, config: Config) -> None: ...
    def set_members(
        self,
        upstream_id: str,
        addresses: tuple[Address, ...],
        shares: Mapping[Address, float] | None = None,
    ) -> bool: ...
    def member_shares(self) -> dict[str, float]: ...
    def snapshot(self, now: float) -> Snapshot: ...
    def upstreams(self) -> tuple[Upstream, ...]: ...
    def takes_new_work(self, upstream_id: str) -> bool: ...
    def health(self, upstream_id: str) -> UpstreamHealth: ...
    def record_probe(
        self, upstream_id: str, ok: bool, rtt_ms: float | None, error: str | None
    ) -> None: ...
    def record_result(self, upstream_id: str, ok: bool, now: float) -> bool: ...
    def end_ejection(self, upstream_id: str, now: float) -> bool: ...
    def ejection_over(self, upstream_id: str, now: float) -> bool: ...
    def record_loads(self, readings: Mapping[str, LoadReading], now: float) -> None: ...
    def load(self, upstream_id: str) -> LoadState | None: ...
    def acquire(self, upstream_id: str) -> None: ...
    def release(self, upstream_id: str) -> None: ...
    def in_flight(self) -> Mapping[str, int]: ...

    version: int
    stale_since: float | None  # unix time shared state went stale; None = fresh or local
    # False while a fleet's gateway never synced: stale, it routes on its own file's config,
    # not on a snapshot of the fleet's (/readyz says which).
    synced_once: bool
    # Why the fleet's document in Redis is not routed on (a gateway refused it: a hand edit,
    # a release that cannot read it); None: routed on, or none to route on.
    refused: str | None
    fleet_down: frozenset[str]  # upstreams most fresh gateways see down
    observations: dict[str, dict[str, bool]]  # upstream -> gateway -> healthy (explain)
    joined: asyncio.Event  # set when replace_config adds an upstream (the prober's cue)


class FleetControl(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def update_upstream(
        self, uid: str, changes: dict[str, Any], who: str
    ) -> dict[str, Any]: ...
    async def update_region(
        self, rid: str, changes: dict[str, Any], who: str
    ) -> dict[str, Any]: ...
    async def audit(self, count: int) -> list[dict[str, str]]: ...
    async def restore(self, who: str) -> dict[str, Any]:
        """Put the document this gateway routes on back over a fleet document in Redis that
        it refuses (``refused``); the audit entry."""
        ...

    async def end_session(self, sid: str, until: float) -> None: ...
    def session_ended(self, sid: str, until: float) -> bool: ...


class StateStore(RoutingState, FleetControl, Protocol):
    """Both sides: what the runtime holds."""
