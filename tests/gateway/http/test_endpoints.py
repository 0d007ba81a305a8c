"""The public listener's own answers: the model list and a model's card follow the router's
decision for the client that asks, as a request from it would be routed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.config import Config
from gateway.http.asgi import REQUEST_ID_KEY, ASGIApp, Receive, Scope, Send
from gateway.http.endpoints import _LISTED_SINCE, Endpoints
from gateway.runtime import Runtime, build_runtime


class WithRequestId:
    """Stands for Proxy.recorded, which gives every request its id (an ASGI app, not a
    function, which Starlette would take for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[REQUEST_ID_KEY] = "rid"
        await self.app(scope, receive, send)


def client(**over: Any) -> httpx.AsyncClient:
    return client_of(runtime(**over))


def client_of(rt: Runtime) -> httpx.AsyncClient:
    app = Starlette(routes=Endpoints(rt).routes(WithRequestId))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def runtime(**over: Any) -> Runtime:
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [
                {"id": "eu", "latitude": 50, "longitude": 8},
                {"id": "us", "latitude": 38, "longitude": -78},
            ],
            "upstreams": [
                {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
                {"id": "b", "region": "us", "url": "http://127.0.0.1:2", "models": ["m", "n"]},
            ],
            # Every client of these tests is at the default: a German one
            "geoip": {"default": {"country": "DE", "latitude": 50, "longitude": 8}},
            **over,
        }
    )
    return build_runtime(cfg)


async def test_a_model_a_residency_rule_keeps_from_the_client_is_not_offered_to_it() -> None:
    """The card said 200 while the request got a 503: the card followed health alone."""
    rule = [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}]
    async with client(residency=rule) as c:
        listed = (await c.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["m"]  # n is served in us only
        # When the gateway loaded the module; it was 0, 1970 in a client's list.
        assert listed[0]["created"] == _LISTED_SINCE > 1_764_000_000  # 2025-11-24, not 0
        assert (await c.get("/v1/models/m")).status_code == 200
        # No upstream in eu serves n at all: refused for good, not a 503 an SDK retries
        r = await c.get("/v1/models/n")
        assert r.status_code == 403 and "retry-after" not in r.headers, r.text
        assert r.json()["error"]["code"] == "model_not_available_in_region"
        assert "residency rule eu-only keeps them in its regions" in r.json()["error"]["message"]
    async with client() as c:  # no rule: both
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["m", "n"]


async def test_a_model_card_with_no_name_is_an_unknown_url_not_a_model_nobody_serves() -> None:
    # "/v1/models/" said model '' is not served by any upstream (404 model_not_found).
    async with client() as c:
        r = await c.get("/v1/models/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", r.text
        assert r.json()["error"]["message"].startswith("/v1/models/ names no model: GET /v1/")
        assert r.headers["x-request-id"]


async def test_a_residency_regions_upstream_found_by_dns_and_resolving_to_none_is_a_503() -> None:
    # eu's upstream of m is a DNS pool with no addresses now (a redeploy): not in the
    # snapshot, so only us's upstream was left, kept away by the rule. That passes: a 503 to
    # retry, not the 403 that says no upstream there serves m
    rule = [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}]
    pool = {"id": "a", "region": "eu", "url": "http://pool.invalid:8000", "models": ["m"]}
    upstreams = [
        {**pool, "discovery": "dns"},
        {"id": "b", "region": "us", "url": "http://127.0.0.1:2", "models": ["m"]},
    ]
    async with client_of(runtime(residency=rule, upstreams=upstreams)) as c:
        r = await c.get("/v1/models/m")
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    assert "a resolves to no addresses (DNS discovery)" in r.json()["error"]["message"]


async def test_a_drain_within_the_residency_regions_is_a_503_to_retry() -> None:
    # eu's only upstream of m drained (an operator's while), us's kept away by the rule:
    # that passes, so a 503 with Retry-After, the rule named once
    rule = [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}]
    rt = runtime(residency=rule)
    await rt.store.update_upstream("a", {"drained": True}, "alice")
    async with client_of(rt) as c:
        r = await c.get("/v1/models/m")
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    message = r.json()["error"]["message"]
    assert "(drained). residency rule eu-only keeps clients from DE in its regions" in message
    assert message.count("eu-only") == 1


async def test_a_model_served_by_no_healthy_upstream_is_a_503_card_and_unlisted() -> None:
    """In a panic (none healthy) a request is still tried, fail open; nothing says it will be
    answered: the card is the 503 an SDK retries, not a 200 and not a 404."""
    rt = runtime()
    for uid in ("a", "b"):
        for _ in range(5):  # past any unhealthy threshold
            rt.store.record_probe(uid, False, None, "refused")
    async with client_of(rt) as c:
        assert (await c.get("/v1/models")).json()["data"] == []
        r = await c.get("/v1/models/m")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_upstream"
        assert "is served here, but by no healthy, undrained upstream now" in r.text
        r = await c.get("/v1/models/x")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_the_model_list_locates_its_client_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model was routed with the client located anew: its GeoIP lookup (and a signed
    edge header's check, counted) once per model of the list."""
    rt = runtime()
    calls = []
    real = rt.geo.locate

    def counted(ip: Any) -> Any:
        calls.append(ip)
        return real(ip)

    monkeypatch.setattr(rt.geo, "locate", counted)
    async with client_of(rt) as c:
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["m", "n"]
    assert len(calls) == 1
