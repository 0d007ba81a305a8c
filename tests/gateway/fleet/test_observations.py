"""Observations in Redis: a malformed one is skipped, not fatal; the observers' set is scored by
Redis's clock, so a gateway whose clock runs ahead trims nobody; the config version each
gateway routes on is read from them (against a real redis-server)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.fleet import observations
from gateway.fleet.observations import RedisClock
from gateway.fleet.redis_store import RedisStateStore
from tests.gateway.fleet.test_redis_store import CFG, gateway, view


def test_malformed_observations_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = view("gw1", a=True)
    raws = [
        json.dumps(good),
        json.dumps({"upstreams": {}}),  # no gateway: it stopped every reader (KeyError)
        json.dumps({"gateway": "gw2", "upstreams": []}),
        json.dumps({"gateway": "gw3", "upstreams": {"a": "up", "b": {"healthy": False}}}),
        "not json",
        json.dumps([1]),
        None,  # expired between the set's read and the MGET: no warning
    ]
    views = observations.parse(raws)
    assert [v["gateway"] for v in views] == ["gw1", "gw3"]
    assert views[1]["upstreams"] == {"b": {"healthy": False}}  # its bad entry left out
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == "skipped 4 observation(s) in Redis that are not a gateway's view"
    assert observations.votes(views) == {"a": {"gw1": True}, "b": {"gw3": False}}


def test_down_is_a_majority_not_a_tie() -> None:
    assert observations.down({"a": {"g1": False, "g2": True}, "b": {"g1": False}}) == {"b"}


def test_the_clock_is_redis_time_from_the_round_trips_midpoint() -> None:
    clock = RedisClock(lambda: 1_000.0)
    assert clock.now() is None
    clock.heard((990, 500_000), sent=999.0, answered=1_001.0)  # Redis 10.5 s behind us
    assert clock.now() == pytest.approx(990.5)


async def test_a_gateway_whose_clock_runs_ahead_trims_no_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One host's clock 10 s ahead, observation_ttl_s 5 (as /tmp/r18/fleet/skew.py runs a
    gateway): it trimmed every other gateway from the observers' set, so they had no vote."""
    ahead, other = gateway(redis_url, "gw-ahead"), gateway(redis_url, "gw-other")
    real = time.time
    try:
        for _ in range(3):
            with monkeypatch.context() as m:
                m.setattr(time, "time", lambda: real() + 10.0)
                await ahead._exchange_observations()
            await other._exchange_observations()
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real() + 10.0)
            await ahead._exchange_observations()
        for store in (ahead, other):
            assert set(store.observations["a"]) == {"gw-ahead", "gw-other"}
        r = other.redis()
        secs, usecs = await r.time()
        now = secs + usecs / 1e6
        for observer in (ahead.observer, other.observer):  # both scored by Redis's time
            assert abs((await r.zscore(other.keys.observers, observer) or 0) - now) < 2
    finally:
        for s in (ahead, other):
            await s.stop()


async def test_redis_clock_is_read_again_after_the_connection_is_lost(redis_url: str) -> None:
    """A Sentinel failover to a node whose clock is 60 s behind the old one's: the offset
    taken from the old node would score this gateway 60 s ahead and trim every other
    gateway's entry, a round without their votes. Lost with the connection, it is read anew."""
    gw, other = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        await other._exchange_observations()
        await gw._exchange_observations()
        assert gw.clock.offset is not None
        gw.clock.offset += 60.0  # what the old node's clock said
        gw._out_of_sync(RedisConnectionError("Connection closed by server."))  # the failover
        await gw._exchange_observations()  # the first round on the new node
        assert set(gw.observations["a"]) == {"gw0", "gw1"}
        assert await other.redis().zscore(other.keys.observers, other.observer) is not None
    finally:
        await gw.stop()
        await other.stop()


async def test_a_malformed_observation_in_redis_stops_no_reader(redis_url: str) -> None:
    gw, other = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        r = gw.redis()
        await r.set(gw.keys.obs("junk"), json.dumps({"upstreams": {}}), px=5000)
        await r.zadd(gw.keys.observers, {"junk": (await r.time())[0]})
        await other._exchange_observations()
        await gw._exchange_observations()
        assert gw.observations["a"] == {"gw0": True, "gw1": True}
    finally:
        await gw.stop()
        await other.stop()


async def test_each_observation_says_the_version_its_gateway_routes_on(redis_url: str) -> None:
    one, two = gateway(redis_url, "gw0"), gateway(redis_url, "gw0")
    two.observer = "gw0/other-worker"  # a second worker of gw0, a version behind
    try:
        await one._sync_config()
        await one.update_upstream("a", {"weight": 2}, "alice")
        await two._sync_config()
        two.version = 1
        for s in (one, two):
            await s._exchange_observations()
        assert one._my_view()["config_version"] == 2
        # The highest of a gateway's workers; an earlier release's observation has none.
        r = one.redis()
        await r.set(one.keys.obs("old/1"), json.dumps(view("old", a=True)), px=5000)
        await r.zadd(one.keys.observers, {"old/1": (await r.time())[0]})
        assert await observations.versions(r, one.keys) == {"gw0": 2}
        await r.delete(one.keys.obs(one.observer), one.keys.obs(two.observer))
        assert await observations.versions(r, one.keys) == {}  # expired: not fresh
    finally:
        await one.stop()
        await two.stop()


