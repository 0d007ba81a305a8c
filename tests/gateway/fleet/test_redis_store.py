"""Fleet health arithmetic and local views without a Redis; the config version (adopt only a
newer one, put a newer one back) against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.procs import free_port
from gateway.config import Config
from gateway.fleet import config_doc, config_io
from gateway.fleet.redis_store import RedisStateStore
from tests.support import start_redis

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "redis": {"url": "redis://127.0.0.1:1", "gateway_id": "me"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [
            {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
            {"id": "b", "region": "eu", "url": "http://127.0.0.1:2", "models": ["m"]},
        ],
    }
)


def view(gw: str, **healthy: bool) -> dict[str, Any]:
    return {"gateway": gw, "upstreams": {u: {"healthy": ok} for u, ok in healthy.items()}}


def healthy(store: RedisStateStore) -> dict[str, bool]:
    return {u.id: u.healthy for u in store.snapshot(0.0).upstreams}


def test_majority_down_is_down_for_everyone() -> None:
    s = RedisStateStore(CFG)
    s._merge([view("me", a=True, b=True), view("g2", a=False, b=True), view("g3", a=False, b=True)])
    assert s.fleet_down == {"a"}
    assert healthy(s) == {"a": False, "b": True}  # even though this gateway reaches a
    assert s.observations["a"] == {"me": True, "g2": False, "g3": False}


def test_a_partition_routes_around_locally_only() -> None:
    s = RedisStateStore(CFG)
    s.record_probe("a", False, None, "refused")  # only this gateway cannot reach a
    s._merge([view("me", a=False, b=True), view("g2", a=True, b=True), view("g3", a=True, b=True)])
    assert s.fleet_down == frozenset()  # not declared down for the fleet...
    assert healthy(s) == {"a": False, "b": True}  # ...but this gateway routes around it


def test_an_upstream_joined_while_running_gives_no_opinion_until_probed() -> None:
    s = RedisStateStore(CFG)
    more = [*CFG.upstreams, CFG.upstreams[0].model_copy(update={"id": "c"})]
    s.replace_config(CFG.model_copy(update={"upstreams": tuple(more)}))
    assert set(s._my_view()["upstreams"]) == {"a", "b"}  # not "c is healthy" unprobed
    s.record_probe("c", False, None, "refused")
    assert s._my_view()["upstreams"]["c"]["healthy"] is False


def test_a_tie_is_not_a_majority() -> None:
    s = RedisStateStore(CFG)
    s._merge([view("me", a=False), view("g2", a=True)])
    assert s.fleet_down == frozenset()


# --- the config version over a real redis-server --------------------------------------------


def gateway(url: str, gid: str, **redis: object) -> RedisStateStore:
    """A gateway's store holding only its file config, on the real Redis at ``url`` (the
    ``redis_url`` fixture's, tests/gateway/fleet/conftest.py); ``redis``: more of its keys."""
    data = CFG.model_dump(mode="json")
    # A slow timer: a change is heard on the events channel, not on the next poll.
    data["redis"] = {"url": url, "gateway_id": gid, "refresh_interval_s": 0.5, **redis}
    return RedisStateStore(Config.model_validate(data))


def routing(store: RedisStateStore) -> dict[str, tuple[float, bool]]:
    return {u.id: (u.weight, u.drained) for u in store.config.upstreams}


