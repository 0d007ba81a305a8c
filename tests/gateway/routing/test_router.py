"""The router: unit tests of each step, and property tests of its invariants."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.defaults import QUEUED_REQUEST_MS
from gateway.routing.model import (
    Decision,
    Origin,
    Outcome,
    Reason,
    RegionPoint,
    RequestFacts,
    Snapshot,
    UpstreamView,
)
from gateway.routing.policy import Policy, Residency
from gateway.routing.router import pick, rank, rank_key, route
from geodb.distance import est_rtt_ms
from geodb.location import Location, LocationSource
from geodb.regions import known_region

REGIONS = {
    rid: RegionPoint(rid, (k := known_region(rid)).latitude, k.longitude)
    for rid in ("eu-central", "us-east", "ap-southeast", "eu-west")
}
LONDON = Location(51.51, -0.13, "GB", "EU", "London", 50, LocationSource.GEOIP)
SINGAPORE = Location(1.35, 103.82, "SG", "AS", "Singapore", 50, LocationSource.GEOIP)
EU_RULE = Residency("eu", frozenset(), frozenset({"EU"}), frozenset({"eu-central", "eu-west"}))


def up(uid: str, region: str, **kw: Any) -> UpstreamView:
    return UpstreamView(id=uid, region=region, models=frozenset({"m"}), **kw)


def snap(*ups: UpstreamView, in_flight: dict[str, int] | None = None) -> Snapshot:
    return Snapshot(tuple(ups), REGIONS, in_flight or {})


def decide(
    s: Snapshot,
    loc: Location = LONDON,
    model: str = "m",
    seed: int = 0,
    origin: Origin = "client",
    **policy: Any,
) -> Decision:
    p = Policy(origin, "eu-central", **policy)
    return route(RequestFacts(model, loc), s, p, random.Random(seed))


def chosen_id(d: Decision) -> str:
    assert d.chosen is not None
    return d.chosen.upstream.id


def test_nearest_region_wins_for_origin_client() -> None:
    d = decide(snap(up("eu", "eu-central"), up("us", "us-east"), up("ap", "ap-southeast")))
    assert chosen_id(d) == "eu"
    assert d.reason == "lowest-score"
    assert [c.upstream.id for c in d.order] == ["eu", "us", "ap"]
    assert d.header() == "region=eu-central; upstream=eu; reason=lowest-score"


def test_origin_self_uses_measured_rtt_over_distance() -> None:
    # From this gateway, us-east measures faster than the distance model says for eu-west.
    s = snap(up("us", "us-east", rtt_ms=3.0), up("ew", "eu-west"))
    d = decide(s, loc=SINGAPORE, origin="self")
    c = d.chosen
    assert c is not None
    assert (c.upstream.id, c.net_source) == ("us", "measured")
    assert d.order[1].net_source == "distance"


def test_load_terms_and_bias_move_the_choice() -> None:
    s = snap(
        up("eu", "eu-central", ttft_ms=400.0, queue_depth=16.0, slots=16),
        up("ew", "eu-west", ttft_ms=50.0),
    )
    d = decide(s)
    assert chosen_id(d) == "ew"
    assert d.order[1].load_ms == 800.0  # 400 * (1 + 16/16)
    d = decide(snap(up("eu", "eu-central", bias_ms=500.0), up("us", "us-east")))
    assert chosen_id(d) == "us"


def test_filters_explain_every_exclusion() -> None:
    s = snap(
        up("eu", "eu-central", drained=True),
        up("ew", "eu-west", healthy=False),
        up("ew2", "eu-west"),
        up("ew3", "eu-west"),
        up("us", "us-east"),
        UpstreamView("other", "eu-central", frozenset({"x"})),
    )
    d = decide(s, residency=(EU_RULE,))
    reasons = {e.upstream_id: e.reason for e in d.excluded}
    assert reasons == {"eu": "drained", "ew": "unhealthy", "us": "residency rule eu"}
    assert {c.upstream.id for c in d.order} == {"ew2", "ew3"}
    assert d.residency == "eu"


def test_unknown_model_and_nothing_usable() -> None:
    assert decide(snap(up("eu", "eu-central")), model="nope").outcome is Outcome.MODEL_NOT_FOUND
    d = decide(snap(up("eu", "eu-central", drained=True)))
    assert d.outcome is Outcome.NO_CANDIDATE and d.order == ()


def test_panic_keeps_unhealthy_behind_healthy() -> None:
    # 1 of 3 healthy is under the 50 % panic threshold: the unhealthy ones stay as failover.
    s = snap(
        up("a", "eu-central", healthy=False), up("b", "eu-west", healthy=False), up("c", "us-east")
    )
    d = decide(s)
    assert [c.upstream.id for c in d.order] == [
        "c",
        "b",
        "a",
    ]  # unhealthy ones by score: Dublin before Frankfurt
    d = decide(s, panic_threshold=0.0)  # panic off: unhealthy ones are excluded
    assert [c.upstream.id for c in d.order] == ["c"]
    none_ok = snap(up("a", "eu-central", healthy=False))
    assert decide(none_ok).reason == "panic"


def test_standby_used_only_when_nothing_else() -> None:
    s = snap(up("sb", "eu-central", weight=0.0), up("us", "us-east"))
    d = decide(s)
    assert [c.upstream.id for c in d.order] == ["us", "sb"]
    d = decide(snap(up("sb", "eu-central", weight=0.0), up("us", "us-east", healthy=False)))
    assert (chosen_id(d), d.reason) == ("sb", "standby")


def test_p2c_prefers_the_less_loaded_in_band() -> None:
    s = snap(up("a", "eu-central"), up("b", "eu-central"), in_flight={"a": 10, "b": 0})
    picks = Counter(chosen_id(decide(s, seed=i)) for i in range(200))
    assert picks == Counter({"b": 200})  # with two in band, both are always drawn


def test_tolerance_band() -> None:
    s = snap(up("eu", "eu-central"), up("ew", "eu-west"))  # London: ~20 ms vs ~17 ms
    assert set(decide(s).band) == {"eu", "ew"}
    assert len(decide(s, tolerance_ms=0.0, tolerance_ratio=0.0).band) == 1


# --- properties -----------------------------------------------------------------------------

region_ids = st.sampled_from(sorted(REGIONS))
upstream_st = st.builds(
    lambda i, region, healthy, drained, weight, bias, rtt, models: UpstreamView(
        id=f"u{i}",
        region=region,
        models=frozenset(models),
        weight=weight,
        bias_ms=bias,
        drained=drained,
        healthy=healthy,
        rtt_ms=rtt,
    ),
    st.integers(),
    region_ids,
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    st.floats(-50, 200),
    st.none() | st.floats(0.1, 400),
    st.sets(st.sampled_from(["m", "x"]), min_size=1),
)
snapshots = st.lists(upstream_st, min_size=1, max_size=12, unique_by=lambda u: u.id).map(
    lambda ups: Snapshot(tuple(ups), REGIONS, {u.id: i % 3 for i, u in enumerate(ups)})
)
locations = st.builds(
    lambda lat, lon, cont: Location(lat, lon, None, cont, None, None, LocationSource.GEOIP),
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.sampled_from(["EU", "AS", "NA", None]),
)
policies = st.builds(
    lambda origin, rules, panic: Policy(origin, "eu-central", rules, panic_threshold=panic),
    st.sampled_from(["client", "self"]),
    st.sampled_from([(), (EU_RULE,)]),
    st.sampled_from([0.0, 0.5, 1.0]),
)


@settings(max_examples=300, deadline=None)
@given(snapshots, locations, policies, st.integers(0, 2**32))
def test_invariants(s: Snapshot, loc: Location, p: Policy, seed: int) -> None:
    d = route(RequestFacts("m", loc), s, p, random.Random(seed))
    rule = next((r for r in p.residency if r.matches(loc)), None)
    allowed = [
        u
        for u in s.upstreams
        if "m" in u.models and not u.drained and (rule is None or u.region in rule.regions)
    ]
    ids = [c.upstream.id for c in d.order]
    # The failover order is a permutation of the candidates: each at most once, all allowed.
    assert len(ids) == len(set(ids))
    assert set(ids) <= {u.id for u in allowed}
    # Residency is never violated; drained upstreams get nothing.
    for c in d.order:
        assert rule is None or c.upstream.region in rule.regions
        assert not c.upstream.drained
    # No unhealthy (or standby) first choice while an allowed healthy, weighted one exists.
    if any(u.healthy and u.weight > 0 for u in allowed):
        assert d.chosen is not None and d.chosen.healthy and not d.chosen.standby
    elif any(u.healthy for u in allowed):
        assert d.chosen is not None and d.chosen.healthy
    # Healthy candidates are never ordered after unhealthy ones.
    health = [c.healthy for c in d.order]
    assert health == sorted(health, reverse=True)
    if d.outcome is Outcome.ROUTED:
        assert ids
    else:
        assert not ids


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0.5, 1.0, 2.0, 4.0]), min_size=2, max_size=4))
def test_near_equal_upstreams_share_in_proportion_to_weight(weights: list[float]) -> None:
    ups = [up(f"u{i}", "eu-central", weight=w) for i, w in enumerate(weights)]
    s = snap(*ups)
    p = Policy("client", "eu-central")
    rng = random.Random(1)
    draws = 6000
    got = Counter(chosen_id(route(RequestFacts("m", LONDON), s, p, rng)) for _ in range(draws))
    total = sum(weights)
    for i, w in enumerate(weights):
        share = got[f"u{i}"] / draws
        assert abs(share - w / total) < 0.03, (weights, dict(got))


@settings(max_examples=100, deadline=None)
@given(snapshots, st.integers(0, 2**32))
def test_drained_upstream_never_routed(s: Snapshot, seed: int) -> None:
    drained = {u.id for u in s.upstreams if u.drained}
    for i in range(5):
        d = route(
            RequestFacts("m", LONDON), s, Policy("client", "eu-central"), random.Random(seed + i)
        )
        assert not drained & {c.upstream.id for c in d.order}


# --- unknown load terms take a prior ----------------------------------------------------------


def test_unknown_ttft_takes_the_models_median_and_explain_says_so() -> None:
    s = snap(
        up("a", "eu-central", ttft_ms=100.0),
        up("b", "eu-central", ttft_ms=300.0),
        up("c", "eu-west", ttft_ms=200.0),
        up("idle", "us-east"),
        UpstreamView("other", "eu-west", frozenset({"x"}), ttft_ms=5000.0),  # another model
    )
    d = decide(s)
    rows = {c["upstream"]: c for c in d.explain()["candidates"]}
    assert (rows["idle"]["load_ms"], rows["idle"]["load_source"]) == (200.0, "prior")
    assert (rows["a"]["load_ms"], rows["a"]["load_source"]) == (100.0, "measured")
    # No fresh TTFT anywhere: every candidate is equally unknown, and the term is 0 for all.
    d = decide(snap(up("eu", "eu-central"), up("us", "us-east")))
    assert {(c.load_ms, c.load_source) for c in d.order} == {(0.0, "unknown")}


def test_without_any_ttft_a_queue_still_ranks_upstreams() -> None:
    # A TGI fleet exports its queue and no TTFT: the queue must still count.
    d = decide(
        snap(up("deep", "eu-central", queue_depth=500.0), up("idle", "eu-central", queue_depth=0.0))
    )
    rows = {c["upstream"]: c for c in d.explain()["candidates"]}
    assert rows["deep"]["load_source"] == rows["idle"]["load_source"] == "unknown"
    assert rows["deep"]["load_ms"] == round(
        QUEUED_REQUEST_MS * 500 / up("x", "eu-central").slots, 2
    )
    assert rows["idle"]["load_ms"] == 0.0 and d.band == ("idle",), d.explain()


# The far region must be farther by more than the band: most region pairs for a place are not,
# so the filter below discards many draws (Hypothesis's filter_too_much check failed CI once
# in several runs); the pair is ordered by distance first, which halves the discards.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    locations,
    st.lists(region_ids, min_size=2, max_size=2, unique=True),
    st.floats(1, 400),
    st.sampled_from([None, 0.0]),
    st.integers(0, 2**32),
)
def test_idle_far_backend_gets_no_traffic_while_a_near_one_is_fine(
    loc: Location, regions: list[str], ttft: float, far_queue: float | None, seed: int
) -> None:
    net = {
        r: est_rtt_ms(loc.latitude, loc.longitude, REGIONS[r].latitude, REGIONS[r].longitude)
        for r in regions
    }
    near_region, far_region = sorted(regions, key=net.__getitem__)
    p = Policy("client", "eu-central")
    best = net[near_region] + ttft  # the near one's score: healthy, known TTFT, queue 0
    assume(net[far_region] - net[near_region] > max(p.tolerance_ms, p.tolerance_ratio * best))
    s = snap(
        up("near", near_region, ttft_ms=ttft, queue_depth=0.0),
        up("far", far_region, queue_depth=far_queue),  # idle: no fresh TTFT of its own
    )
    rng = random.Random(seed)
    for _ in range(20):
        d = route(RequestFacts("m", loc), s, p, rng)
        assert chosen_id(d) == "near" and d.band == ("near",), d.explain()


# --- rank and pick ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(snapshots, locations, policies, st.integers(0, 2**32))
def test_rank_is_deterministic_and_pick_only_chooses_within_the_band(
    s: Snapshot, loc: Location, p: Policy, seed: int
) -> None:
    facts = RequestFacts("m", loc)
    ranked = rank(facts, s, p)
    assert rank(facts, s, p) == ranked
    # The band is a prefix of the ranked order; the pick moves one of it to the front.
    n = len(ranked.band)
    assert tuple(c.upstream.id for c in ranked.order[:n]) == ranked.band
    picked = pick(ranked, s.in_flight, random.Random(seed))
    assert picked == route(facts, s, p, random.Random(seed))
    if n < 2:
        assert picked is ranked
    else:
        assert picked.reason is Reason.P2C_IN_BAND
        assert picked.order[0].upstream.id in ranked.band
        assert picked.order[1:] == tuple(c for c in ranked.order if c is not picked.order[0])
        assert (picked.excluded, picked.band) == (ranked.excluded, ranked.band)


def test_rank_key_holds_the_client_coordinates_only_where_they_are_scored() -> None:
    client, regional = Policy("client", "eu-central", (EU_RULE,)), Policy("self", "eu-central")
    assert rank_key(RequestFacts("m", LONDON), client) == ("m", 0, 51.51, -0.13)
    assert rank_key(RequestFacts("m", SINGAPORE), client) == ("m", None, 1.35, 103.82)
    # A regional gateway scores the path from itself (measured, else its own region's
    # coordinates), so every client shares a ranking there.
    assert rank_key(RequestFacts("m", LONDON), regional) == ("m", None, None, None)
    s = snap(up("a", "eu-central"), up("b", "ap-southeast"))
    assert rank(RequestFacts("m", LONDON), s, regional) == rank(
        RequestFacts("m", SINGAPORE), s, regional
    )
