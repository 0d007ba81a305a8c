"""The router: a pure function from request facts, a state snapshot and a policy to a decision.

No I/O, no clock, no randomness but the ``rng`` it is handed (DESIGN.md §3). Steps: filter
(model, residency, drain, health with a panic threshold, weight-0 standby), score by expected
time to first byte, choose by weighted power-of-two-choices among near-equal scores, order the
rest as the failover list, and explain every candidate and exclusion.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from geodb.distance import est_rtt_ms
from geodb.location import Location

Origin = Literal["client", "self"]
NetSource = Literal["measured", "distance"]


@dataclass(frozen=True, slots=True)
class RegionPoint:
    id: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """One upstream as the router sees it: config merged with the latest observations."""

    id: str
    region: str
    models: frozenset[str]
    weight: float = 1.0
    bias_ms: float = 0.0
    drained: bool = False
    healthy: bool = True
    rtt_ms: float | None = None  # measured from this gateway (EWMA of probes)
    ttft_ms: float | None = None  # backend's time to first token (EWMA), when known
    queue_depth: float | None = None  # requests waiting at the backend, when known
    slots: int = 16
    url: str = ""  # base URL, no trailing slash: the proxy's target, not a routing input


@dataclass(frozen=True, slots=True)
class Snapshot:
    upstreams: tuple[UpstreamView, ...]
    regions: Mapping[str, RegionPoint]
    # Requests this gateway has open to each upstream. It changes on every request, so the
    # store hands over its live counter mapping instead of rebuilding the snapshot each time.
    in_flight: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Residency:
    name: str
    countries: frozenset[str]
    continents: frozenset[str]
    regions: frozenset[str]

    def matches(self, loc: Location) -> bool:
        return (loc.country is not None and loc.country.upper() in self.countries) or (
            loc.continent is not None and loc.continent.upper() in self.continents
        )


@dataclass(frozen=True, slots=True)
class Policy:
    origin: Origin
    self_region: str
    residency: tuple[Residency, ...] = ()
    tolerance_ms: float = 15.0
    tolerance_ratio: float = 0.15
    panic_threshold: float = 0.5


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str
    location: Location


class Outcome(StrEnum):
    ROUTED = "routed"
    MODEL_NOT_FOUND = "model_not_found"  # no upstream anywhere serves the model
    NO_CANDIDATE = "no_candidate"  # some serve it, none is usable (health, drain, residency)


class Candidate(NamedTuple):
    """An immutable value like the dataclasses here, but a NamedTuple: one is built per
    upstream per request, and tuple construction is ~3x cheaper than a frozen dataclass's."""

    upstream: UpstreamView
    score_ms: float
    net_ms: float
    net_source: NetSource
    load_ms: float
    healthy: bool
    standby: bool


@dataclass(frozen=True, slots=True)
class Exclusion:
    upstream_id: str
    region: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    order: tuple[Candidate, ...]  # order[0] is the choice; the rest is the failover list
    excluded: tuple[Exclusion, ...]
    reason: str  # why order[0]: lowest-score, p2c-in-band, standby, panic
    residency: str | None = None  # the rule that applied, if any
    band: tuple[str, ...] = field(default=())  # upstream ids within the tolerance band

    @property
    def chosen(self) -> Candidate | None:
        return self.order[0] if self.order else None

    def header(self) -> str:
        """Summary for the ``geogate-route`` response header."""
        c = self.chosen
        if c is None:
            return f"outcome={self.outcome}"
        parts = [
            f"region={c.upstream.region}",
            f"upstream={c.upstream.id}",
            f"reason={self.reason}",
        ]
        if self.residency:
            parts.append(f"residency={self.residency}")
        return "; ".join(parts)

    def explain(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "residency": self.residency,
            "band": list(self.band),
            "candidates": [
                {
                    "upstream": c.upstream.id,
                    "region": c.upstream.region,
                    "score_ms": round(c.score_ms, 2),
                    "net_ms": round(c.net_ms, 2),
                    "net_source": c.net_source,
                    "load_ms": round(c.load_ms, 2),
                    "bias_ms": c.upstream.bias_ms,
                    "weight": c.upstream.weight,
                    "healthy": c.healthy,
                    "standby": c.standby,
                }
                for c in self.order
            ],
            "excluded": [
                {"upstream": e.upstream_id, "region": e.region, "reason": e.reason}
                for e in self.excluded
            ],
        }


