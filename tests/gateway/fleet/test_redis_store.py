"""Fleet health arithmetic and local views without a Redis; the config version (adopt only a
newer one, put a newer one back) against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors

from gateway.cli.procs import free_port
from gateway.config import Config
from gateway.errors import AuditUnwritable, ConfigError, SharedStateUnavailable
from gateway.fleet import config_doc, config_io, last_known, observations, redis_store
from gateway.fleet.redis_store import RedisStateStore
from gateway.fleet.settle import Settled, Stored
from gateway.http.errors import status_of
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


def test_down_and_back_for_the_fleet_are_both_logged(caplog: pytest.LogCaptureFixture) -> None:
    # The log had an outage's start ("down for the fleet") and never its end.
    s = RedisStateStore(CFG)
    caplog.set_level(logging.INFO, "geogate.fleet")
    s._merge([view("me", a=True, b=True), view("g2", a=False, b=True), view("g3", a=False, b=True)])
    s._merge([view("me", a=True, b=True), view("g2", a=True, b=True), view("g3", a=False, b=True)])
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", "down for the fleet: a"), ("INFO", "back for the fleet: a")]


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
    # A slow timer: a change is heard on the events channel, not on the next poll. Changes
    # right after the test's Redis started: the wait after a start (redis.restart_grace_s) is
    # given where a test is about it.
    data["redis"] = {
        "url": url,
        "gateway_id": gid,
        "refresh_interval_s": 0.5,
        "restart_grace_s": 0,
        **redis,
    }
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
        # Putting it back is no operator change; but Redis's document, with no change time
        # (as an earlier release writes one), may have been a change made there: dropped,
        # and the audit says so beside the two operators' changes.
        trail = await gw.audit(10)
        assert [e["who"] for e in trail] == ["gateway gw0", "bob", "alice"]
        assert trail[0]["what"].startswith("fleet config conflict: two documents: Redis's")
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
        # The audit lost its trail with the data: the put-back says so, once, by a gateway.
        (marker,) = await config_io.read_audit(fresh.redis(), fresh.keys, 10)
        assert marker["what"].startswith("fleet config put back: Redis held ")
        assert marker["who"].startswith("gateway gw") and marker["version"] == "3"
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


async def test_a_fresh_gateways_other_file_does_not_replace_what_the_fleet_routes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # No operator change since the fleet seeded its file; Redis loses everything and a gateway
    # with another file (a residency rule less, a review's run) seeds it before the others put
    # theirs back. Two seeds at one version went by the digests' order: the newcomer's file
    # could take the rule off every gateway. Here its digest is the greater, as it was there.
    fleet = [gateway(redis_url, f"gw{i}") for i in range(2)]
    routed = routing(fleet[0])
    seeded = Stored(config_doc.routing_doc(CFG), 1, 0.0).digest
    for weight in range(2, 50):  # another file: upstream b's weight, with a greater digest
        data = CFG.model_dump(mode="json")
        data["upstreams"][1]["weight"] = weight
        other = Config.model_validate(data)
        if Stored(config_doc.routing_doc(other), 1, 0.0).digest > seeded:
            break
    else:
        pytest.fail("no other file's digest is the greater: the case is not set up")
    data["redis"] = {"url": redis_url, "gateway_id": "gw2", "refresh_interval_s": 0.5}
    fresh = RedisStateStore(Config.model_validate(data))
    try:
        for gw in fleet:
            await gw.start()
        await until(lambda: all(gw.version == 1 for gw in fleet), "the fleet to sync")
        await fleet[0].redis().flushall()
        with caplog.at_level(logging.ERROR, logger="geogate"):
            await fresh.start()  # seeds version 1 from its own file
            everyone = [*fleet, fresh]
            await until(
                lambda: all((gw.version, routing(gw)) == (2, routed) for gw in everyone),
                "the whole fleet on the document it routed on",
            )
        assert "kept the one this gateway routed on" in caplog.text
    finally:
        for gw in [*fleet, fresh]:
            await gw.stop()


async def test_two_gateways_putting_back_at_once_leave_the_higher_version(redis_url: str) -> None:
    gw = gateway(redis_url, "gw0")
    docs = {v: Stored({"upstreams": [], "v": v}, v, None) for v in (3, 5)}
    try:
        r = gw.redis()
        for i in range(20):  # either one first: the loser of the race compares again
            await r.delete(gw.keys.config)
            order = sorted(docs.items(), reverse=i % 2 == 1)
            await asyncio.gather(*(config_io.settle(r, gw.keys, mine) for _, mine in order))
            assert await in_redis(gw) == (docs[5].doc, 5)
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
        # The trail went with Redis; the put-back says so, under the change made after it.
        assert [e["who"] for e in await gw.audit(10)] == ["carol", "gateway gw0"]
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
        [alarm] = _fleet_errors(caplog)
        # The error's own words too (a refused connection here; a TLS certificate not
        # verified, a read-only replica elsewhere), not its type alone.
        assert alarm.startswith(f"Redis at {server.url} unreachable (ConnectionError: ")
        assert alarm.endswith("); routing on the last snapshot")
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


async def test_a_listener_ending_on_an_error_after_its_cancel_is_not_left_unretrieved(
    redis_url: str,
) -> None:
    """The round cancels the change listener as it ends (the store stopped, a failed round),
    and redis-py may end it on a ConnectionError instead (its socket closed under a read).
    Nobody retrieved that error: asyncio logged "Task exception was never retrieved" with its
    traceback whenever the task was collected (inside an ast.parse, CPython 3.11.7 then failed
    a test run with a SystemError)."""
    gw = gateway(redis_url, "gw0")
    listeners: list[weakref.ref[asyncio.Task[Any]]] = []
    ended = asyncio.Event()

    async def swallows_the_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        listeners.append(weakref.ref(task))
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            ended.set()  # its task ends with the raise, in this same step
            raise redis_errors.ConnectionError("Connection closed by server.") from None

    gw._listen = swallows_the_cancel  # type: ignore[method-assign]
    said: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: said.append(context["message"]))
    try:
        await gw.start()
        await gw.stop()
        await asyncio.wait_for(ended.wait(), 5)
        del gw  # its stopped task's CancelledError holds the round's frame, and the listener
        gc.collect()
        assert [ref() for ref in listeners] == [None]  # collected: its error had its say
    finally:
        loop.set_exception_handler(None)
    assert "Task exception was never retrieved" not in said, said


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


# --- Redis lost data: two documents settled on the newer change ------------------------------


def conflicts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event.action", None) == "config-conflict"]


async def hold(r: Any, store: RedisStateStore, held: Stored) -> None:
    """Redis holds ``held``, written at once (one MULTI): no gateway reads anything between."""
    async with r.pipeline(transaction=True) as pipe:
        pipe.delete(store.keys.config)
        pipe.hset(store.keys.config, mapping=config_io.fields(held))
        await pipe.execute()


async def test_a_change_made_on_a_restored_redis_at_the_fleets_version_is_settled(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis is restored from an older snapshot (version 2) and ctl changes it there before
    any gateway puts its version 3 back: version 3 twice, two documents, which the version
    alone never told apart. Every gateway and Redis end on the newer change, above both."""
    fleet = [gateway(redis_url, f"gw{i}") for i in range(3)]
    r = fleet[0].redis()
    try:
        for gw in fleet:
            await gw.start()
        await until(lambda: all(gw.version == 1 for gw in fleet), "the fleet to sync")
        await fleet[0].update_upstream("a", {"drained": True}, "alice")
        snapshot = await config_io.read(r, fleet[0].keys)  # version 2: the RDB file
        await fleet[0].update_upstream("b", {"weight": 3}, "bob")
        await until(lambda: all(gw.version == 3 for gw in fleet), "version 3 everywhere")
        assert snapshot.doc is not None
        ctl_doc, _, _ = config_doc.change_upstream(snapshot.doc, "b", {"weight": 5})
        secs, usecs = await r.time()
        await hold(r, fleet[0], Stored(ctl_doc, 3, secs + usecs / 1e6))
        kept = {"a": (1.0, True), "b": (5.0, False)}  # ctl's, the newer change
        await until(
            lambda: all((gw.version, routing(gw)) == (4, kept) for gw in fleet),
            "every gateway on the newer change, as version 4",
        )
        doc, version = await in_redis(fleet[0])
        assert (doc, version) == (ctl_doc, 4)
        [error] = conflicts(caplog)  # said once, by the gateway that settled it
        text = error.getMessage()
        assert error.levelno == logging.ERROR
        assert "kept the newer change, Redis's, as version 4" in text
        assert "dropped this gateway's version 3: upstream b: weight 3 (kept: 5)" in text
    finally:
        for gw in fleet:
            await gw.stop()


