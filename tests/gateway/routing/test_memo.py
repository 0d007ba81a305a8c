"""Memoised rankings: the same decisions as the pure router, for the same rng draws, whatever
mix of requests shares a snapshot; a new snapshot or policy starts over; the table is bounded."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.memo import RankMemo
from gateway.routing.model import Outcome, RequestFacts, Snapshot
from gateway.routing.policy import Policy
from gateway.routing.router import route
from geodb.location import Location, LocationSource

from .test_router import EU_RULE, LONDON, SINGAPORE, policies, snap, snapshots, up

# Few places, so keys repeat; each with every combination of the fields rank does not read
# (city, accuracy, source) and of those it does (country, continent), so a key that left out
# something rank reads would hand one client another's ranking.
places = st.builds(
    lambda lat, lon, country, cont, city, acc, source: Location(
        lat, lon, country, cont, city, acc, source
    ),
    st.sampled_from([51.51, 1.35, -33.9]),
    st.sampled_from([-0.13, 103.82, 18.4]),
    st.sampled_from(["GB", "SG", "DE", None]),
    st.sampled_from(["EU", "AS", "AF", None]),
    st.sampled_from(["A", "B", None]),
    st.sampled_from([1, 50, None]),
    st.sampled_from(list(LocationSource)),
)
requests = st.lists(st.tuples(places, st.sampled_from(["m", "x"])), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(snapshots, policies, requests, st.integers(0, 2**32), st.sampled_from([1, 2, 1000]))
def test_memoised_equals_fresh(
    s: Snapshot, p: Policy, reqs: list[tuple[Location, str]], seed: int, size: int
) -> None:
    memo = RankMemo(size)
    fresh_rng, memo_rng = random.Random(seed), random.Random(seed)
    for loc, model in reqs:
        facts = RequestFacts(model, loc)
        assert memo.route(facts, s, p, memo_rng) == route(facts, s, p, fresh_rng)
        assert memo.weight <= size
    # The same draws were made: the two rngs are still in step.
    assert memo_rng.random() == fresh_rng.random()


def test_a_hit_reuses_the_ranking_and_only_picks_anew() -> None:
    s = snap(up("a", "eu-central"), up("b", "eu-central"), in_flight={"a": 5})
    p = Policy("self", "eu-central")
    memo = RankMemo()
    first = memo.rank(RequestFacts("m", LONDON), s, p)
    # Origin self: the client's coordinates are not an input, so Singapore shares London's.
    assert memo.rank(RequestFacts("m", SINGAPORE), s, p) is first
    assert len(memo) == 1
    # In-flight counts are read live at the pick: b is idle, a is busy.
    rng = random.Random(0)
    chosen = {
        memo.route(RequestFacts("m", LONDON), s, p, rng).order[0].upstream.id for _ in range(20)
    }
    assert chosen == {"b"}


def test_a_new_snapshot_or_policy_starts_over() -> None:
    memo = RankMemo()
    p = Policy("client", "eu-central")
    facts = RequestFacts("m", LONDON)
    s1 = snap(up("a", "eu-central"), up("b", "ap-southeast"))
    assert memo.route(facts, s1, p, random.Random(0)).order[0].upstream.id == "a"
    s2 = snap(up("a", "eu-central", drained=True), up("b", "ap-southeast"))
    assert memo.route(facts, s2, p, random.Random(0)).order[0].upstream.id == "b"
    assert len(memo) == 1
    # An equal but new policy object is a new policy: nothing carried over by accident.
    kept = memo.rank(facts, s2, p)
    assert memo.rank(facts, s2, p) is kept
    assert memo.rank(facts, s2, dataclasses.replace(p)) is not kept
    # And a changed one ranks by what it now says.
    p2 = dataclasses.replace(p, residency=(EU_RULE,))
    d = memo.route(facts, s2, p2, random.Random(0))
    assert d.outcome == "no_candidate" and d.residency == "eu"


def test_a_flood_of_places_cannot_grow_it() -> None:
    memo = RankMemo(8)
    s, p = snap(up("a", "eu-central")), Policy("client", "eu-central")
    for i in range(1000):
        loc = dataclasses.replace(LONDON, latitude=i / 100)
        d = memo.route(RequestFacts("m", loc), s, p, random.Random(0))
        assert d == route(RequestFacts("m", loc), s, p, random.Random(0))
        assert memo.weight <= 8 and len(memo) <= 4  # a ranking of one candidate weighs 2


def test_a_large_pool_holds_fewer_rankings() -> None:
    # The bound is on candidates held, not rankings: 40 upstreams make each ranking weigh 41.
    ups = [up(f"u{i}", "eu-central") for i in range(40)]
    memo = RankMemo(200)
    s, p = snap(*ups), Policy("client", "eu-central")
    for i in range(100):
        loc = dataclasses.replace(LONDON, latitude=i / 100)
        assert len(memo.rank(RequestFacts("m", loc), s, p).order) == 40
        assert memo.weight <= 200 and len(memo) <= 4
    # A ranking larger than the whole memo is answered and not kept, and what the memo held
    # stays: a model one upstream serves, ranked first, is still there after it.
    tiny = dataclasses.replace(up("t", "eu-central"), models=frozenset({"tiny"}))
    s = snap(*ups, tiny)
    small = RankMemo(30)
    kept = small.rank(RequestFacts("tiny", LONDON), s, p)
    assert len(kept.order) == 1 and len(small) == 1 and small.weight == 2
    assert len(small.rank(RequestFacts("m", LONDON), s, p).order) == 40
    assert len(small) == 1 and small.weight == 2
    assert small.rank(RequestFacts("tiny", LONDON), s, p) is kept


def test_a_model_nobody_serves_is_answered_but_not_kept() -> None:
    """The model is the client's string: made-up names must not fill the memo."""
    memo = RankMemo(max_candidates=10)
    s = snap(up("a", "eu-central"))
    policy = Policy("self", "eu-central")
    for i in range(50):
        facts = RequestFacts(f"no-such-model-{i}" * 100, LONDON)
        assert memo.rank(facts, s, policy).outcome is Outcome.MODEL_NOT_FOUND
    assert len(memo) == 0
    memo.rank(RequestFacts("m", LONDON), s, policy)
    assert len(memo) == 1
