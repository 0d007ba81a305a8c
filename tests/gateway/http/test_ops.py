"""The ops listener (issue 9, item 12): /metrics, /routing-table, /explain and /admin/* are off
the public port, on a loopback listener of their own, and behind ops.token when one is set
(the edge tier reads the routing table with it); /admin/* keeps its operators' tokens."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.config import Config
from gateway.config_file import parse_config
from gateway.errors import ConfigError
from gateway.h1 import for_ops
from gateway.http.ops import ENV_OPS_FD, OpsListener, ops_app, shared
from gateway.http.worker_metrics import ENV_METRICS_DIR, ENV_WORKER, WorkerMetrics, runtime_dir
from gateway.runtime import build_runtime
from tests.support import Gateway, one_sim_gateway, read_to_eof

OPS_TOKEN = "edge-tier-secret"
ADMIN_TOKEN = "operator-secret"
BASE = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    extra = f'[ops]\ntoken = "{OPS_TOKEN}"\n\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
    with one_sim_gateway(tmp_path, extra) as g:
        yield g


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
    # A token under 16 characters is said at start, by name, never by value: the admin one
    # here (15), not the ops one (16).
    [short] = [line for line in gw.log_text().splitlines() if "tokens shorter than" in line]
    assert "(admin operator 'admin')" in short and ADMIN_TOKEN not in short
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
    # The scheme in any case (RFC 9110): "bearer" was refused.
    lower = {"Authorization": f"bearer {OPS_TOKEN}"}
    assert httpx.get(f"{gw.ops_url}/routing-table", headers=lower).status_code == 200


def test_admin_on_the_ops_listener_keeps_its_own_tokens(gw: Gateway) -> None:
    # The ops token is the edge tier's read key: it changes nothing through the admin API.
    r = httpx.get(f"{gw.ops_url}/admin/config", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert r.status_code == 401
    r = httpx.get(f"{gw.ops_url}/admin/config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and "config" in r.json()


async def test_without_a_token_the_ops_app_is_open_to_who_reaches_it() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    transport = httpx.ASGITransport(app=ops_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/routing-table")).json()["self_region"] == "eu"
        r = await c.get("/v1/models")  # the API is the public listener's, and it says so
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        message = r.json()["error"]["message"]  # it said "the API is under /v1/", here
        assert "not an endpoint of the ops listener" in message, message
        assert "the model API (/v1/) is on the public listener" in message
        r = await c.post("/metrics")  # a wrong method: JSON as on the public port, with Allow
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:9180", True),
        ("127.0.0.1", True),
        ("[::1]:9180", True),
        ("LOCALHOST:9180", True),
        ("localhost.:9180", True),
        ("grafana.localhost:9180", True),
        ("192.0.2.7:9180", True),  # an address is never re-pointed, loopback or not
        ("ops.example.com", True),  # ops.public_url's host
        ("OPS.example.com:443", True),
        ("evil.example:9180", False),  # the rebinding page's own name
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("ops.example.com.evil.example", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_a_tokenless_loopback_ops_listener_answers_its_own_names_only(
    host: str, allowed: bool
) -> None:
    # DNS rebinding: a page re-points its own name at 127.0.0.1 and reads the listener as its
    # own origin; its requests carry that name in Host, which no operator's does.
    cfg = Config.model_validate({**BASE, "ops": {"public_url": "https://ops.example.com"}})
    client = TestClient(ops_app(build_runtime(cfg)), base_url="http://127.0.0.1")
    r = client.get("/routing-table", headers={"host": host})
    if allowed:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 421, r.text
    assert r.json()["error"]["code"] == "ops_host_not_allowed"
    assert (
        "use http://127.0.0.1:<ops.port>, or list the name in ops.hosts"
        in (r.json()["error"]["message"])
    )


def test_the_host_check_is_for_a_tokenless_listener_on_loopback_or_not() -> None:
    name = {"host": "prometheus-target.internal:9180"}
    # With ops.token set, the token is the guard: a scraper may use any name.
    cfg = Config.model_validate({**BASE, "ops": {"token": OPS_TOKEN}})
    client = TestClient(ops_app(build_runtime(cfg)), base_url="http://127.0.0.1")
    edge = {"authorization": f"Bearer {OPS_TOKEN}"}
    assert client.get("/metrics", headers={**name, **edge}).status_code == 200
    assert client.get("/metrics", headers=name).status_code == 401
    # Off loopback without a token too: deploy/docker's compose file binds 0.0.0.0 in the
    # container and publishes the port on the host's loopback, where the browser is. The
    # names it is scraped by are listed in ops.hosts (any case, a final dot or not).
    cfg = Config.model_validate({**BASE, "ops": {"host": "0.0.0.0"}})
    client = TestClient(ops_app(build_runtime(cfg)), base_url="http://127.0.0.1")
    assert client.get("/metrics", headers=name).status_code == 421
    assert client.get("/metrics", headers={"host": "10.1.2.3:9180"}).status_code == 200
    hosts = ["Prometheus-Target.internal.", "gateway_a"]
    cfg = Config.model_validate({**BASE, "ops": {"host": "0.0.0.0", "hosts": hosts}})
    client = TestClient(ops_app(build_runtime(cfg)), base_url="http://127.0.0.1")
    assert client.get("/metrics", headers=name).status_code == 200
    assert client.get("/metrics", headers={"host": "GATEWAY_A:9180"}).status_code == 200
    assert client.get("/metrics", headers={"host": "evil.example"}).status_code == 421
    # Without ops.public_url no name but localhost passes, an empty one neither.
    client = TestClient(ops_app(build_runtime(Config.model_validate(BASE))))
    assert client.get("/metrics", headers={"host": ""}).status_code == 421
    assert client.get("/metrics", headers={"host": "ops.example.com"}).status_code == 421
    assert client.get("/metrics", headers={"host": "localhost:9180"}).status_code == 200
    # A public_url written with a final dot names the same host (everyone got 421).
    cfg = Config.model_validate({**BASE, "ops": {"public_url": "https://ops.example.com./"}})
    client = TestClient(ops_app(build_runtime(cfg)), base_url="http://127.0.0.1")
    for host in ("ops.example.com", "ops.example.com."):
        assert client.get("/metrics", headers={"host": host}).status_code == 200, host


def test_ops_hosts_are_host_names() -> None:
    with pytest.raises(ConfigError, match=r"ops\.hosts\[0\]: 'gw:9180' is not a host name"):
        parse_config({**BASE, "ops": {"hosts": ["gw:9180"]}}, "gw.toml", env={})
    ops = parse_config({**BASE, "ops": {"hosts": ["GW-A."]}}, "gw.toml", env={}).ops
    assert ops.hosts == ("gw-a",)


def test_a_tokenless_ops_listener_refuses_a_rebound_name_on_its_socket(tmp_path: Path) -> None:
    with one_sim_gateway(tmp_path, "") as g:
        assert httpx.get(f"{g.ops_url}/routing-table").status_code == 200
        r = httpx.get(f"{g.ops_url}/routing-table", headers={"host": f"evil.example:{g.ops_port}"})
        assert r.status_code == 421 and r.json()["error"]["code"] == "ops_host_not_allowed"
        # The dashboard's page too, and a request with no Host (HTTP/1.0) is no browser's.
        r = httpx.get(f"{g.ops_url}/dashboard", headers={"host": "evil.example"})
        assert r.status_code == 421
        with socket.create_connection(("127.0.0.1", g.ops_port), timeout=5) as s:
            s.sendall(b"GET /routing-table HTTP/1.0\r\n\r\n")
            assert read_to_eof(s).startswith(b"HTTP/1.1 200 ")


def test_ops_listener_defaults_to_loopback_and_needs_a_port_of_its_own() -> None:
    ops = Config.model_validate(BASE).ops
    assert (ops.host, ops.port, ops.token) == ("127.0.0.1", 9180, "")
    with pytest.raises(ConfigError, match=r"ops\.port 8080 is server\.port too"):
        parse_config({**BASE, "ops": {"port": 8080}}, "gw.toml", env={})
    with pytest.raises(ConfigError) as err:  # the token is never echoed back
        parse_config({**BASE, "ops": {"token": 12345}}, "gw.toml", env={})
    assert "12345" not in str(err.value)


def test_shared_hands_the_workers_the_socket_and_with_several_a_metrics_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_OPS_FD, "")  # restored afterwards: shared() names the socket here
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with shared(sock, 2):
            assert os.environ[ENV_OPS_FD] == str(sock.fileno())
            socket.create_connection(sock.getsockname(), timeout=1).close()  # listening
            directory = Path(os.environ[ENV_METRICS_DIR])
            assert directory.is_dir()
        assert not directory.exists() and ENV_METRICS_DIR not in os.environ
    with shared(None, 2):  # ops.port = 0: no /metrics to merge
        assert ENV_METRICS_DIR not in os.environ


async def test_with_several_workers_the_ops_metrics_is_the_merged_one() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    # One worker: no socket, /metrics as it was.
    assert OpsListener(rt, 0, for_ops()).workers is None
    with runtime_dir(2) as directory:
        assert directory is not None
        workers = OpsListener(rt, 0, for_ops()).workers
        assert isinstance(workers, WorkerMetrics) and workers.worker == "0"  # claimed: granian's
        await workers.stop()  # its claim given back
        for app, merged in (
            (ops_app(rt, WorkerMetrics(rt, directory, "0")), True),
            (ops_app(rt), False),
        ):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                text = (await c.get("/metrics")).text
            assert "geogate_requests_in_flight" in text
            assert ('geogate_requests_in_flight{worker="0"}' in text) is merged
            assert ("geogate_workers_scraped 1.0" in text) is merged


def test_with_several_workers_the_views_name_the_worker_that_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /routing-table, /explain and the dashboard answer from one worker (its ejections, its
    # traffic): they say which, as the worker's /metrics label does.
    rt = build_runtime(Config.model_validate(BASE))
    client = TestClient(ops_app(rt), base_url="http://127.0.0.1")
    assert client.get("/routing-table").json()["worker"] is None  # one worker: none named
    monkeypatch.setenv(ENV_METRICS_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_WORKER, "1")
    OpsListener(rt, fd=-1, protocol=for_ops())  # as a worker's lifespan makes it
    assert rt.worker == "1"
    assert client.get("/routing-table").json()["worker"] == "1"
    assert client.get("/explain", params={"model": "m", "ip": "192.0.2.1"}).json()["worker"] == "1"


def test_the_ops_listener_speaks_no_http2(gw: Gateway) -> None:
    # hypercorn served HTTP/2 with prior knowledge here: streams opened and reset in a loop
    # cost seconds of CPU a second and slowed the public API on the same event loop. The ops
    # listener is gateway.h1 now: the preface is a malformed HTTP/1.1 request, refused.
    with socket.create_connection(("127.0.0.1", gw.ops_port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = read_to_eof(s)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    with httpx.Client(http1=False, http2=True) as c, pytest.raises(httpx.TransportError):
        c.get(f"http://127.0.0.1:{gw.ops_port}/healthz")
    # HTTP/1.1 as ever, and the public API unaffected.
    assert (
        httpx.get(
            f"http://127.0.0.1:{gw.ops_port}/metrics",
            headers={"Authorization": f"Bearer {OPS_TOKEN}"},
        ).status_code
        == 200
    )
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_metrics_count_the_pools_idle_connections(gw: Gateway) -> None:
    # A soak review could count upstream connections only by hooking the process: a leak was
    # invisible to Prometheus.
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(5):
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
    text = httpx.get(
        f"http://127.0.0.1:{gw.ops_port}/metrics", headers={"Authorization": f"Bearer {OPS_TOKEN}"}
    ).text
    found = re.search(r"^geogate_upstream_pool_idle_connections (\S+)$", text, re.M)
    assert found is not None, text[-2000:]
    # Kept alive and reused: at least the requests' own, at most one per user of the pool
    # that can overlap (the requests, the probes, the load polls), not one per request.
    assert 1 <= float(found.group(1)) <= 3, found.group(0)


def test_the_ops_listeners_answers_carry_a_date(gw: Gateway) -> None:
    # hypercorn sent one; gateway.h1's comes from uvicorn's main loop, the public listener's.
    r = httpx.get(f"http://127.0.0.1:{gw.ops_port}/nothing")
    assert r.status_code == 401 and r.headers["date"].endswith(" GMT"), r.headers
