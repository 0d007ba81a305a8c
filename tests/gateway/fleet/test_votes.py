"""Who votes on the fleet's health: one vote per gateway however many workers it has, and none
from a gateway that keeps its health to itself (``redis.share_health = false``); against a real
redis-server where the keys matter."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.fleet import keys
from gateway.fleet.keys import ENV_GATEWAY_PID
from gateway.fleet.redis_store import RedisStateStore
from tests.gateway.fleet.test_redis_store import CFG, gateway, healthy, view


def test_the_workers_of_one_gateway_are_one_vote() -> None:
    """Three workers of one gateway that see "a" down, against two gateways that see it up:
    one vote against two, not three against two. A gateway's workers probe from one host, so
    it votes up when any of them reached the upstream."""
    s = RedisStateStore(CFG)
    workers = [view("gw-big", a=False, b=False) for _ in range(3)]
    s._merge([*workers, view("gw1", a=True, b=False), view("gw2", a=True, b=False)])
    assert healthy(s) == {"a": True, "b": False}
    assert s.observations["a"] == {"gw-big": False, "gw1": True, "gw2": True}
    s._merge([view("gw-big", a=False), view("gw-big", a=True), view("gw1", a=False)])
    assert s.observations["a"] == {"gw-big": True, "gw1": False}  # one worker got through


def test_a_forked_worker_names_its_gateway_by_the_gateway_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_GATEWAY_PID, raising=False)
    assert keys.default_gateway_id() == f"{socket.gethostname()}-{os.getpid()}"
    monkeypatch.setenv(ENV_GATEWAY_PID, "4242")  # set by `geogate gateway` before it forks
    assert keys.default_gateway_id() == f"{socket.gethostname()}-4242"
    s = RedisStateStore(CFG)
    # The vote is the gateway's; the key each worker writes its view under is its own.
    assert (s.gateway_id, s.observer) == ("me", f"me/{os.getpid()}")


async def test_workers_write_their_views_under_keys_of_their_own(redis_url: str) -> None:
    one, two = gateway(redis_url, "gw"), gateway(redis_url, "gw")
    two.observer = "gw/other-worker"  # a second worker of the same gateway (another pid)
    try:
        for _ in range(5):  # this worker's probes fail, the other's reach "a"
            one.record_probe("a", False, None, "connection refused")
        for s in (one, two):
            await s._exchange_observations()
        observers = await one.redis().zrange(one.keys.observers, 0, -1)
        assert sorted(observers) == sorted([one.observer, two.observer])
        # two read both views: one observer, "gw", up because a worker of it reached "a"
        assert two.observations["a"] == {"gw": True}
    finally:
        for s in (one, two):
            await s.stop()


async def test_a_gateway_that_keeps_its_health_neither_gives_nor_takes_votes(
    redis_url: str,
) -> None:
    """Per-host gateways whose one upstream, "a", is each host's own model server: another
    host's failure says nothing about this one's. The routing config is still shared."""
    local = gateway(redis_url, "host-1", share_health=False)
    others = [gateway(redis_url, f"host-{i}") for i in (2, 3)]
    try:
        for o in others:
            for _ in range(5):  # past any unhealthy threshold
                o.record_probe("a", False, None, "connection refused")
            await o._exchange_observations()
        await others[0]._exchange_observations()
        assert others[0].fleet_down == {"a"}  # two of two sharing gateways: down for them
        await local._sync_config()
        version, digest = await local._exchange_observations()
        assert version == "1" and digest  # the version and digest, still read
        assert healthy(local) == {"a": True, "b": True}  # their verdict is not taken
        observers = await local.redis().zrange(local.keys.observers, 0, -1)
        assert sorted(observers) == sorted(o.observer for o in others)  # nor one given
        await others[0].update_upstream("b", {"drained": True}, "alice")
        assert (await local._exchange_observations())[0] == "2"  # a change it then adopts
        await local._sync_config()
        assert {u.id: u.drained for u in local.config.upstreams} == {"a": False, "b": True}
    finally:
        for s in (local, *others):
            await s.stop()


def test_the_gateway_pid_handed_to_workers_is_no_config_override(tmp_path: Path) -> None:
    """Workers load the config with the environment's overrides (GEOGATE_SECTION__KEY): the
    pid `geogate gateway` hands them must not read as one (granian's workers failed so)."""
    from gateway.config_file import ENV_PREFIX, load_config

    assert not ENV_GATEWAY_PID.startswith(ENV_PREFIX)
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nregion = "eu"\n[[regions]]\nid = "eu"\nlatitude = 50\nlongitude = 8\n'
        '[[upstreams]]\nid = "a"\nregion = "eu"\nurl = "http://127.0.0.1:1"\nmodels = ["m"]\n'
    )
    assert load_config(path, env={ENV_GATEWAY_PID: "4242"}).gateway.region == "eu"