async def test_a_gateway_cut_off_puts_no_older_change_back_over_a_newer_one(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway cut off from Redis holds version 3; Redis comes back empty, a new gateway
    seeds version 1 and an operator's change makes it 2, confirmed. The cut-off gateway's
    return must not put its version 3, the older change, back over it."""
    cut, fresh = gateway(redis_url, "gw-cut"), gateway(redis_url, "gw-new")
    try:
        await cut._sync_config()
        await operate(cut)  # version 3; then it is cut off: no sync, no observation
        await cut.redis().flushall()
        await fresh.start()
        await until(lambda: fresh.version == 1, "the new gateway's seed")
        await fresh.update_upstream("b", {"weight": 2}, "carol")  # version 2, the newest change
        await cut.start()  # back
        kept = {"a": (1.0, False), "b": (2.0, False)}
        await until(
            lambda: all((gw.version, routing(gw)) == (4, kept) for gw in (cut, fresh)),
            "both gateways on carol's change, above the cut-off gateway's version",
        )
        doc, version = await in_redis(fresh)
        assert version == 4 and doc is not None
        assert {u["id"]: (u["weight"], u["drained"]) for u in doc["upstreams"]} == kept
        [error] = conflicts(caplog)
        text = error.getMessage()
        assert "dropped this gateway's version 3: upstream a: drained true (kept: false); " in text
        assert "upstream b: weight 3 (kept: 2)" in text
        # In the audit too, which operators read (the log is the one settling gateway's).
        entries = await config_io.read_audit(fresh.redis(), fresh.keys, 10)
        [dropped] = [e for e in entries if e["what"].startswith("fleet config conflict: ")]
        assert dropped["who"] == "gateway gw-cut" and dropped["version"] == "4"
        assert "upstream a: drained true (kept: false)" in dropped["what"]
        assert (dropped["before"], dropped["after"]) == ('{"version": 3}', '{"version": 4}')
    finally:
        await cut.stop()
        await fresh.stop()


# redis.restart_grace_s where a test is about it: long enough that a loaded machine's stall
# does not let the change through before the test's refusal is asked for.
GRACE_S = 4.0


async def refused_while_young(change: Awaitable[Any], after: str) -> None:
    """``change``, made within GRACE_S of Redis's start, refused saying so (``after``: a
    pattern for what follows "Redis started N s ago") and for how long."""
    with pytest.raises(SharedStateUnavailable) as refused:
        await change
    said = str(refused.value)
    assert re.match(r"Redis started \d+ s ago" + after, said), said
    assert f"put back within {GRACE_S:g} s (redis.restart_grace_s); retry in " in said


async def reconnected(call: Callable[[], Awaitable[object]]) -> None:
    """``call`` once Redis is back: a pooled connection that died with the server fails the
    first tries (one each), not the Redis that restarted."""
    for _ in range(3):
        with contextlib.suppress(redis_errors.ConnectionError):
            await call()
            return
    await call()  # its own error, if Redis is not back


async def past_grace(started: float) -> None:
    """Until GRACE_S after Redis started (at ``started``, monotonic): the rule is a time."""
    await asyncio.sleep(max(0.0, started + GRACE_S + 0.1 - time.monotonic()))


async def test_a_change_on_a_redis_started_from_a_saved_copy_waits_for_the_gateways(
    tmp_path: Path,
) -> None:
    """Redis restarted from its dump (a restored snapshot), with gateways cut off meanwhile
    holding newer versions: the observations that would refuse a change are the copy's own,
    old ones, so a change made there was taken and the settle then dropped the fleet's newer
    changes. Refused until the gateways can have reconnected (redis.restart_grace_s, GRACE_S
    here), then taken."""
    server = start_redis(tmp_path)
    gw = gateway(server.url, "gw0")
    late = gateway(server.url, "gw1", restart_grace_s=GRACE_S)
    try:
        await gw._sync_config()
        await gw.update_upstream("a", {"weight": 2}, "alice")
        await gw.redis().save()
        server.stop()
        server.start()
        started = time.monotonic()
        await reconnected(late.redis().ping)
        await refused_while_young(
            late.update_upstream("a", {"weight": 3}, "bob"), r" from a saved copy \("
        )
        assert (await config_io.read(late.redis(), late.keys)).version == 2  # nothing written
        await past_grace(started)
        await late.update_upstream("a", {"weight": 3}, "bob")
        assert (await config_io.read(late.redis(), late.keys)).version == 3
    finally:
        await gw.stop()
        await late.stop()
        server.stop()


async def test_a_change_on_a_redis_restarted_empty_waits_for_the_gateways_cut_off(
    tmp_path: Path,
) -> None:
    """Redis restarted empty while a gateway was cut off, holding the fleet's two changes; a
    fresh gateway seeded its file as version 1. A change made on that seed at once was the
    newer change when the cut-off gateway came back, and the settle dropped the fleet's
    drain of a (said in the audit only). Refused until the gateways can have reconnected
    (redis.restart_grace_s, GRACE_S here), then made on top of the fleet's document."""
    server = start_redis(tmp_path)
    cut = gateway(server.url, "gw-cut")
    fresh = gateway(server.url, "gw-fresh", restart_grace_s=GRACE_S)
    try:
        await cut._sync_config()
        await operate(cut)
        server.stop()
        server.start()  # empty: the test's Redis saves nothing
        started = time.monotonic()
        await fresh._sync_config()  # its file's seed, version 1
        assert (await in_redis(fresh))[1] == 1
        await refused_while_young(
            fresh.update_upstream("b", {"weight": 2}, "carol"),
            ": gateways cut off by its restart may hold",
        )
        await reconnected(cut._sync_config)  # puts version 3 back above the seed
        assert (await in_redis(cut))[1] == 3
        await past_grace(started)
        entry = await fresh.update_upstream("b", {"weight": 2}, "carol")
        assert entry["version"] == "4"
        assert routing(fresh) == {**OPERATED, "b": (2.0, False)}  # a's drain kept
        entries = await config_io.read_audit(fresh.redis(), fresh.keys, 10)
        assert not [e for e in entries if e["what"].startswith("fleet config conflict: ")]
    finally:
        await cut.stop()
        await fresh.stop()
        server.stop()


