"""Fleet health arithmetic and local views, without a Redis (the fleet tests use a real one)."""

from __future__ import annotations

from typing import Any

from gateway.config import Config
from gateway.fleet.redis_store import RedisStateStore

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


def test_a_tie_is_not_a_majority() -> None:
    s = RedisStateStore(CFG)
    s._merge([view("me", a=False), view("g2", a=True)])
    assert s.fleet_down == frozenset()
