"""The router's values: the route header (failover included) and exclusion reasons."""

from __future__ import annotations

from gateway.routing.model import (
    Candidate,
    Decision,
    Exclusion,
    ExclusionKind,
    Outcome,
    Reason,
    UpstreamView,
)


def cand(uid: str, region: str) -> Candidate:
    u = UpstreamView(id=uid, region=region, models=frozenset({"m"}))
    return Candidate(u, 10.0, 10.0, "distance", 0.0, True, False, "unknown")


def test_header_names_the_answering_candidate_and_failover() -> None:
    d = Decision(Outcome.ROUTED, (cand("a", "eu"), cand("b", "us")), (), Reason.P2C_IN_BAND, "eu")
    assert d.header() == "region=eu; upstream=a; reason=p2c-in-band; residency=eu"
    assert d.header(1) == "region=us; upstream=b; reason=failover; residency=eu; attempts=2"


def test_no_candidate_header_and_explain() -> None:
    ex = Exclusion("a", "eu", ExclusionKind.RESIDENCY, "eu-only")
    d = Decision(Outcome.NO_CANDIDATE, (), (ex,), Reason.NOTHING_USABLE)
    assert d.header() == "outcome=no_candidate"
    assert d.explain()["excluded"] == [
        {"upstream": "a", "region": "eu", "reason": "residency rule eu-only"}
    ]
    assert Exclusion("a", "eu", ExclusionKind.DRAINED).reason == "drained"


def test_failure_header_names_the_last_one_tried() -> None:
    d = Decision(Outcome.ROUTED, (cand("a", "eu"), cand("b", "us")), (), Reason.P2C_IN_BAND, "eu")
    assert d.failure_header(1) == "outcome=failed; region=eu; upstream=a; residency=eu; attempts=1"
    assert d.failure_header(2) == "outcome=failed; region=us; upstream=b; residency=eu; attempts=2"
    # Routed, but refused before an attempt (a retry budget spent at once): what was routed.
    assert d.failure_header(0) == "outcome=routed; residency=eu"
    # One passed by (drained since the routing): the last tried is b, after one attempt.
    assert d.failure_header(1, index=1) == (
        "outcome=failed; region=us; upstream=b; residency=eu; attempts=1"
    )
    assert d.header(1, attempts=1).endswith("upstream=b; reason=failover; residency=eu; attempts=1")
    none = Decision(Outcome.NO_CANDIDATE, (), (), Reason.NOTHING_USABLE, "eu-only")
    assert none.failure_header(0) == "outcome=no_candidate; residency=eu-only"