async def test_a_change_is_refused_while_a_gateway_holds_a_version_above_redis(
    redis_url: str,
) -> None:
    """Redis restored to version 1 while a gateway routes on version 3 (its observation says
    so): a change made now, on the older copy, would be dropped or drop the newer one. Refused
    until the gateway has put its document back, then made on top of it."""
    ahead, behind = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        await ahead._sync_config()
        snapshot = await config_io.read(ahead.redis(), ahead.keys)
        await operate(ahead)
        await ahead._exchange_observations()  # "gw0 routes on version 3", fresh for 5 s
        await hold(ahead.redis(), ahead, snapshot)  # the restore
        await behind._sync_config()  # a gateway that knows no better: version 1
        with pytest.raises(
            SharedStateUnavailable,
            match=r"Redis lost data: gateways hold version 3 \(gw0\), Redis 1; wait for them",
        ):
            await behind.update_upstream("b", {"weight": 2}, "carol")
        assert (await in_redis(behind))[1] == 1  # nothing written
        await ahead._sync_config()  # its refresh puts version 3 back
        entry = await behind.update_upstream("b", {"weight": 2}, "carol")
        assert entry["version"] == "4" and routing(behind) == {**OPERATED, "b": (2.0, False)}
    finally:
        await ahead.stop()
        await behind.stop()


