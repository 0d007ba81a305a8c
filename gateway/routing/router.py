"""The router: a pure function from request facts, a state snapshot and a policy to a decision.

No I/O, no clock, no randomness but the ``rng`` it is handed (DESIGN.md §3). Steps: filter
(model, residency, drain, health with a panic threshold, weight-0 standby), score by expected
time to first byte, choose by weighted power-of-two-choices among near-equal scores, order the
rest as the failover list, and explain every candidate and exclusion. ``rank`` is all of it
but the choice, a function of ``rank_key`` alone for a given snapshot and policy, so it can be
reused across requests (routing.memo); ``pick`` makes the choice per request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from gateway.defaults import QUEUED_REQUEST_MS
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
    if ttft is None:
        # No fresh TTFT anywhere: the first token's own time is equally unknown for all (0),
        # but a queue still costs its requests ahead: a backend 500 deep must not rank with
        # an idle one.
        load_source = "unknown"
        load = QUEUED_REQUEST_MS * (u.queue_depth or 0.0) / u.slots
    else:
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


def _p2c(band: Sequence[Candidate], in_flight: Mapping[str, int], rng: random.Random) -> Candidate:
    """Weighted power of two choices: two draws in proportion to weight, fewer in-flight
    per unit of weight wins, a tie goes to the first draw. With equal load the first draw
    decides, so the traffic share of each is exactly its share of the weight."""
    i = _weighted_pick(band, rng)
    rest = [*band[:i], *band[i + 1 :]]
    a, b = band[i], rest[_weighted_pick(rest, rng)]
    load_a = in_flight.get(a.upstream.id, 0) / a.upstream.weight
    load_b = in_flight.get(b.upstream.id, 0) / b.upstream.weight
    return b if load_b < load_a else a


def _filter(
    serving: list[UpstreamView], facts: RequestFacts, policy: Policy
) -> tuple[list[UpstreamView], list[Exclusion], str | None]:
    """Residency and drain: (allowed, excluded, the residency rule that applied)."""
    index = policy.rule_index(facts.location)
    rule = None if index is None else policy.residency[index]
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


# What rank reads of the request facts: the model, the index of the residency rule that
# applies (None: no rule), and the client's coordinates where they feed the network cost.
RankKey = tuple[str, int | None, float | None, float | None]


def rank_key(facts: RequestFacts, policy: Policy) -> RankKey:
    """Everything ``rank`` reads of ``facts``: equal keys give equal rankings for the same
    snapshot and policy, so a ranking may be reused for every request with the same key."""
    loc = facts.location
    rule = policy.rule_index(loc)
    if policy.origin == "self":
        # A regional gateway's network cost is the path from here (measured RTT, else the
        # distance from this region): the client has already paid its way here, so its own
        # coordinates do not move the ranking: all clients under one residency rule share it.
        return facts.model, rule, None, None
    return facts.model, rule, loc.latitude, loc.longitude


def rank(facts: RequestFacts, snap: Snapshot, policy: Policy) -> Decision:
    """The deterministic part of routing: filter, tiers, scores, the tolerance band and the
    order by score, with no randomness and no in-flight counts. The band is a prefix of
    ``order`` (the first tier is sorted by score); ``pick`` chooses within it, and its
    reason (lowest score, standby or panic) stands until a band of two or more is picked."""
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
    order = [c for t in tiers if t for c in _by_score(t)]
    first = order[0]
    reason = Reason.PANIC if not first.healthy else Reason.STANDBY if first.standby else None
    band = [first]
    if reason is None:
        best = first.score_ms
        limit = best + max(policy.tolerance_ms, policy.tolerance_ratio * best)
        # The first tier is sorted by score and every later tier is unhealthy or standby, so
        # the band is the prefix of the order within the limit, all healthy and weighted.
        for c in order[1:]:
            if c.score_ms > limit or not c.healthy or c.standby:
                break
            band.append(c)
    return Decision(
        Outcome.ROUTED,
        tuple(order),
        tuple(excluded),
        reason or Reason.LOWEST_SCORE,
        rule_name,
        tuple(c.upstream.id for c in band),
    )


def pick(ranked: Decision, in_flight: Mapping[str, int], rng: random.Random) -> Decision:
    """The choice within ``ranked``'s tolerance band: weighted power of two choices on
    in-flight requests, the rest of the order kept as the failover list. A band of one has
    nothing to choose, and ``ranked`` is the decision as it stands."""
    n = len(ranked.band)
    if n < 2:
        return ranked
    chosen = _p2c(ranked.order[:n], in_flight, rng)
    return Decision(
        ranked.outcome,
        (chosen, *(c for c in ranked.order if c is not chosen)),
        ranked.excluded,
        Reason.P2C_IN_BAND,
        ranked.residency,
        ranked.band,
    )


def route(facts: RequestFacts, snap: Snapshot, policy: Policy, rng: random.Random) -> Decision:
    return pick(rank(facts, snap, policy), snap.in_flight, rng)
