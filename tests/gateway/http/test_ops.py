"""The ops listener (issue 9, item 12): /metrics, /routing-table, /explain and /admin/* are off
the public port, on a loopback listener of their own, and behind ops.token when one is set
(the edge tier reads the routing table with it); /admin/* keeps its operators' tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import Config
from gateway.config_file import parse_config
from gateway.errors import ConfigError
from gateway.http.ops import ops_app
from gateway.runtime import build_runtime
from tests.support import Gateway, Sim, UpstreamSpec, gateway_toml, start_gateway, start_sim

OPS_TOKEN = "edge-tier-secret"
ADMIN_TOKEN = "operator-secret"
BASE = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    sim: Sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    extra = f'[ops]\ntoken = "{OPS_TOKEN}"\n\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
    try:
        g = start_gateway(tmp_path, lambda p: gateway_toml(p, ups, extra=extra))
        try:
            yield g
        finally:
            g.stop()
    finally:
        sim.proc.kill()


@pytest.mark.parametrize("path", ["/metrics", "/routing-table", "/explain", "/admin/config"])
def test_the_public_port_serves_no_ops_endpoint(gw: Gateway, path: str) -> None:
    r = httpx.get(f"{gw.url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"


def test_the_ops_listener_wants_the_ops_token(gw: Gateway) -> None:
    # The start-up line names what it serves, the dashboard too, and that a token guards it.
    assert "(/metrics /routing-table /explain /admin/* /dashboard), token required" in (
        gw.log_text()
    )
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": OPS_TOKEN}):
        r = httpx.get(f"{gw.ops_url}/routing-table", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_ops_token"
        assert r.headers["www-authenticate"].startswith("Bearer")
    edge = {"Authorization": f"Bearer {OPS_TOKEN}"}
    table = httpx.get(f"{gw.ops_url}/routing-table", headers=edge).json()
    assert [u["id"] for r in table["regions"] for u in r["upstreams"]] == ["s"]
    assert "geogate_requests_in_flight" in httpx.get(f"{gw.ops_url}/metrics", headers=edge).text
    r = httpx.get(f"{gw.ops_url}/explain", params={"model": "m", "ip": "127.0.0.1"}, headers=edge)
    assert r.status_code == 200 and r.json()["model"] == "m"


def test_admin_on_the_ops_listener_keeps_its_own_tokens(gw: Gateway) -> None:
    # The ops token is the edge tier's read key: it changes nothing through the admin API.
    r = httpx.get(f"{gw.ops_url}/admin/config", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert r.status_code == 401
    r = httpx.get(f"{gw.ops_url}/admin/config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and "config" in r.json()


async def test_without_a_token_the_ops_app_is_open_to_who_reaches_it() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    transport = httpx.ASGITransport(app=ops_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/routing-table")).json()["self_region"] == "eu"
        r = await c.get("/v1/models")  # the API is the public listener's
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        r = await c.post("/metrics")  # a wrong method: JSON as on the public port, with Allow
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]


def test_ops_listener_defaults_to_loopback_and_needs_a_port_of_its_own() -> None:
    ops = Config.model_validate(BASE).ops
    assert (ops.host, ops.port, ops.token) == ("127.0.0.1", 9180, "")
    with pytest.raises(ConfigError, match=r"ops\.port 8080 is server\.port too"):
        parse_config({**BASE, "ops": {"port": 8080}}, "gw.toml", env={})
    with pytest.raises(ConfigError) as err:  # the token is never echoed back
        parse_config({**BASE, "ops": {"token": 12345}}, "gw.toml", env={})
    assert "12345" not in str(err.value)