async def in_redis(store: RedisStateStore) -> tuple[dict[str, Any] | None, int]:
    return await config_io.load(store.redis(), store.keys)


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after five seconds."""
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after 5 s waiting for {what}")


OPERATED = {"a": (1.0, True), "b": (3.0, False)}  # after the two operator changes below


async def operate(store: RedisStateStore) -> None:
    await store.update_upstream("a", {"drained": True}, "alice")
    await store.update_upstream("b", {"weight": 3}, "bob")


async def test_a_lower_version_in_redis_is_not_adopted_but_overwritten(redis_url: str) -> None:
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()  # seeds version 1 from its file
        await operate(gw)
        assert (gw.version, routing(gw)) == (3, OPERATED)
        # Redis now holds an older document (e.g. it came back empty and a fresh gateway
        # seeded its file as version 1).
        file_doc = config_doc.routing_doc(CFG)
        await gw.redis().hset(gw.keys.config, mapping={"doc": json.dumps(file_doc), "version": 1})
        await gw._sync_config()
        assert (gw.version, routing(gw)) == (3, OPERATED)  # not rolled back...
        doc, version = await in_redis(gw)
        assert version == 3 and doc is not None  # ...and the newer document is back in Redis
        assert {u["id"]: (u["weight"], u["drained"]) for u in doc["upstreams"]} == OPERATED
        # Putting it back is no operator change: the audit trail holds just the two.
        assert [e["who"] for e in await gw.audit(10)] == ["bob", "alice"]
    finally:
        await gw.stop()


async def test_a_late_read_of_an_older_version_is_not_applied(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        old = await in_redis(gw)  # version 1, read before the changes, answered after
        await operate(gw)

        async def late(r: Any, keys: Any) -> tuple[dict[str, Any] | None, int]:
            monkeypatch.undo()
            return old

        monkeypatch.setattr(config_io, "load", late)
        await gw._sync_config()
        assert (gw.version, routing(gw)) == (3, OPERATED)
        assert (await in_redis(gw))[1] == 3
    finally:
        await gw.stop()


async def test_a_flushed_redis_and_a_fresh_gateway_do_not_roll_the_fleet_back(
    redis_url: str,
) -> None:
    fleet = [gateway(redis_url, f"gw{i}") for i in range(2)]
    fresh = gateway(redis_url, "gw2")
    try:
        for gw in fleet:
            await gw.start()
        await until(lambda: all(gw.version == 1 for gw in fleet), "the fleet to sync")
        await operate(fleet[0])
        await until(lambda: all(gw.version == 3 for gw in fleet), "both changes everywhere")
        await fleet[0].redis().flushall()  # Redis lost everything; the gateways run on
        await fresh.start()  # and a gateway starts now with only its file: it seeds version 1
        everyone = [*fleet, fresh]
        await until(
            lambda: all((gw.version, routing(gw)) == (3, OPERATED) for gw in everyone),
            "the whole fleet on the newest document",
        )
        doc, version = await in_redis(fresh)
        assert version == 3 and doc is not None
        assert {u["id"]: (u["weight"], u["drained"]) for u in doc["upstreams"]} == OPERATED
        # And it stays there: a change made now builds on it.
        await fresh.update_upstream("b", {"weight": 2}, "carol")
        await until(
            lambda: all(gw.version == 4 and routing(gw)["b"] == (2.0, False) for gw in everyone),
            "the next change everywhere",
        )
        assert routing(fleet[1])["a"] == (1.0, True)
    finally:
        for gw in [*fleet, fresh]:
            await gw.stop()


async def test_two_gateways_putting_back_at_once_leave_the_higher_version(redis_url: str) -> None:
    gw = gateway(redis_url, "gw0")
    docs: dict[int, dict[str, Any]] = {v: {"upstreams": [], "v": v} for v in (3, 5)}
    try:
        r = gw.redis()
        for i in range(20):  # either one first: the loser of the race compares again
            await r.delete(gw.keys.config)
            order = sorted(docs.items(), reverse=i % 2 == 1)
            await asyncio.gather(*(config_io.put_back(r, gw.keys, doc, v) for v, doc in order))
            assert await in_redis(gw) == (docs[5], 5)
    finally:
        await gw.stop()


async def test_a_change_right_after_redis_lost_the_document_builds_on_ours(
    redis_url: str,
) -> None:
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        await gw.redis().flushall()
        await gw.update_upstream("b", {"weight": 2}, "carol")  # before any sync noticed
        assert (gw.version, routing(gw)) == (4, {**OPERATED, "b": (2.0, False)})
        assert (await in_redis(gw))[1] == 4
        assert [e["who"] for e in await gw.audit(10)] == ["carol"]  # the trail went with Redis
    finally:
        await gw.stop()


async def test_redis_coming_back_raises_no_false_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(tmp_path)
    gw = gateway(server.url, "gw0")
    try:
        await gw.start()
        await until(lambda: gw.stale_since is None, "the first sync")
        # Idle connections in the pool, as a busy gateway's (admin changes, the listener's
        # syncs) has: after the restart each is a socket Redis closed.
        await asyncio.gather(*(gw.redis().ping() for _ in range(8)))
        server.stop()
        await until(lambda: gw.stale_since is not None, "the outage to be seen")
        server.start()
        await until(lambda: gw.stale_since is None, "the sync after Redis came back")
        await asyncio.sleep(1.2)  # two refresh intervals: a listener's error shows by then
        alarms = _fleet_errors(caplog)
        assert alarms == [
            f"Redis at {server.url} unreachable (ConnectionError); routing on the last snapshot"
        ]
        assert gw.stale_since is None
    finally:
        await gw.stop()
        server.stop()


async def test_redis_unreachable_from_the_start_is_said_once_with_its_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong URL or password: the gateway routes on its own file and view, and says why,
    its password masked (stale_since is set from the start, which used to keep it silent)."""
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    gw = gateway(dead, "gw0")
    failed = 0
    drop = gw._drop_idle_connections

    async def counted() -> None:  # called once per failed round, before its backoff
        nonlocal failed
        failed += 1
        await drop()

    gw._drop_idle_connections = counted  # type: ignore[method-assign]
    try:
        await gw.start()
        await until(lambda: failed >= 3, "three failed rounds")  # said after the first only
        alarms = _fleet_errors(caplog)
        assert len(alarms) == 1, alarms
        assert "Redis at redis://:****@127.0.0.1:" in alarms[0] and "hunter2" not in alarms[0]
        assert "routing on this gateway's own file and view until it answers" in alarms[0]
        assert gw.stale_since is not None
    finally:
        await gw.stop()


