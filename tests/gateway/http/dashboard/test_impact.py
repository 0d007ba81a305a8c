"""What a change would move, said before it is made: the router's own answer on the last
minute's traffic."""

from __future__ import annotations

import time
from dataclasses import replace

from gateway.config import Config
from gateway.http.dashboard.impact import REFUSED, changed_snapshot, member_of, what_if
from gateway.http.dashboard.window import Tick, Window
from gateway.routing.model import RegionPoint, Snapshot, UpstreamView
from gateway.routing.policy import policy_from
from gateway.traffic import NOT_SERVED, Tally
from geodb.location import Location, LocationSource

LONDON = Location(51.5, -0.13, "GB", "EU", "London", 20.0, LocationSource.GEOIP)
NEW_YORK = Location(40.7, -74.0, "US", "NA", "New York", 20.0, LocationSource.GEOIP)
CONFIG = Config.model_validate(
    {
        "gateway": {"region": "eu", "origin": "client"},
        "regions": [
            {"id": "eu", "latitude": 50.1, "longitude": 8.7},
            {"id": "us", "latitude": 39.0, "longitude": -77.5},
        ],
        "upstreams": [
            {"id": "eu-1", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
            {"id": "us-1", "region": "us", "url": "http://127.0.0.1:2", "models": ["m"]},
        ],
    }
)
POLICY = policy_from(CONFIG)


def snapshot() -> Snapshot:
    views = tuple(
        UpstreamView(u.id, u.region, frozenset(u.models), url=u.url) for u in CONFIG.upstreams
    )
    regions = {r.id: RegionPoint(r.id, r.latitude, r.longitude) for r in CONFIG.regions}
    return Snapshot(views, regions)


def window(served: dict[tuple[Location, str, str], int]) -> Window:
    w = Window(60)
    w.add(Tick(time.time(), 60.0, Tally(served=served)))
    return w


def test_draining_an_upstream_names_its_share_and_where_it_goes() -> None:
    w = window(
        {(LONDON, "eu-1", "m"): 30, (NEW_YORK, "us-1", "m"): 60, (LONDON, NOT_SERVED, ""): 10}
    )
    out = what_if(w, snapshot(), POLICY, ["eu-1"], {"eu-1": {"drained": True}})
    assert out["carried"] == 30 and out["total"] == 100 and out["share"] == 0.3
    assert out["leaving"] == {"eu-1": 30.0} and out["arriving"] == {"us-1": 30.0}
    assert out["text"] == (
        "eu-1 carries 30 % of requests in the last minute (30 of 100); they will move to "
        "us-1 (100 %)."
    )


def test_what_moves_is_routed_as_now_not_as_in_the_last_minute() -> None:
    # eu-1 was out for the last minute (London went to us-1) and is back: draining it again
    # moves London's requests, which it has not carried yet.
    w = window({(LONDON, "us-1", "m"): 40, (NEW_YORK, "us-1", "m"): 60})
    out = what_if(w, snapshot(), POLICY, ["eu-1"], {"eu-1": {"drained": True}})
    assert out["carried"] == 0 and out["arriving"] == {"us-1": 40.0}
    assert out["text"] == (
        "eu-1 carries 0 % of requests in the last minute (0 of 100); routed as now, about 40 "
        "a minute will move from eu-1 to us-1 (100 %)."
    )


def test_draining_the_last_upstream_warns_of_refusals() -> None:
    w = window({(LONDON, "eu-1", "m"): 30, (NEW_YORK, "us-1", "m"): 60})
    changes = {"eu-1": {"drained": True}, "us-1": {"drained": True}}
    out = what_if(w, snapshot(), POLICY, ["eu-1", "us-1"], changes)
    assert out["arriving"] == {REFUSED: 90.0}
    assert "would find NO upstream and get 503" in out["text"]
    assert out["text"].startswith("eu-1, us-1 carry 100 % of requests")


def test_a_change_that_leaves_a_model_or_a_rule_no_upstream_says_so_without_traffic() -> None:
    # A worker that saw none of those requests (each worker's window is its own) said "no
    # request moves" for a drain that took a residency rule's last region, and ctl applied it.
    ruled = Config.model_validate(
        {
            **CONFIG.model_dump(mode="json"),
            "residency": [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}],
        }
    )
    policy = policy_from(ruled)
    out = what_if(Window(60), snapshot(), policy, ["eu"], {"eu-1": {"drained": True}})
    assert out["stranded"] == ["model m for clients under residency rule eu-only"]
    assert out["text"].endswith(
        "no request moves — it leaves NO upstream for model m for clients under residency "
        "rule eu-only: their requests get 503."
    )
    both = {"eu-1": {"drained": True}, "us-1": {"drained": True}}
    assert what_if(Window(60), snapshot(), policy, ["eu-1", "us-1"], both)["stranded"] == [
        "model m"
    ]
    fine = what_if(Window(60), snapshot(), policy, ["us-1"], {"us-1": {"drained": True}})
    assert fine["stranded"] == [] and "NO upstream" not in fine["text"]