def test_a_siblings_ejection_is_taken_only_from_this_gateways_workers() -> None:
    def v(gw: str, **until: float | None) -> dict[str, Any]:
        return {"gateway": gw, "upstreams": {u: {"ejected_until": t} for u, t in until.items()}}

    views: list[dict[str, Any]] = [
        v("gw0", a=130.0, b=None),  # a sibling ejected a until t=130
        v("gw0", a=110.0, c=100.0),  # another ejected a sooner; c's time is over
        v("gw1", b=140.0),  # another gateway's: its host's clock, not ours
        v("gw0", d=1000.0),  # past max_s from now: a clock that is not this host's
        {"gateway": "gw0", "upstreams": "junk"},
        {"gateway": "gw0", "upstreams": {"e": "junk", "f": {"ejected_until": "soon"}}},
    ]
    assert observations.sibling_ejections(views, "gw0", max_s=300.0, now=100.0) == {"a": 130.0}


async def test_an_upstream_one_worker_ejected_is_ejected_by_its_siblings(redis_url: str) -> None:
    # Two workers of gateway gw0 (their observer keys apart, as their pids make them), and a
    # worker of gw1, on one Redis: five failures on one worker eject "a" there; after a
    # refresh its sibling routes around it too, and the other gateway does not.
    ejecting, sibling, other = (gateway(redis_url, g) for g in ("gw0", "gw0", "gw1"))
    ejecting.observer, sibling.observer = "gw0/1", "gw0/2"
    try:
        for store in (ejecting, sibling, other):
            await store._sync_config()
        now = time.monotonic()
        for _ in range(5):
            ejecting.record_result("a", False, now)
        assert ejecting.health("a").ejected(now)
        for store in (ejecting, sibling, other):
            await store._refresh()
        later = time.monotonic()
        assert sibling.health("a").ejected(later)
        assert sibling.health("a").ejected_until == ejecting.health("a").ejected_until
        assert [u.id for u in sibling.snapshot(later).upstreams if not u.healthy] == ["a"]
        assert not other.health("a").ejected(later)  # its own requests decide there
        assert sibling.health("a").ejection_cause is None  # told once, by the one that ejected
        # The sibling publishes no ejection it took (else the one that ejected would take it
        # back after its own probe ended it), and does not probe it.
        assert sibling._my_view()["upstreams"]["a"]["ejected_until"] is None
        # The ejecting worker's completion probe ends it early: its siblings end it too.
        assert ejecting.end_ejection("a", time.monotonic())
        for store in (ejecting, sibling):
            await store._refresh()
        assert not sibling.health("a").ejected(time.monotonic())
        for store in (ejecting, sibling):  # and it stays ended: nothing brings it back
            await store._refresh()
        assert not sibling.health("a").ejected(time.monotonic())
    finally:
        for store in (ejecting, sibling, other):
            await store.stop()


async def test_a_siblings_ejection_is_taken_within_the_pools_cap(redis_url: str) -> None:
    # A pool of two: at most one out (max(1, 10 % of 2)). Two workers each eject another
    # upstream in the same refresh: neither takes the other's, so neither routes on none.
    one, two = gateway(redis_url, "gw0"), gateway(redis_url, "gw0")
    one.observer, two.observer = "gw0/1", "gw0/2"
    try:
        now = time.monotonic()
        for _ in range(5):
            one.record_result("a", False, now)
            two.record_result("b", False, now)
        for store in (one, two):
            await store._sync_config()
        for store in (one, two, one, two):  # each has read the other's view
            await store._refresh()
        later = time.monotonic()
        assert [u for u in "ab" if one.health(u).ejected(later)] == ["a"]
        assert [u for u in "ab" if two.health(u).ejected(later)] == ["b"]
    finally:
        await one.stop()
        await two.stop()


def test_a_workers_own_view_read_back_is_no_siblings() -> None:
    # Read back, a worker's own view may be older than an ejection it has ended since: taken
    # as a sibling's, the ejection came back with no one to probe it.
    mine = {"gateway": "gw0", "observer": "gw0/1", "upstreams": {"a": {"ejected_until": 130.0}}}
    other = {"gateway": "gw0", "observer": "gw0/2", "upstreams": {"b": {"ejected_until": 120.0}}}
    got = observations.sibling_ejections([mine, other], "gw0", 300.0, 100.0, observer="gw0/1")
    assert got == {"b": 120.0}


def test_a_taken_ejection_ends_with_the_sync_and_never_extends_ones_own() -> None:
    def sibling(uid: str, until: float) -> dict[str, Any]:
        return {"gateway": "me", "observer": "me/2", "upstreams": {uid: {"ejected_until": until}}}

    store = RedisStateStore(CFG)  # gateway_id "me"
    now = time.monotonic()
    store._merge([sibling("a", now + 60)])
    assert store.health("a").ejected(now + 1)  # the sibling's, taken
    # Redis away: the sibling's end could not be heard, and only it probes: released.
    store._out_of_sync(ConnectionError("gone"))
    assert not store.health("a").ejected(time.monotonic())
    # One made here is not extended to a sibling's later deadline: it would publish that as
    # its own, and bring the sibling's back after the sibling's own probe ended it.
    later = time.monotonic()
    for _ in range(5):
        store.record_result("b", False, later)
    own_until = store.health("b").ejected_until
    assert own_until > later and store.health("b").ejection_cause is not None
    store._merge([sibling("b", later + 60)])
    assert store.health("b").ejected_until == own_until
