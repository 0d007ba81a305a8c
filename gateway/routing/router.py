"""The router: a pure function from request facts, a state snapshot and a policy to a decision.

No I/O, no clock, no randomness but the ``rng`` it is handed (DESIGN.md §3). Steps: filter
(model, residency, drain, health with a panic threshold, weight-0 standby), score by expected
time to first byte, choose by weighted power-of-two-choices among near-equal scores, order the
rest as the failover list, and explain every candidate and exclusion.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from gateway.routing.load import load_term, ttft_prior
from gateway.routing.model import (
    Candidate,
    Decision,
    Exclusion,
    ExclusionKind,
    LoadSource,
    NetSource,
    Outcome,
    Reason,
    RequestFacts,
    Snapshot,
    UpstreamView,
)
from gateway.routing.policy import Policy
from geodb.distance import est_rtt_ms


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


def _candidate(u: UpstreamView, net_model: _NetModel, prior: float | None) -> Candidate:
    net, source = net_model.cost(u)
    ttft = u.ttft_ms
    load_source: LoadSource = "measured"
    if ttft is None and prior is not None:
        ttft, load_source = prior, "prior"
    elif ttft is None:
        # No fresh value anywhere: all are equally unknown, and 0 for all is fair.
        ttft, load_source = 0.0, "unknown"
    load = load_term(u, ttft)
    return Candidate(
        u, net + load + u.bias_ms, net, source, load, u.healthy, u.weight <= 0, load_source
    )


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


def _filter(
    serving: list[UpstreamView], facts: RequestFacts, policy: Policy
) -> tuple[list[UpstreamView], list[Exclusion], str | None]:
    """Residency and drain: (allowed, excluded, the residency rule that applied)."""
    rule = next((r for r in policy.residency if r.matches(facts.location)), None)
    allowed: list[UpstreamView] = []
    excluded: list[Exclusion] = []
    for u in serving:
        if rule is not None and u.region not in rule.regions:
            excluded.append(Exclusion(u.id, u.region, ExclusionKind.RESIDENCY, rule.name))
        elif u.drained:
            excluded.append(Exclusion(u.id, u.region, ExclusionKind.DRAINED))
        else:
            allowed.append(u)
    return allowed, excluded, rule.name if rule else None


def route(facts: RequestFacts, snap: Snapshot, policy: Policy, rng: random.Random) -> Decision:
    serving = [u for u in snap.upstreams if facts.model in u.models]
    if not serving:
        return Decision(Outcome.MODEL_NOT_FOUND, (), (), Reason.NO_UPSTREAM_SERVES)
    allowed, excluded, rule_name = _filter(serving, facts, policy)

    healthy = [u for u in allowed if u.healthy]
    panic = bool(allowed) and len(healthy) / len(allowed) < policy.panic_threshold
    if not panic:
        excluded.extend(
            Exclusion(u.id, u.region, ExclusionKind.UNHEALTHY) for u in allowed if not u.healthy
        )
    if not healthy and not panic:
        return Decision(Outcome.NO_CANDIDATE, (), tuple(excluded), Reason.NOTHING_USABLE, rule_name)

    # Tiers, each tried only when the ones before are exhausted.
    net_model = _NetModel(facts, snap, policy)
    prior = ttft_prior(serving) if any(u.ttft_ms is None for u in serving) else None
    tiers: list[list[Candidate]] = [[], [], [], []]
    for u in allowed:
        if u.healthy or panic:
            c = _candidate(u, net_model, prior)
            tiers[(0 if c.healthy else 2) + (1 if c.standby else 0)].append(c)
    ordered_tiers = [_by_score(t) for t in tiers if t]
    first = ordered_tiers[0]
    best = first[0].score_ms
    reason = Reason.LOWEST_SCORE
    band: list[Candidate] = [first[0]]
    if not first[0].standby and first[0].healthy:
        limit = best + max(policy.tolerance_ms, policy.tolerance_ratio * best)
        band = [c for c in first if c.score_ms <= limit]
    chosen = band[0]
    if len(band) > 1:
        chosen = _p2c(band, snap.in_flight, rng)
        reason = Reason.P2C_IN_BAND
    if first[0].standby:
        reason = Reason.STANDBY
    if not first[0].healthy:
        reason = Reason.PANIC
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