async def test_a_change_racing_another_operators_change_is_made_not_refused(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another operator's change commits, and a gateway adopts it and says so in its
    observation, while ctl makes its own: Redis lost nothing, so ctl's change is made on top
    of the other one, not refused as "Redis lost data"."""
    gw = gateway(redis_url, "gw0")
    real = observations.versions

    async def racing(r: Any, keys: Any) -> dict[str, int]:  # bob's change, as ctl reads
        monkeypatch.undo()
        await gw.update_upstream("a", {"weight": 3}, "bob")
        await gw._exchange_observations()  # "gw0 routes on version 2"
        return await real(r, keys)

    try:
        await gw._sync_config()
        await gw._exchange_observations()
        r = gw.redis()
        base = config_doc.base_config((await config_io.read(r, gw.keys)).doc or {})
        # as ctl --restart-grace 0 makes it: the test's Redis started moments ago
        base = base.model_copy(update={"redis": gw.config.redis})
        monkeypatch.setattr(observations, "versions", racing)
        stored, _, entry = await config_io.update_upstream(
            r, gw.keys, base, "b", {"weight": 2}, "alice"
        )
        assert (stored.version, entry["version"]) == (3, "3")
        doc, version = await in_redis(gw)
        assert version == 3 and doc is not None
        assert {u["id"]: u["weight"] for u in doc["upstreams"]} == {"a": 3, "b": 2}
    finally:
        await gw.stop()


async def test_a_change_is_not_written_where_the_audit_cannot_take_its_entry(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand edit left the audit key a string: EXEC ran the document's write and failed the
    XADD, and the operator was told "the change was not applied" of a change every gateway
    adopted, with no entry. Now nothing is written and the error says why; a put-back by a
    gateway is written all the same (routing first), and its lost entry is said in the log."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()  # version 1
        r = gw.redis()
        await r.set(gw.keys.audit, "garbage")
        with pytest.raises(AuditUnwritable, match="holds a string, not a stream: nothing was"):
            await gw.update_upstream("b", {"weight": 7}, "alice")
        doc, version = await in_redis(gw)
        assert version == 1 and doc is not None and doc["upstreams"][1]["weight"] == 1.0
        assert status_of(AuditUnwritable("x")) == 503
        with pytest.raises(AuditUnwritable, match="is not a stream: its entries are lost"):
            await gw.audit(5)  # Redis answered: "cannot reach Redis" in ctl was wrong
        # Redis lost the document meanwhile: the gateway puts its own back, unaudited.
        await r.delete(gw.keys.config)
        caplog.set_level(logging.WARNING, "geogate.fleet")
        await gw._sync_config()
        assert (await in_redis(gw))[1] == 1
        assert "holds a string, not a stream: the fleet config written now is not audited" in (
            caplog.text
        )
        await r.delete(gw.keys.audit)  # what the error says to do
        await gw.update_upstream("b", {"weight": 7}, "alice")
        assert (await in_redis(gw))[1] == 2 and [e["who"] for e in await gw.audit(5)] == ["alice"]
    finally:
        await gw.stop()


async def test_a_late_sync_does_not_hide_redis_going_back_to_what_it_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that read version 1 and finished after the gateway moved on to version 3: the
    late read is not applied; and were version 1 what the refresh compares Redis's hash with,
    a Redis restored to exactly it would read as nothing new, and version 3 never put back."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        old = await config_io.read(gw.redis(), gw.keys)  # version 1, answered after the changes
        await operate(gw)

        async def late(r: Any, keys: Any, mine: Stored, who: str = "") -> Settled:
            monkeypatch.undo()
            return Settled(old)

        monkeypatch.setattr(config_io, "settle", late)
        await gw._sync_config()
        assert (gw.version, routing(gw)) == (3, OPERATED)  # the late read is not applied
        assert (await in_redis(gw))[1] == 3
        await hold(gw.redis(), gw, old)  # the restore: version 1 as it was
        await gw._refresh()  # the next round
        assert (gw.version, routing(gw)) == (3, OPERATED)
        doc, version = await in_redis(gw)
        assert version == 3 and doc is not None
        assert {u["id"]: (u["weight"], u["drained"]) for u in doc["upstreams"]} == OPERATED
    finally:
        await gw.stop()


async def test_an_earlier_releases_change_at_a_lower_version_is_dropped_and_said(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restored to version 1 and a gateway or ctl of an earlier release changes it there
    (doc and version only, no change time): the gateway routing on version 3 puts its own
    back, the higher version, and says what it dropped: the other change's time is unknown,
    so it may be the newer one."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        snapshot = await config_io.read(gw.redis(), gw.keys)
        await operate(gw)
        await hold(gw.redis(), gw, snapshot)  # the restore
        assert snapshot.doc is not None
        earlier, _, _ = config_doc.change_upstream(snapshot.doc, "b", {"weight": 5})
        await gw.redis().hset(gw.keys.config, mapping={"doc": json.dumps(earlier), "version": 2})
        caplog.clear()
        await gw._sync_config()
        assert (gw.version, routing(gw)) == (3, OPERATED)
        assert (await in_redis(gw))[1] == 3
        [error] = conflicts(caplog)
        text = error.getMessage()
        assert error.levelno == logging.ERROR
        assert "Redis's version 2 (its change's time not recorded" in text
        assert "kept the newer change, this gateway's, as version 3" in text
        assert "dropped Redis's version 2: upstream a: drained false (kept: true); " in text
        assert "upstream b: weight 5 (kept: 3)" in text
    finally:
        await gw.stop()


async def test_a_conflict_with_a_document_no_gateway_applies_is_still_said(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis's document, at version 3 like ours, is one every gateway refuses (a residency
    rule's countries a number, drained_regions a list): settled all the same, and the ERROR
    names what was dropped, not a traceback after the write."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        doc, _ = await in_redis(gw)
        assert doc is not None
        bad = {
            **doc,
            "residency": [{"countries": 5, "regions": ["eu"]}],
            "drained_regions": [1, "a"],
        }
        await hold(gw.redis(), gw, Stored(bad, 3, 1.0))  # an older change than ours
        caplog.clear()
        await gw._sync_config()
        assert (gw.version, routing(gw)) == (4, OPERATED)
        assert len(_fleet_errors(caplog)) == 1  # the conflict's, and no failed sync's
        [error] = conflicts(caplog)
        text = error.getMessage()
        assert "kept the newer change, this gateway's, as version 4" in text
        assert "residency rule ->eu (not kept); regions drained: 1, a (kept: none)" in text
    finally:
        await gw.stop()


# --- errors that are not Redis's -------------------------------------------------------------


async def test_a_bug_in_the_sync_is_logged_and_retried_not_fatal(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway(redis_url, "gw0", refresh_interval_s=0.05)
    exchange = gw._exchange_observations
    failures = 0

    async def once() -> tuple[str | None, str | None]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise KeyError("gateway")  # as a malformed observation raised it before
        return await exchange()

    try:
        await gw.start()
        await until(lambda: gw.stale_since is None, "the first sync")
        monkeypatch.setattr(gw, "_exchange_observations", once)
        await until(lambda: failures == 1, "the failure")
        assert gw.stale_since is not None  # /readyz says degraded meanwhile
        await until(lambda: gw.stale_since is None, "the sync to go on")
        [error] = _fleet_errors(caplog)
        assert error.startswith("shared-state sync failed (KeyError: 'gateway'); routing on")
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert record.exc_info is not None  # a bug: its traceback is in the log
    finally:
        await gw.stop()


async def test_a_sync_task_that_ends_says_so_and_reads_stale(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """_run retries every error; should its task end anyway, /readyz must not say "fresh"."""
    gw = gateway(redis_url, "gw0")

    async def broken() -> None:
        raise RuntimeError("not expected")

    gw._run = broken  # type: ignore[method-assign]
    gw.stale_since = None  # as after a sync
    await gw.start()
    await until(lambda: gw.stale_since is not None, "the task's end to read stale")
    [error] = _fleet_errors(caplog)
    assert error.startswith("the shared-state sync stopped (RuntimeError: not expected)")
    await gw.stop()


async def test_a_document_no_gateway_can_read_is_refused_once_and_routed_around(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        await gw.redis().hset(gw.keys.config, mapping={"doc": "not json", "version": 7})
        for _ in range(2):
            await gw._refresh()
        [error] = _fleet_errors(caplog)
        assert error.startswith(
            "ignoring the fleet config in Redis: invalid fleet config in Redis (version 7): "
            "the document is not JSON"
        )
        assert (gw.version, routing(gw)) == (3, OPERATED)
    finally:
        await gw.stop()


def test_a_redis_url_redis_py_cannot_use_is_a_config_error_at_start() -> None:
    for url, message in [
        ("redis://127.0.0.1:1/0?db=x", "Invalid value for 'db' in connection URL"),
        ("redis://127.0.0.1:1?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis://127.0.0.1:1?ssl_cert_reqs=none", "?ssl_cert_reqs= is for rediss://"),
    ]:
        with pytest.raises(ConfigError) as info:
            gateway(url, "gw0")
        assert message in str(info.value) and "\n" not in str(info.value)


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


async def test_a_newer_document_this_gateway_refuses_does_not_pass_for_the_routed_one(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer document apply_doc refuses (drained_regions naming an upstream of another
    region) became the version, /admin/config's and the metric's, and the parent's kept
    document, which a replaced worker then started on: the operators' drains undone there."""
    saved: list[int] = []
    monkeypatch.setattr(last_known, "save", lambda stored, fleet: saved.append(stored.version))
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        doc, version = await in_redis(gw)
        assert doc is not None and version == 3 and saved[-1] == 3
        bad = {**doc, "drained_regions": {"eu": ["nope"]}}
        await hold(gw.redis(), gw, Stored(bad, 4, time.time() + 60))  # newer than ours
        caplog.clear()
        for _ in range(3):
            await gw._refresh()
        assert (gw.version, routing(gw), saved[-1]) == (3, OPERATED, 3)
        [error] = _fleet_errors(caplog)  # once, not at each refresh
        assert error.startswith("ignoring fleet config version 4: ")
        assert error.endswith("; routing on version 3")
        assert (gw.refused or "").startswith("version 4: ")  # /readyz's
        await hold(gw.redis(), gw, Stored(doc, 5, time.time() + 120))  # one it routes on
        await gw._refresh()
        assert (gw.version, gw.refused) == (5, None)
    finally:
        await gw.stop()


async def test_stop_is_bounded_when_the_sync_ignores_its_cancel(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel lost inside the sync (3.11's asyncio.wait_for lost one) must not keep the
    worker from exiting: stop() waits STOP_WAIT_S, then closes the connection anyway."""
    monkeypatch.setattr(redis_store, "STOP_WAIT_S", 0.2)
    gw = gateway(redis_url, "gw0")
    ignoring = asyncio.Event()
    deaf_to_cancels = True

    async def deaf() -> None:
        gw._first.set()  # start() waits for the first sync's outcome
        while deaf_to_cancels:
            with contextlib.suppress(asyncio.CancelledError):
                ignoring.set()
                await asyncio.sleep(3600)

    gw._run = deaf  # type: ignore[method-assign]
    await gw.start()
    await ignoring.wait()
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        await gw.stop()
    assert 0.2 <= time.monotonic() - t0 < 2
    assert gw._task is not None and not gw._task.done()  # still deaf: stop() went on
    deaf_to_cancels = False  # the test's own clean-up
    gw._task.cancel()
    await asyncio.wait({gw._task}, timeout=5)
    assert gw._task.done()
