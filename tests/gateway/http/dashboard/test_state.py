"""The state the dashboard shows: regions, upstreams with health and why, places, shared
state."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from gateway.cli.procs import free_port
from gateway.config import Config
from gateway.fleet.keys import Keys
from gateway.http.dashboard import state
from gateway.http.dashboard.sampler import point
from gateway.http.dashboard.window import Tick, Window
from gateway.routing.load import LoadReading
from gateway.runtime import Runtime, build_runtime
from geodb.location import Location, LocationSource
from tests.support import (
    Gateway,
    UpstreamSpec,
    eventually,
    gateway_toml,
    start_gateway,
    start_redis,
)

LONDON = Location(51.5, -0.13, "GB", "EU", "London", 20.0, LocationSource.GEOIP)
BASE: dict[str, Any] = {
    "gateway": {"region": "eu", "origin": "client"},
    "regions": [
        {"id": "eu", "name": "Frankfurt", "latitude": 50.1, "longitude": 8.7},
        {"id": "us", "latitude": 39.0, "longitude": -77.5},
        {"id": "sa", "latitude": -23.5, "longitude": -46.6},
    ],
    "upstreams": [
        {"id": "eu-1", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
        {"id": "eu-2", "region": "eu", "url": "http://127.0.0.1:2", "models": ["m"]},
        {"id": "us-1", "region": "us", "url": "http://127.0.0.1:3", "models": ["m", "n"]},
    ],
}


def runtime(**over: Any) -> Runtime:
    return build_runtime(Config.model_validate({**BASE, **over}))


def windowed(rt: Runtime) -> Window:
    w = Window(60)
    w.add(Tick(time.time(), 10.0, rt.traffic.take()))
    return w


def test_every_region_with_its_upstreams_rates_and_percentiles() -> None:
    rt = runtime()
    for ok in (True, True, True, False):
        rt.traffic.attempt("eu-1", ok)
    for ms in (10.0, 20.0, 30.0):
        rt.traffic.first_token("eu-1", ms)
    rt.store.acquire("eu-1")
    s = state.build(rt, windowed(rt), time.monotonic())
    assert [r["id"] for r in s["regions"]] == ["eu", "us", "sa"]
    eu, us, sa = s["regions"]
    assert eu["state"] == "healthy" and eu["upstreams"] == ["eu-1", "eu-2"]
    assert eu["rps"] == 0.4 and eu["error_rate"] == 0.25 and eu["in_flight"] == 1
    assert (eu["ttft_p50_ms"], eu["ttft_p99_ms"]) == (20.0, 30.0)
    assert sa["state"] == "empty" and us["ttft_p50_ms"] is None
    row = next(u for u in s["upstreams"] if u["id"] == "eu-1")
    assert row["rps"] == 0.4 and row["error_rate"] == 0.25 and row["in_flight"] == 1
    assert row["state"] == "healthy" and row["why"] is None
    assert s["models"] == ["m", "n"]
    assert s["shared"] == {"mode": "local", "stale_since": None}
    assert (s["gateway"]["worker"], s["gateway"]["workers"]) == (None, 1)  # one: none named
    rt.worker = "2"  # one of several: the page says whose numbers these are
    assert state.build(rt, windowed(rt), time.monotonic())["gateway"]["worker"] == "2"


def test_down_drained_and_ejected_upstreams_say_why() -> None:
    rt = runtime()
    rt.store.record_probe("eu-1", False, None, "connection refused")
    now = time.monotonic()
    for _ in range(5):  # the default: 5 failed requests in a row eject
        rt.store.record_result("us-1", False, now)
    s = state.build(rt, Window(60), now)
    rows = {u["id"]: u for u in s["upstreams"]}
    assert rows["eu-1"]["state"] == "down"
    assert rows["eu-1"]["why"] == "health probe: connection refused"
    assert rows["us-1"]["state"] == "ejected"
    assert rows["us-1"]["why"] == "ejected after 5 consecutive failed requests; back in 30 s"
    assert rows["us-1"]["ejection_cause"] == "5 consecutive failed requests"
    rt.store.record_probe("us-1", False, None, "timeout")  # the probe's word comes first
    row = state.build(rt, Window(60), now)["upstreams"][2]
    assert row["state"] == "down"
    assert row["why"] == (
        "health probe: timeout; ejected after 5 consecutive failed requests; back in 30 s"
    )
    regions = {r["id"]: r["state"] for r in s["regions"]}
    assert regions == {"eu": "degraded", "us": "down", "sa": "empty"}

    drained = runtime(upstreams=[{**u, "drained": u["region"] == "eu"} for u in BASE["upstreams"]])
    s = state.build(drained, Window(60), time.monotonic())
    assert {r["id"]: r["state"] for r in s["regions"]}["eu"] == "drained"
    assert s["upstreams"][0]["why"] == "drained by an operator"
    # Every upstream drained on its own (or a region drained before drained_regions): the
    # region is not drained as a region (its undrain is refused: config_doc.change_region);
    # each upstream's own button undrains it.
    assert {r["id"]: r["drained"] for r in s["regions"]}["eu"] is False
    assert [u["drained"] for u in s["upstreams"]] == [True, True, False]


def test_a_recovering_upstream_says_so_not_failed() -> None:
    # Its first good probe cleared the error: "health probe: failed" said the opposite of
    # what the last probe found while it waited for the next.
    rt = runtime(health={"healthy_threshold": 3})
    rt.store.record_probe("eu-1", False, None, "connection refused")
    rt.store.record_probe("eu-1", True, 1.0, None)
    row = state.build(rt, Window(60), time.monotonic())["upstreams"][0]
    assert (row["state"], row["why"]) == ("down", "recovering: 1 of 3 good health probes")
    rt.store.record_probe("eu-1", False, None, "timeout")
    row = state.build(rt, Window(60), time.monotonic())["upstreams"][0]
    assert (row["state"], row["why"]) == ("down", "health probe: timeout")


async def test_a_drained_region_says_which_drain_holds_each_upstream() -> None:
    rt = runtime()
    await rt.store.update_upstream("eu-1", {"drained": True}, "alice")  # maintenance
    await rt.store.update_region("eu", {"drained": True}, "bob")
    s = state.build(rt, Window(60), time.monotonic())
    rows = {u["id"]: u for u in s["upstreams"]}
    assert {u: r["state"] for u, r in rows.items()} == {
        "eu-1": "drained",
        "eu-2": "drained",
        "us-1": "healthy",
    }
    assert rows["eu-1"]["why"] == "drained by an operator, and its region eu too"
    assert rows["eu-2"]["why"] == "its region eu is drained"
    # The buttons' flags: each upstream's own, the region's own.
    assert {u: r["drained"] for u, r in rows.items()} == {
        "eu-1": True,
        "eu-2": False,
        "us-1": False,
    }
    regions = {r["id"]: r for r in s["regions"]}
    assert regions["eu"]["state"] == "drained" and regions["eu"]["drained"] is True
    # Undrained on its own inside the drained region: still out, held by the region alone.
    await rt.store.update_upstream("eu-1", {"drained": False}, "alice")
    rows = {u["id"]: u for u in state.build(rt, Window(60), time.monotonic())["upstreams"]}
    assert (rows["eu-1"]["state"], rows["eu-1"]["drained"]) == ("drained", False)
    assert rows["eu-1"]["why"] == "its region eu is drained"
    await rt.store.update_upstream("eu-1", {"drained": True}, "alice")  # and drained again
    await rt.store.update_region("eu", {"drained": False}, "bob")
    s = state.build(rt, Window(60), time.monotonic())
    assert [(u["id"], u["state"]) for u in s["upstreams"]][:2] == [
        ("eu-1", "drained"),
        ("eu-2", "healthy"),
    ]
    assert s["regions"][0]["state"] == "healthy" and s["regions"][0]["drained"] is False


def test_places_are_grouped_by_city_with_the_regions_that_served_them() -> None:
    rt = runtime()
    for _ in range(3):
        rt.traffic.request(LONDON, "eu-1", "m")
    rt.traffic.request(LONDON, "us-1", "m")
    rt.traffic.request(LONDON, "-", "")
    places = state.build(rt, windowed(rt), time.monotonic())["places"]
    assert places == [
        {
            "country": "GB",
            "city": "London",
            "latitude": 51.5,
            "longitude": -0.13,
            "source": "geoip",
            "rps": 0.5,
            "to": {"eu": 0.3, "us": 0.1, "-": 0.1},
        }
    ]


def test_requests_refused_before_routing_are_counted_apart() -> None:
    # A drained region's clients, refused with no candidate, were in no region's rate: the
    # page showed the region grey at 0 req/s and nothing failing.
    rt = runtime()
    rt.traffic.request(LONDON, "eu-1", "m")
    rt.traffic.request(LONDON, "-", "")  # not served: failed at an upstream, its region's
    for _ in range(4):
        rt.traffic.unrouted()
    doc = state.build(rt, windowed(rt), time.monotonic())
    assert doc["unrouted_rps"] == 0.4
    assert state.build(runtime(), windowed(runtime()), time.monotonic())["unrouted_rps"] == 0.0


def test_shared_state_stale_since_is_said() -> None:
    # A Redis store that never reached Redis is stale from its start.
    rt = runtime(redis={"url": "redis://127.0.0.1:1"})
    shared = state.build(rt, Window(60), time.monotonic())["shared"]
    assert shared["mode"] == "stale" and shared["stale_since"].endswith("Z")
    assert shared["gateway_id"]


TOKEN = "alice-dashboard-state-token"


def _fleet_gateway(tmp: Path, redis_url: str) -> Gateway:
    """A gateway of a fleet in Redis at ``redis_url``, with an operator; nothing needs to
    serve: the state is read, not routed."""
    ups = [UpstreamSpec("eu-1", "eu-central", f"http://127.0.0.1:{free_port()}", ["m"])]
    extra = (
        f'[redis]\nurl = "{redis_url}"\ngateway_id = "gw0"\nrefresh_interval_s = 0.1\n'
        f'restart_grace_s = 0\n\n[admin]\ntokens = {{alice = "{TOKEN}"}}\n'
    )
    return start_gateway(tmp, lambda p: gateway_toml(p, ups, extra=extra))


def _shared(gw: Gateway) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{gw.ops_url}/dashboard/api/state", headers=headers, timeout=5)
    shared: dict[str, Any] = r.json()["shared"]
    return shared


def test_a_fleet_document_the_gateway_refuses_is_said(tmp_path: Path) -> None:
    """A document in Redis the gateway refuses (a hand edit: a weight of -5): /readyz said
    "degraded: ignoring the fleet config in Redis", the page "shared state: fresh", while
    every change made from it was refused for that document."""
    redis = start_redis(tmp_path)
    gw = _fleet_gateway(tmp_path, redis.url)
    client = Redis.from_url(redis.url, decode_responses=True)
    keys = Keys("default")
    try:
        eventually(lambda: _shared(gw)["mode"] == "fresh", what="the first sync")
        assert _shared(gw)["refused"] is None and _shared(gw)["synced"] is True
        good: Any = client.hgetall(keys.config)  # redis-py types the hash loosely
        doc = json.loads(good["doc"])
        doc["upstreams"][0]["weight"] = -5
        client.hset(keys.config, mapping={"doc": json.dumps(doc), "version": 7})
        client.publish(keys.events, "7")
        eventually(lambda: _shared(gw)["refused"] is not None, what="the refusal said")
        shared = _shared(gw)
        assert shared["mode"] == "fresh" and shared["refused"].startswith("version 7: invalid")
        assert "weight" in shared["refused"], shared
        client.hset(keys.config, mapping={**good, "version": 8})  # one it routes on
        client.publish(keys.events, "8")
        eventually(lambda: _shared(gw)["refused"] is None, what="the refusal gone")
    finally:
        client.close()
        gw.stop()
        redis.stop()


def test_a_gateway_never_in_sync_says_it_routes_on_its_own_file(tmp_path: Path) -> None:
    """Stale from its start: the page said "routes on its last snapshot", where the gateway
    routes on its own file, without the fleet's drains (/readyz says which)."""
    gw = _fleet_gateway(tmp_path, f"redis://127.0.0.1:{free_port()}/0")  # nothing there
    try:
        shared = _shared(gw)
        assert shared["mode"] == "stale" and shared["synced"] is False, shared
    finally:
        gw.stop()


