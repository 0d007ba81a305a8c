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
    assert s.ended("a", 1e12) and not s.ended("b", 1e12)
    s.merge(10.0, {"b": 50.0})  # the fleet's: added, never replacing what is known here
    assert s.ended("a", 1e12) and s.ended("b", 1e12)
    s.merge(60.0, {})  # a Redis that lost the set forgets nothing unexpired
    assert s.ended("a", 1e12) and not s.ended("b", 1e12)  # b's session is over anyway: dropped
    s.prune(100.0)
    assert len(s) == 0


def test_the_set_is_bounded_and_drops_the_soonest_to_end_by_its_id() -> None:
    s = EndedSessions(limit=3)
    for sid, until in (("x", 30.0), ("y", 10.0), ("z", 20.0)):
        s.end(sid, until, now=0.0)
    s.end("w", 40.0, now=0.0)  # full of live ones: y, which ends first, goes by its id...
    assert len(s) == 3 and s.ended("w", 40.0)
    assert s.ended("y", 10.0)  # ...and stays ended: no later than the floor it left
    s.end("v", 50.0, now=25.0)  # y and z are over by now: pruned before anything live goes
    assert s.ended("x", 1e12) and s.ended("w", 1e12) and s.ended("v", 1e12)


def test_a_logout_the_full_set_forgets_does_not_bring_its_session_back() -> None:
    # 10,000 logouts later (a second's loop of one operator's logins and logouts), a copied
    # cookie of a session logged out before them was accepted again.
    s = EndedSessions(limit=3)
    s.end("alice", until=100.0, now=0.0)
    for i in range(10):
        s.end(f"bob{i}", until=200.0 + i, now=1.0)
    assert len(s) == 3
    assert s.ended("alice", 100.0)  # forgotten by id, still ended: it ends before the floor
    assert s.ended("carol-older", 150.0)  # begun before it: logs in again (fail closed)
    assert not s.ended("carol-newer", 300.0)


async def test_one_store_ended_is_ended_in_memory() -> None:
    store = MemoryStateStore(CFG)  # its redis section unread: this store is the whole truth
    await store.end_session("sid", time.time() + 60)
    assert store.session_ended("sid", 1e12) and not store.session_ended("other", 1e12)


async def test_a_logout_on_one_gateway_is_seen_by_another_at_its_refresh(redis_url: str) -> None:
    here, there = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        until = time.time() + 3600
        await here.end_session("sid-1", until)
        assert here.session_ended("sid-1", 1e12)  # here at once
        assert not there.session_ended("sid-1", 1e12)
        await there._refresh()  # the next round of the sync
        assert there.session_ended("sid-1", 1e12)
        # Entries leave with their sessions: an expired one is trimmed at the next write.
        await here.end_session("old", time.time() - 1)
        found, floor = await sessions.read(here.redis(), here.keys, time.time())
        assert floor == 0.0  # all of the set read
        assert set(found) == {"sid-1"} and abs(found["sid-1"] - until) < 1e-3
        members = await here.redis().zrange(here.keys.ended_sessions, 0, -1)
        assert [m.decode() if isinstance(m, bytes) else m for m in members] == ["sid-1"]
    finally:
        await here.stop()
        await there.stop()


async def test_a_logout_redis_lost_is_written_back_for_gateways_started_after(
    redis_url: str,
) -> None:
    """Redis came back empty (no persistence, a flush): a gateway started then knew none of
    the logouts, and took a logged-out cookie as a session again. The gateways that hold them
    write them back at their next refresh, as they do the fleet's config."""
    here = gateway(redis_url, "gw0")
    later = gateway(redis_url, "gw1")
    try:
        await here.end_session("sid-1", time.time() + 3600)
        await here.redis().flushall()
        await here._refresh()  # the sync's next round puts it back
        await later._refresh()  # a gateway that never saw the logout
        assert later.session_ended("sid-1", 1e12)
    finally:
        await here.stop()
        await later.stop()


async def test_a_logout_with_redis_away_raises_and_ends_the_session_here() -> None:
    store = RedisStateStore(CFG)  # redis://127.0.0.1:1: nothing listens
    try:
        with pytest.raises((RedisError, OSError)):
            await store.end_session("sid", time.time() + 60)
        assert store.session_ended("sid", 1e12)
    finally:
        await store.stop()


async def test_past_the_read_bound_the_latest_logouts_are_read_and_the_rest_floored(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read took the soonest-ending 10,000: the newest logouts were the ones missed, and
    # a session logged out past them worked on every other gateway.
    monkeypatch.setattr(sessions, "ENDED_SESSIONS_MAX", 3)
    here, there = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        now = time.time()
        ends = {f"s{i}": now + 100 + i for i in range(5)}
        for sid, until in ends.items():
            await here.end_session(sid, until)
        await there._refresh()
        assert all(there.session_ended(sid, until) for sid, until in ends.items())
        assert not there.session_ended("live", now + 200)  # begun after: untouched
        # here holds all five, Redis has them: the two past the read's bound are not
        # written back (they were, at every refresh), only what Redis lacks.
        writes: list[dict[str, float]] = []
        real = here.redis().zadd

        async def counted(key: str, mapping: dict[str, float]) -> object:
            writes.append(mapping)
            return await real(key, mapping)

        monkeypatch.setattr(here.redis(), "zadd", counted)
        await here._refresh()
        assert writes == []
        # Exactly as many as a read takes: nothing missed, no floor.
        found, floor = await sessions.read(here.redis(), here.keys, now)
        assert len(found) == 3 and floor == ends["s1"]
        await here.redis().zremrangebyrank(here.keys.ended_sessions, 0, 1)  # s0 and s1 gone
        found, floor = await sessions.read(here.redis(), here.keys, now)
        assert set(found) == {"s2", "s3", "s4"} and floor == 0.0
    finally:
        await here.stop()
        await there.stop()
