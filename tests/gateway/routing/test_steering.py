"""Steering hints: a regional gateway names the region a GeoIP-placed client should enter."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.model import RegionPoint, RequestFacts, Snapshot, UpstreamView
from gateway.routing.policy import Policy, Residency
from gateway.routing.router import route
from gateway.routing.steering import preferred_region
from geodb.distance import est_rtt_ms
from geodb.location import Location, LocationSource
from geodb.regions import known_region

REGIONS = {
    rid: RegionPoint(rid, (k := known_region(rid)).latitude, k.longitude)
    for rid in ("eu-central", "eu-west", "ap-southeast")
}
LONDON = Location(51.51, -0.13, "GB", "EU", "London", 50, LocationSource.GEOIP)
SINGAPORE = Location(1.35, 103.82, "SG", "AS", "Singapore", 50, LocationSource.GEOIP)


def ups(**kw: dict[str, Any]) -> Snapshot:
    views = [
        UpstreamView(id=f"{r}-1", region=r, models=frozenset({"m"}), **kw.get(r, {}))
        for r in REGIONS
    ]
    return Snapshot(tuple(views), REGIONS)


def hint(loc: Location, snap: Snapshot | None = None, **policy: Any) -> str | None:
    snap = snap or ups()
    p = Policy(**{"origin": "self", "self_region": "eu-central", **policy})
    decision = route(RequestFacts("m", loc), snap, p, random.Random(0))
    return preferred_region(loc, decision, snap, p)


def test_a_client_nearer_another_region_is_told_which() -> None:
    assert hint(SINGAPORE) == "ap-southeast"


def test_no_hint_where_this_region_is_best_or_near_enough() -> None:
    assert hint(LONDON, self_region="eu-west") is None
    # London is nearer Dublin than Frankfurt, but by less than the tolerance band.
    assert hint(LONDON) is None
    assert hint(LONDON, tolerance_ms=0.0, tolerance_ratio=0.0) == "eu-west"


@pytest.mark.parametrize("source", [LocationSource.DEFAULT, LocationSource.EDGE])
def test_only_geoip_placed_clients_get_a_hint(source: LocationSource) -> None:
    assert hint(dataclasses.replace(SINGAPORE, source=source)) is None


def test_an_edge_gateway_gives_no_hint() -> None:
    assert hint(SINGAPORE, origin="client") is None


def test_only_regions_that_could_serve_the_client_are_hinted() -> None:
    # Unhealthy (with enough healthy ones left to stay out of panic) or drained: no hint there.
    assert hint(SINGAPORE, ups(**{"ap-southeast": {"healthy": False}})) is None
    assert hint(SINGAPORE, ups(**{"ap-southeast": {"drained": True}})) is None
    rule = Residency("sg", frozenset({"SG"}), frozenset(), frozenset({"eu-central"}))
    assert hint(SINGAPORE, residency=(rule,)) is None


def _reference(loc: Location, regions: set[str], here: str, p: Policy) -> str | None:
    """The hint as first written: sorted, min by estimate, the best estimated again."""

    def est(r: str) -> float:
        q = REGIONS[r]
        return est_rtt_ms(loc.latitude, loc.longitude, q.latitude, q.longitude)

    best = min(sorted(regions), key=est)
    if best == here:
        return None
    band = max(p.tolerance_ms, p.tolerance_ratio * est(best))
    return best if est(here) > est(best) + band else None


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.sets(st.sampled_from(sorted(REGIONS)), min_size=1),
    st.sampled_from(sorted(REGIONS)),
    st.sampled_from([0.0, 15.0]),
)
def test_the_hint_is_the_nearest_region_beyond_the_band(
    lat: float, lon: float, serving: set[str], here: str, tol: float
) -> None:
    loc = Location(lat, lon, None, None, None, None, LocationSource.GEOIP)
    views = tuple(UpstreamView(id=r, region=r, models=frozenset({"m"})) for r in sorted(serving))
    s = Snapshot(views, REGIONS)
    p = Policy("self", here, tolerance_ms=tol, tolerance_ratio=tol / 100)
    decision = route(RequestFacts("m", loc), s, p, random.Random(0))
    assert preferred_region(loc, decision, s, p) == _reference(loc, serving, here, p)