def test_a_point_from_the_point_rows_is_the_point_from_the_whole_state() -> None:
    """What the sampler reads each second while nobody looks gives the sparklines the same
    point as the whole state would."""
    rt = runtime()
    rt.store.record_probe("eu-1", True, 12.345, None)
    rt.store.record_loads({"us-1": LoadReading(queue_depth=4.0, running=2.0)}, time.monotonic())
    rt.store.acquire("eu-2")
    rt.traffic.attempt("eu-1", False)
    rt.traffic.first_token("eu-1", 25.0)
    window = Window(60)
    tick = Tick(time.time(), 1.0, rt.traffic.take())
    window.add(tick)
    now = time.monotonic()
    whole, rows = state.build(rt, window, now), state.point_rows(rt, now)
    assert point(rows, tick) == point(whole, tick)
    assert point(rows, tick)["u"]["eu-1"][:5] == [1.0, 100.0, 25.0, 0, 12.3]
    assert point(rows, tick)["u"]["us-1"][5] == 4.0 and point(rows, tick)["u"]["eu-2"][3] == 1
    assert point(rows, tick)["r"]["sa"] == [0.0, 0.0, None, None]


def test_an_upstream_added_while_running_shows_joining_until_its_first_probe() -> None:
    rt = runtime()
    more = [
        *BASE["upstreams"],
        {"id": "eu-3", "region": "eu", "url": "http://127.0.0.1:4", "models": ["m"]},
    ]
    rt.store.replace_config(Config.model_validate({**BASE, "upstreams": more}))
    rows = {u["id"]: u for u in state.build(rt, Window(60), time.monotonic())["upstreams"]}
    assert rows["eu-3"]["state"] == "joining" and "first health probe" in rows["eu-3"]["why"]
    assert rows["eu-1"]["state"] == "healthy"  # there from the start: routed before a probe
    rt.store.record_probe("eu-3", True, 1.0, None)
    rows = {u["id"]: u for u in state.build(rt, Window(60), time.monotonic())["upstreams"]}
    assert rows["eu-3"]["state"] == "healthy"
