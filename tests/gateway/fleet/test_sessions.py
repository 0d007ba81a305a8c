"""Dashboard sessions ended by a logout: the set kept in memory (a clock passed in), and over a
real redis-server, one gateway's logout seen by another at its next refresh."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import RedisError

from gateway.fleet import sessions
from gateway.fleet.memory import MemoryStateStore
from gateway.fleet.redis_store import RedisStateStore
from gateway.fleet.sessions import EndedSessions
from tests.gateway.fleet.test_redis_store import CFG, gateway


def test_an_ended_session_stays_ended_until_it_would_have_expired() -> None:
    s = EndedSessions()
    s.end("a", until=100.0, now=0.0)
    assert s.ended("a") and not s.ended("b")
    s.merge({"b": 50.0}, now=10.0)  # the fleet's: added, never replacing what is known here
    assert s.ended("a") and s.ended("b")
    s.merge({}, now=60.0)  # a Redis that lost the set forgets nothing unexpired
    assert s.ended("a") and not s.ended("b")  # b's session is over anyway: dropped
    s.prune(100.0)
    assert len(s) == 0


def test_the_set_is_bounded_and_drops_the_soonest_to_end() -> None:
    s = EndedSessions(limit=3)
    for sid, until in (("x", 30.0), ("y", 10.0), ("z", 20.0)):
        s.end(sid, until, now=0.0)
    s.end("w", 40.0, now=0.0)  # full of live ones: y, which ends first, goes
    assert len(s) == 3 and not s.ended("y") and s.ended("w")
    s.end("v", 50.0, now=25.0)  # y and z are over by now: pruned before anything live goes
    assert s.ended("x") and s.ended("w") and s.ended("v")


async def test_one_store_ended_is_ended_in_memory() -> None:
    store = MemoryStateStore(CFG)  # its redis section unread: this store is the whole truth
    await store.end_session("sid", time.time() + 60)
    assert store.session_ended("sid") and not store.session_ended("other")


async def test_a_logout_on_one_gateway_is_seen_by_another_at_its_refresh(redis_url: str) -> None:
    here, there = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        until = time.time() + 3600
        await here.end_session("sid-1", until)
        assert here.session_ended("sid-1")  # here at once
        assert not there.session_ended("sid-1")
        await there._refresh()  # the next round of the sync
        assert there.session_ended("sid-1")
        # Entries leave with their sessions: an expired one is trimmed at the next write.
        await here.end_session("old", time.time() - 1)
        found = await sessions.read(here.redis(), here.keys, time.time())
        assert set(found) == {"sid-1"} and abs(found["sid-1"] - until) < 1e-3
        members = await here.redis().zrange(here.keys.ended_sessions, 0, -1)
        assert [m.decode() if isinstance(m, bytes) else m for m in members] == ["sid-1"]
    finally:
        await here.stop()
        await there.stop()


async def test_a_logout_with_redis_away_raises_and_ends_the_session_here() -> None:
    store = RedisStateStore(CFG)  # redis://127.0.0.1:1: nothing listens
    try:
        with pytest.raises((RedisError, OSError)):
            await store.end_session("sid", time.time() + 60)
        assert store.session_ended("sid")
    finally:
        await store.stop()