class _NetModel:
    """Network cost of each candidate, the distance estimate memoised per region: a request
    sees at most a handful of regions but may score hundreds of upstreams."""

    __slots__ = ("_cache", "_measured", "_regions", "_src")

    def __init__(self, facts: RequestFacts, snap: Snapshot, policy: Policy) -> None:
        self._regions = snap.regions
        self._measured = policy.origin == "self"
        if self._measured:
            src = snap.regions[policy.self_region]
            self._src = (src.latitude, src.longitude)
        else:
            self._src = (facts.location.latitude, facts.location.longitude)
        self._cache: dict[str, float] = {}

    def cost(self, u: UpstreamView) -> tuple[float, NetSource]:
        if self._measured and u.rtt_ms is not None:
            return u.rtt_ms, "measured"
        est = self._cache.get(u.region)
        if est is None:
            dst = self._regions[u.region]
            est = est_rtt_ms(self._src[0], self._src[1], dst.latitude, dst.longitude)
            self._cache[u.region] = est
        return est, "distance"


def _candidate(u: UpstreamView, net_model: _NetModel) -> Candidate:
    net, source = net_model.cost(u)
    load = 0.0
    if u.ttft_ms is not None:
        load = u.ttft_ms * (1.0 + (u.queue_depth or 0.0) / u.slots)
    return Candidate(u, net + load + u.bias_ms, net, source, load, u.healthy, u.weight <= 0)


def _by_score(cands: Sequence[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (c.score_ms, c.upstream.id))


def _weighted_pick(cands: Sequence[Candidate], rng: random.Random) -> int:
    total = sum(c.upstream.weight for c in cands)
    x = rng.random() * total
    for i, c in enumerate(cands):
        x -= c.upstream.weight
        if x < 0:
            return i
    return len(cands) - 1  # float rounding at the very top of the range


def _p2c(band: list[Candidate], in_flight: Mapping[str, int], rng: random.Random) -> Candidate:
    """Weighted power of two choices: two draws in proportion to weight, fewer in-flight
    per unit of weight wins, a tie goes to the first draw. With equal load the first draw
    decides, so the traffic share of each is exactly its share of the weight."""
    i = _weighted_pick(band, rng)
    rest = band[:i] + band[i + 1 :]
    a, b = band[i], rest[_weighted_pick(rest, rng)]
    load_a = in_flight.get(a.upstream.id, 0) / a.upstream.weight
    load_b = in_flight.get(b.upstream.id, 0) / b.upstream.weight
    return b if load_b < load_a else a


def route(facts: RequestFacts, snap: Snapshot, policy: Policy, rng: random.Random) -> Decision:
    excluded: list[Exclusion] = []
    serving = [u for u in snap.upstreams if facts.model in u.models]
    if not serving:
        return Decision(Outcome.MODEL_NOT_FOUND, (), (), "no upstream serves the model")

    rule = next((r for r in policy.residency if r.matches(facts.location)), None)
    allowed: list[UpstreamView] = []
    for u in serving:
        if rule is not None and u.region not in rule.regions:
            excluded.append(Exclusion(u.id, u.region, f"residency rule {rule.name}"))
        elif u.drained:
            excluded.append(Exclusion(u.id, u.region, "drained"))
        else:
            allowed.append(u)

    healthy = [u for u in allowed if u.healthy]
    panic = bool(allowed) and len(healthy) / len(allowed) < policy.panic_threshold
    if not panic:
        excluded.extend(Exclusion(u.id, u.region, "unhealthy") for u in allowed if not u.healthy)
    rule_name = rule.name if rule else None
    if not healthy and not panic:
        return Decision(Outcome.NO_CANDIDATE, (), tuple(excluded), "nothing usable", rule_name)

    # Tiers, each tried only when the ones before are exhausted.
    net_model = _NetModel(facts, snap, policy)
    tiers: list[list[Candidate]] = [[], [], [], []]
    for u in allowed:
        if u.healthy or panic:
            c = _candidate(u, net_model)
            tiers[(0 if c.healthy else 2) + (1 if c.standby else 0)].append(c)
    ordered_tiers = [_by_score(t) for t in tiers if t]
    first = ordered_tiers[0]
    best = first[0].score_ms
    reason = "lowest-score"
    band: list[Candidate] = [first[0]]
    if not first[0].standby and first[0].healthy:
        limit = best + max(policy.tolerance_ms, policy.tolerance_ratio * best)
        band = [c for c in first if c.score_ms <= limit]
    chosen = band[0]
    if len(band) > 1:
        chosen = _p2c(band, snap.in_flight, rng)
        reason = "p2c-in-band"
    if first[0].standby:
        reason = "standby"
    if not first[0].healthy:
        reason = "panic"
    order = [chosen] + [c for c in first if c is not chosen]
    for t in ordered_tiers[1:]:
        order.extend(t)
    return Decision(
        Outcome.ROUTED,
        tuple(order),
        tuple(excluded),
        reason,
        rule_name,
        tuple(c.upstream.id for c in band),
    )