async def test_a_file_that_differs_from_the_fleet_is_followed_no_more_and_said_so(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = gateway(redis_url, "gw0")
    data = CFG.model_dump(mode="json")
    data["redis"] = {"url": redis_url, "gateway_id": "gw1"}
    data["upstreams"] = [data["upstreams"][0], {**data["upstreams"][1], "id": "c"}]
    data["residency"] = [{"name": "de-only", "countries": ["DE"], "regions": ["eu"]}]
    changed = RedisStateStore(Config.model_validate(data))  # a new file, the same fleet
    try:
        await first._sync_config()  # seeds version 1 from its file
        await operate(first)  # operators' changes: no difference of the file's
        caplog.clear()
        await changed._sync_config()
        assert changed.version == 3 and [u.id for u in changed.upstreams()] == ["a", "b"]
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        text = warning.getMessage()
        assert "upstreams only in the file: c; upstreams only in Redis: b; " in text
        assert "residency rules only in the file: de-only" in text
        assert "deployment 'default', version 3" in text and "new redis.deployment" in text
        # Once: a later document (an operator's change) is the fleet's own business.
        await first.update_upstream("a", {"weight": 2}, "alice")
        await changed._sync_config()
        assert changed.version == 4
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        # A gateway whose file is the fleet's seed says nothing.
        caplog.clear()
        same = gateway(redis_url, "gw2")
        await same._sync_config()
        assert same.version == 4
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        await same.stop()
    finally:
        await first.stop()
        await changed.stop()


def previous_release_apply(config: Config, doc: dict[str, Any]) -> Config:
    """What a gateway of the release before drained_regions makes of a fleet document: its
    apply_doc takes regions, upstreams and residency alone (its models refuse any key they
    lack, so regions[] must hold none it does not know)."""
    data = config.model_dump(mode="json")
    del data["drained_regions"]  # a key its Config has not
    data.update({k: doc[k] for k in ("regions", "upstreams", "residency") if k in doc})
    return Config.model_validate(data)


async def test_a_region_drain_in_redis_is_one_the_previous_release_routes_around(
    redis_url: str,
) -> None:
    gw, other = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        await gw._sync_config()  # seeds version 1 from its file
        await gw.update_upstream("a", {"drained": True}, "alice")  # maintenance
        await gw.update_region("eu", {"drained": True}, "bob")
        await other._sync_config()
        assert other.version == 3 and other.config.drained_regions == {"eu": ("a",)}
        assert [u.drained for u in other.snapshot(0.0).upstreams] == [True, True]
        doc, _ = await in_redis(gw)
        assert doc is not None and doc["drained_regions"] == {"eu": ["a"]}
        assert all(u.drained for u in previous_release_apply(CFG, doc).upstreams)
        await gw.update_region("eu", {"drained": False}, "bob")
        await other._sync_config()
        assert [u.drained for u in other.snapshot(0.0).upstreams] == [True, False]
        # No region drained: the document is, byte for byte, one the previous release wrote.
        raw = await gw.redis().hget(gw.keys.config, "doc")
        expected, _, _ = config_doc.change_upstream(
            config_doc.routing_doc(CFG), "a", {"drained": True}
        )
        assert raw is not None
        assert (raw.decode() if isinstance(raw, bytes) else raw) == json.dumps(expected)
    finally:
        await gw.stop()
        await other.stop()


def _fleet_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == "geogate.fleet"
    ]
