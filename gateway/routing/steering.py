"""Steering hints: the region a client should have entered, when it entered the wrong one.

A regional gateway (origin ``self``) never sends a request away from its nearest backend
because of where the client is: the request has already paid the way here (DESIGN.md §2). But
a client in Singapore that DNS or an edge sent to Frankfurt pays the ocean on every request,
so the gateway says where it should enter (the ``geogate-preferred-region`` response header)
and counts it, for operators to fix DNS or the edge. The measure is the edge's: estimated
network RTT from the client to each region that could serve this request, and the router's
tolerance band, so a client half-way between two regions is not told to flip between them.

Only clients placed by GeoIP get a hint: they came straight here (DNS, or a regional URL). A
request the edge sent (``source=edge``) was steered on purpose, with load and health in view,
and a client nobody could place (``source=default``) gives nothing to compare.
"""

from __future__ import annotations

from gateway.routing.model import Decision, Snapshot
from gateway.routing.policy import Policy
from geodb.distance import est_rtt_ms
from geodb.location import Location, LocationSource


def preferred_region(
    loc: Location, decision: Decision, snap: Snapshot, policy: Policy
) -> str | None:
    """The region this client should enter instead of this gateway's, or None: not a regional
    gateway, a client not placed by GeoIP, or this region is (near enough) the best."""
    if policy.origin != "self" or loc.source is not LocationSource.GEOIP:
        return None
    # Regions that could serve this request: residency, drains and health already applied.
    regions = {c.upstream.region for c in decision.order if c.healthy}
    here = snap.regions.get(policy.self_region)
    if here is None or not regions:
        return None
    if len(regions) == 1 and here.id in regions:
        # Only this region could serve (a regional gateway with no spill-over: the common
        # case): no distance to estimate on the request path.
        return None

    def est(region_id: str) -> float:
        p = snap.regions[region_id]
        return est_rtt_ms(loc.latitude, loc.longitude, p.latitude, p.longitude)

    # The nearest, ties to the first id in order (est_rtt_ms is memoised: this region's second
    # estimate below is a lookup).
    best_ms, best = min((est(r), r) for r in regions)
    if best == here.id:
        return None
    band = max(policy.tolerance_ms, policy.tolerance_ratio * best_ms)
    return best if est(here.id) > best_ms + band else None
