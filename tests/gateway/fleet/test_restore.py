"""Putting a fleet document that gateways refuse right (gateway.fleet.restore), against a real
redis-server (the ``redis_url`` fixture, tests/gateway/fleet/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest

from gateway.errors import FleetConfigInvalid, NothingToRestore, SharedStateUnavailable
from gateway.fleet.settle import Stored
from tests.gateway.fleet.test_redis_store import (
    OPERATED,
    gateway,
    hold,
    in_redis,
    operate,
    routing,
)


async def test_a_refused_document_is_restored_from_the_one_a_gateway_routes_on(
    redis_url: str,
) -> None:
    """A document every gateway refuses (a weight of -5, a hand edit): each change builds on
    it and was refused with its error, so only another hand edit got the fleet out. restore
    puts back the one this gateway routes on, above both versions, audited; the other
    gateways adopt it. Where nothing is refused: NothingToRestore, nothing written."""
    gw, other = gateway(redis_url, "gw0"), gateway(redis_url, "gw1")
    try:
        await gw._sync_config()
        with pytest.raises(NothingToRestore):
            await gw.restore("alice")
        await operate(gw)
        await other._sync_config()
        doc, _ = await in_redis(gw)
        assert doc is not None
        bad = {**doc, "upstreams": [{**doc["upstreams"][0], "weight": -5}, doc["upstreams"][1]]}
        await hold(gw.redis(), gw, Stored(bad, 9, time.time()))
        await gw._refresh()
        assert (gw.refused or "").startswith("version 9: ")
        with pytest.raises(FleetConfigInvalid, match="this change does not mend it"):
            await gw.update_upstream("b", {"weight": 2}, "carol")  # builds on Redis's
        # A gateway that routes on it (a newer release's, in a rollout): not restored over it.
        r = gw.redis()
        on_it = {"gateway": "gw9", "region": "eu", "upstreams": {}, "config_version": 9}
        await r.set(gw.keys.obs("gw9/1"), json.dumps(on_it), px=60_000)
        await r.zadd(gw.keys.observers, {"gw9/1": (await r.time())[0]})
        with pytest.raises(NothingToRestore, match="gateway gw9 routes on the fleet's document"):
            await gw.restore("alice")
        await r.delete(gw.keys.obs("gw9/1"))
        entry = await gw.restore("alice")
        assert (entry["who"], entry["version"]) == ("alice", "10")
        assert entry["what"].startswith(
            "fleet config restored: version 3, which this gateway routed on, put back over a "
            "document it could not route on (version 9: "
        )
        assert (entry["before"], entry["after"]) == ('{"version": 9}', '{"version": 10}')
        assert (gw.version, gw.refused, routing(gw)) == (10, None, OPERATED)
        assert await in_redis(gw) == (doc, 10)
        await other._sync_config()
        assert (other.version, routing(other)) == (10, OPERATED)
        assert (await gw.audit(1))[0]["what"] == entry["what"]
    finally:
        await gw.stop()
        await other.stop()


async def test_no_restore_over_nothing_nor_from_a_gateway_behind(redis_url: str) -> None:
    """Redis holds no document: the gateways put theirs back, nothing to restore. A gateway
    that routes on an older version than another reports (it was cut off) would take the
    fleet back: refused, naming the one to restore through."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        r = gw.redis()
        doc, _ = await in_redis(gw)
        assert doc is not None
        await r.delete(gw.keys.config)
        with pytest.raises(NothingToRestore, match="Redis holds no fleet document"):
            await gw.restore("alice")
        bad = {**doc, "upstreams": [{**u, "weight": -5} for u in doc["upstreams"]]}
        await hold(r, gw, Stored(bad, 9, time.time()))
        ahead = {"gateway": "gw7", "region": "eu", "upstreams": {}, "config_version": 5}
        await r.set(gw.keys.obs("gw7/1"), json.dumps(ahead), px=60_000)
        await r.zadd(gw.keys.observers, {"gw7/1": (await r.time())[0]})
        with pytest.raises(SharedStateUnavailable, match=r"gateways hold version 5 \(gw7\)"):
            await gw.restore("alice")  # gw0 routes on version 3
        assert (await r.hget(gw.keys.config, "version")) in (b"9", "9")  # nothing written
    finally:
        await gw.stop()


async def test_a_hand_edit_that_kept_the_version_is_restored(redis_url: str) -> None:
    """A hand edit of the document alone that no gateway can read (not JSON): Redis's version
    is the one every gateway routes on (their observations say so), which does not make them
    route on Redis's document: restored, where it answered that gw0 routed on it."""
    gw = gateway(redis_url, "gw0")
    try:
        await gw._sync_config()
        await operate(gw)
        await gw._exchange_observations()  # "gw0 routes on version 3"
        r = gw.redis()
        doc, _ = await in_redis(gw)
        assert doc is not None
        # Version and digest as they were: no refresh sees it (they compare those two), and a
        # change made now fails on it ("the document is not JSON").
        await r.hset(gw.keys.config, "doc", "{not json")
        entry = await gw.restore("alice")
        assert (
            "(invalid fleet config in Redis (version 3): the document is not JSON" in entry["what"]
        )
        assert entry["version"] == "4" and (gw.version, gw.refused) == (4, None)
        assert await in_redis(gw) == (doc, 4)
    finally:
        await gw.stop()