def test_a_change_that_moves_nothing_says_so() -> None:
    w = window({(LONDON, "eu-1", "m"): 30})
    out = what_if(w, snapshot(), POLICY, ["us-1"], {"us-1": {"bias_ms": 5.0}})
    assert out["arriving"] == {} and "no request moves" in out["text"]
    empty = what_if(Window(60), snapshot(), POLICY, ["eu-1"], {"eu-1": {"drained": True}})
    assert empty["total"] == 0 and empty["text"].startswith("eu-1 carries 0 %")


def test_a_share_routing_no_longer_sends_there_is_said_not_contradicted() -> None:
    """eu-1 carried London's requests in the last minute and has been ejected since (its
    view unhealthy): draining it moves nothing, and the text says why."""
    w = window({(LONDON, "eu-1", "m"): 30, (NEW_YORK, "us-1", "m"): 60})
    snap = snapshot()
    views = tuple(replace(v, healthy=False) if v.id == "eu-1" else v for v in snap.upstreams)
    out = what_if(w, Snapshot(views, snap.regions), POLICY, ["eu-1"], {"eu-1": {"drained": True}})
    assert out["carried"] == 30 and out["arriving"] == {}
    assert out["text"] == (
        "eu-1 carries 33 % of requests in the last minute (30 of 90); routed as now, none of "
        "it moves (eu-1 is out of rotation already)."
    )
    # Carried and in rotation, a change that keeps it there: no claim of why.
    kept = what_if(w, snapshot(), POLICY, ["eu-1"], {"eu-1": {"bias_ms": 1.0}})
    assert kept["text"].endswith("; routed as now, none of it moves.")


def test_changes_reach_discovered_members_too() -> None:
    assert member_of("pool@10.0.0.1:80", "pool") and member_of("pool", "pool")
    assert not member_of("pool2", "pool")
    snap = changed_snapshot(snapshot(), {"eu-1": {"weight": 0.0}})
    assert [v.weight for v in snap.upstreams] == [0.0, 1.0]


def test_a_new_weight_reaches_srv_weighted_members_in_their_shares() -> None:
    """Members with shares 1.5 and 0.5 of a pool (SRV weights 30:10): a new weight of 4 makes
    them 6 and 2, as the store's expand would, not 4 and 4; also from a pool at weight 0."""
    members = tuple(
        UpstreamView(f"eu-1@127.0.0.{i}:80", "eu", frozenset({"m"}), weight=w, url="http://x")
        for i, w in ((2, 3.0), (3, 0.0))
    )
    snap = Snapshot(members, snapshot().regions)
    shares = {"eu-1@127.0.0.2:80": 1.5, "eu-1@127.0.0.3:80": 0.5}
    after = changed_snapshot(snap, {"eu-1": {"weight": 4.0}}, shares)
    assert [v.weight for v in after.upstreams] == [6.0, 2.0]
    # the pool itself, named by the operator, takes the weight as given
    plain = changed_snapshot(snapshot(), {"eu-1": {"weight": 4.0}}, shares)
    assert [v.weight for v in plain.upstreams] == [4.0, 1.0]


def test_draining_a_discovered_pool_says_where_its_members_traffic_goes() -> None:
    # A DNS pool is routed as its members (``pool@addr``) while the operator names the pool:
    # what leaves the members is what the pool carried, not traffic "routed as now".
    members = tuple(
        UpstreamView(f"eu-1@127.0.0.{i}:80", "eu", frozenset({"m"}), url=f"http://127.0.0.{i}:80")
        for i in (2, 3)
    )
    base = snapshot()
    pooled = Snapshot(members + base.upstreams[1:], base.regions)
    w = window({(LONDON, "eu-1@127.0.0.2:80", "m"): 30, (NEW_YORK, "us-1", "m"): 60})
    out = what_if(w, pooled, POLICY, ["eu-1"], {"eu-1": {"drained": True}})
    assert out["carried"] == 30 and out["arriving"] == {"us-1": 30.0}
    assert out["text"] == (
        "eu-1 carries 33 % of requests in the last minute (30 of 90); they will move to "
        "us-1 (100 %)."
    )


def test_the_shares_moved_follow_the_weights_not_the_instants_in_flight() -> None:
    # Two upstreams in one region: where New York's requests go when us-1 is drained is their
    # weights' split, whatever each had in flight at the look (it named the idle one alone).
    eu1, us1 = snapshot().upstreams
    views = (replace(eu1, weight=3.0), replace(eu1, id="eu-2", weight=1.0), us1)
    w = window({(NEW_YORK, "us-1", "m"): 64})
    for busy in ({"eu-1": 5}, {"eu-2": 5}, {}):
        snap = Snapshot(views, snapshot().regions, busy)
        out = what_if(w, snap, POLICY, ["us-1"], {"us-1": {"drained": True}})
        assert out["arriving"] == {"eu-1": 48.0, "eu-2": 16.0}, busy  # 3:1, exactly
