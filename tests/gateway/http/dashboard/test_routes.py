"""/dashboard on the ops listener, in process: the page and its assets, the login, and the
admin API, explain and impact behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.config import Config
from gateway.http.dashboard import routes
from gateway.http.dashboard.routes import Dashboard
from gateway.http.ops import ops_app
from gateway.runtime import Runtime, build_runtime

TOKEN = "alice-secret-token"
OPS = "http://127.0.0.1:9180"
CONFIG: dict[str, Any] = {
    "gateway": {"region": "eu", "origin": "client"},
    "regions": [
        {"id": "eu", "latitude": 50.1, "longitude": 8.7},
        {"id": "us", "latitude": 39.0, "longitude": -77.5},
    ],
    "upstreams": [
        {"id": "eu-1", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
        {"id": "us-1", "region": "us", "url": "http://127.0.0.1:2", "models": ["m"]},
    ],
    "admin": {"tokens": {"alice": TOKEN}},
}


@pytest.fixture
def rt() -> Runtime:
    return build_runtime(Config.model_validate(CONFIG))


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    dash = Dashboard(rt)
    dash.sampler.sample()  # what the lifespan's sampler would have by now
    app = Starlette(routes=dash.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS) as c:
        yield c


async def login(c: httpx.AsyncClient) -> str:
    r = await c.post("/dashboard/login", json={"token": TOKEN})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf"])


async def test_the_page_and_its_assets_come_from_the_package(client: httpx.AsyncClient) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 200 and "<title>geogate dashboard</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for path, kind in [
        ("app.js", "javascript"),
        ("vendor/uPlot.iife.min.js", "javascript"),
        ("vendor/countries-110m.json", "json"),
        ("vendor/uPlot.min.css", "css"),
    ]:
        r = await client.get(f"/dashboard/static/{path}")
        assert r.status_code == 200 and kind in r.headers["content-type"], path


async def test_login_sets_an_httponly_strict_cookie_scoped_to_the_dashboard(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/dashboard/login", json={"token": "wrong"})
    assert r.status_code == 401 and "admin token" in r.json()["error"]["message"]
    # JSON's "\ud800" is a lone surrogate, which str.encode() refused: a 500 and a traceback
    # for anyone who could reach the ops listener, with no token at all
    r = await client.post("/dashboard/login", content=b'{"token": "\\ud800"}')
    assert r.status_code == 401 and "admin token" in r.json()["error"]["message"]
    r = await client.post("/dashboard/login", json={"token": TOKEN})
    assert r.json()["operator"] == "alice"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("geogate-dashboard-9180=alice.")
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower(), attribute
    assert TOKEN not in cookie
    me = (await client.get("/dashboard/api/session")).json()
    assert me == {"operator": "alice", "csrf": r.json()["csrf"]}
    await client.post("/dashboard/logout")
    assert (await client.get("/dashboard/api/session")).json() == {"operator": None, "csrf": None}


async def test_changes_go_through_the_admin_api_under_the_operators_name(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    csrf = await login(client)
    r = await client.patch("/dashboard/api/admin/upstreams/eu-1", json={"drained": True})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_check_failed"
    assert not rt.store.snapshot(0).upstreams[0].drained
    headers = {"X-Geogate-CSRF": csrf, "Origin": OPS}
    r = await client.patch(
        "/dashboard/api/admin/upstreams/eu-1", json={"drained": True}, headers=headers
    )
    assert r.status_code == 200 and r.json()["audit"]["who"] == "alice"
    assert rt.store.snapshot(0).upstreams[0].drained
    r = await client.patch(
        "/dashboard/api/admin/upstreams/eu-1", json={"weight": -1}, headers=headers
    )
    assert r.status_code == 400 and "weight must be between" in r.json()["error"]["message"]
    audit = (await client.get("/dashboard/api/admin/audit")).json()["entries"]
    assert [(e["who"], e["what"]) for e in audit] == [("alice", "upstream eu-1")]


async def test_nothing_but_the_page_without_a_login(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/api/state", "/dashboard/api/explain?country=DE", "/dashboard/events"):
        r = await client.get(path)
        assert r.status_code == 401, path
    r = await client.get("/dashboard/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert [x["id"] for x in r.json()["regions"]] == ["eu", "us"]  # scripts: the admin token


async def test_explain_a_country_or_an_ip(client: httpx.AsyncClient) -> None:
    await login(client)
    r = await client.get("/dashboard/api/explain", params={"country": "us", "model": "m"})
    body = r.json()
    assert body["location"]["country"] == "US" and body["location"]["continent"] == "NA"
    assert body["decision"]["candidates"][0]["upstream"] == "us-1"
    r = await client.get("/dashboard/api/explain", params={"ip": "127.0.0.1", "model": "m"})
    assert r.json()["decision"]["candidates"][0]["region"] == "eu"  # the default location
    r = await client.get("/dashboard/api/explain", params={"country": "XX", "model": "m"})
    assert r.status_code == 400 and "unknown country 'XX'" in r.json()["error"]["message"]
    r = await client.get("/dashboard/api/explain", params={"ip": "nope", "model": "m"})
    assert r.status_code == 400 and "not an IP address" in r.json()["error"]["message"]


async def test_impact_names_the_traffic_and_refuses_a_bad_change(
    client: httpx.AsyncClient,
) -> None:
    await login(client)
    r = await client.get("/dashboard/api/impact", params={"upstream": "eu-1", "drained": "true"})
    assert r.json()["text"].startswith("eu-1 carries 0 % of requests in the last minute")
    r = await client.get("/dashboard/api/impact", params={"region": "eu", "drained": "true"})
    assert r.json()["targets"] == ["eu-1"]
    cases: list[tuple[dict[str, str | list[str]], str]] = [
        ({"upstream": "nope", "drained": "true"}, "no upstream 'nope'"),
        ({"upstream": "eu-1", "weight": "x"}, "weight must be a number"),
        # float() took these, which the admin API refuses: a preview of no possible change
        ({"upstream": "eu-1", "weight": "\uff15"}, "weight must be a number"),
        ({"upstream": "eu-1", "weight": "1_0"}, "weight must be a number"),
        ({"upstream": "eu-1", "bias_ms": " 2"}, "bias_ms must be a number"),
        ({"upstream": "eu-1", "weight": "nan"}, "weight must be a number"),
        ({"upstream": "eu-1", "weight": "1."}, "weight must be a number"),
        ({"upstream": "eu-1", "bias_ms": "-"}, "bias_ms must be a number"),
        ({"upstream": "eu-1", "weight": ".5e"}, "weight must be a number"),
        ({"upstream": "eu-1", "drained": "yes"}, "drained must be true or false"),
        ({"upstream": "eu-1", "weight": "1e9"}, "weight must be between"),
        # previewed the last, and the region's change alone: one reading of each
        ({"upstream": "eu-1", "weight": ["2", "3"]}, "weight given more than once: preview one"),
        ({"region": "eu", "upstream": "eu-1", "drained": "true"}, "upstream and region: preview"),
    ]
    for params, message in cases:
        r = await client.get("/dashboard/api/impact", params=params)
        assert r.status_code == 400 and message in r.json()["error"]["message"], params


async def test_impact_of_an_undrain_keeps_what_another_drain_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = {**CONFIG, "upstreams": [*CONFIG["upstreams"], {**CONFIG["upstreams"][0], "id": "eu-2"}]}
    rt = build_runtime(Config.model_validate(cfg))
    await rt.store.update_upstream("eu-1", {"drained": True}, "alice")  # maintenance
    await rt.store.update_region("eu", {"drained": True}, "bob")
    asked: list[dict[str, Any]] = []

    def what_if(*args: Any) -> dict[str, Any]:
        asked.append(args[4])  # the snapshot changes the impact is computed on
        return {}

    monkeypatch.setattr(routes, "what_if", what_if)
    app = Starlette(routes=Dashboard(rt).routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS) as c:
        await login(c)
        for params in (
            {"region": "eu", "drained": "false"},
            {"upstream": "eu-2", "drained": "false"},
        ):
            r = await c.get("/dashboard/api/impact", params=params)
            assert r.status_code == 200, r.text
    # Undraining the region brings eu-2 back, not eu-1 (drained on its own); undraining eu-2
    # while its region is drained moves nothing.
    assert asked == [
        {"eu-1": {"drained": True}, "eu-2": {"drained": False}},
        {"eu-2": {"drained": True}},
    ]


async def test_the_ops_token_does_not_stand_in_front_of_the_dashboard() -> None:
    rt = build_runtime(Config.model_validate({**CONFIG, "ops": {"token": "edge"}}))
    app = ops_app(rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS) as c:
        assert (await c.get("/routing-table")).status_code == 401
        assert (await c.get("/dashboard")).status_code == 200
        assert (await c.post("/dashboard/login", json={"token": TOKEN})).status_code == 200
        assert (await c.get("/dashboard/api/session")).json()["operator"] == "alice"


async def test_the_page_is_not_served_from_the_assets_without_its_headers(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/dashboard/static/index.html")).status_code == 404


async def test_a_malformed_origin_or_expiry_is_refused_not_an_error(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/dashboard/login", json={"token": TOKEN}, headers={"Origin": "http://["})
    assert r.status_code == 400 and "dashboard page itself" in r.json()["error"]["message"]
    client.cookies.set("geogate-dashboard-9180", "alice." + "9" * 4301 + ".n.x")
    assert (await client.get("/dashboard/api/session")).json()["operator"] is None
    assert (await client.get("/dashboard/api/state")).status_code == 401


async def test_a_logout_ends_the_session_for_a_copy_of_its_cookie_too(
    client: httpx.AsyncClient,
) -> None:
    await login(client)
    copied = dict(client.cookies)  # what a stolen or second copy of the cookie would send
    r = await client.post("/dashboard/logout")
    assert r.status_code == 200 and "max-age=0" in r.headers["set-cookie"].lower()
    # The browser's copy is gone; a copy kept elsewhere is refused from now on.
    transport = client._transport
    async with httpx.AsyncClient(transport=transport, base_url=OPS, cookies=copied) as thief:
        assert (await thief.get("/dashboard/api/session")).json()["operator"] is None
        r = await thief.get("/dashboard/api/state")
        assert r.status_code == 401, r.text
        r = await thief.get("/dashboard/api/admin/config")
        assert r.status_code == 401, r.text
    # A new login is a new session: it works.
    await login(client)
    assert (await client.get("/dashboard/api/state")).status_code == 200


async def test_a_logout_with_redis_away_says_so_and_keeps_the_cookie_for_a_retry() -> None:
    cfg = {**CONFIG, "redis": {"url": "redis://127.0.0.1:1"}}  # nothing listens there
    rt = build_runtime(Config.model_validate(cfg))
    app = Starlette(routes=Dashboard(rt).routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS) as c:
        await login(c)
        r = await c.post("/dashboard/logout")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "shared_state_unavailable"
        assert "logged out on this worker only" in err["message"]
        assert "set-cookie" not in r.headers  # kept: the logout can be sent again
        # Ended here already; sent again (Redis still away), it still tries to end it there.
        assert (await c.get("/dashboard/api/state")).status_code == 401
        r = await c.post("/dashboard/logout")
        assert r.status_code == 503 and "set-cookie" not in r.headers, r.text


async def test_a_logout_with_the_admin_api_off_just_clears_the_cookie() -> None:
    # A browser still holding a cookie after the operators' tokens were removed: a 200, where
    # the session check raised (admin_disabled) as a 500.
    rt = build_runtime(Config.model_validate({**CONFIG, "admin": {}}))
    app = Starlette(routes=Dashboard(rt).routes())
    transport = httpx.ASGITransport(app=app)
    cookie = {"geogate-dashboard-9180": "x.1.2.3"}
    async with httpx.AsyncClient(transport=transport, base_url=OPS, cookies=cookie) as c:
        r = await c.post("/dashboard/logout")
        assert r.status_code == 200 and r.json() == {"operator": None}


async def test_a_live_stream_ends_when_its_session_is_logged_out(rt: Runtime) -> None:
    from gateway.http.dashboard.sampler import Sampler

    sampler = Sampler(rt)
    sampler.sample()
    ended = False
    frames = sampler.frames(until=None, ended=lambda: ended)
    assert b"event: hello" in await anext(frames)
    sampler.sample()
    await anext(frames)  # a frame while the session lives
    ended = True  # logged out
    sampler.sample()
    with pytest.raises(StopAsyncIteration):
        await anext(frames)


async def test_logout_from_another_site_is_refused(client: httpx.AsyncClient) -> None:
    await login(client)
    r = await client.post("/dashboard/logout", headers={"Origin": "https://evil.example"})
    assert r.status_code == 400
    assert (await client.get("/dashboard/api/session")).json()["operator"] == "alice"


async def test_the_live_stream_ends_with_its_session(rt: Runtime) -> None:
    from gateway.http.dashboard.sampler import Sampler

    sampler = Sampler(rt)
    sampler.sample()
    frames = [f async for f in sampler.frames(until=0.0)]  # a session already over
    assert len(frames) == 1 and b"event: hello" in frames[0]  # the hello, then the end


async def test_behind_a_tls_proxy_the_public_url_is_the_origin_and_the_cookie_is_secure() -> None:
    # A proxy terminates TLS at https://ops.example.com and rewrites Host to the listener's.
    rt = build_runtime(
        Config.model_validate({**CONFIG, "ops": {"public_url": "https://ops.example.com"}})
    )
    app = Starlette(routes=Dashboard(rt).routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS) as c:
        body = {"token": TOKEN}
        r = await c.post("/dashboard/login", json=body, headers={"Origin": OPS})
        assert r.status_code == 400  # the listener's own origin is not the page's here
        r = await c.post(
            "/dashboard/login", json=body, headers={"Origin": "https://ops.example.com"}
        )
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert "secure" in cookie.lower()
        # httpx keeps a Secure cookie from this plain-http client: send it as the browser
        # (on https) does
        headers = {
            "X-Geogate-CSRF": r.json()["csrf"],
            "Origin": "https://ops.example.com",
            "Cookie": cookie.split(";", 1)[0],
        }
        r = await c.patch(
            "/dashboard/api/admin/upstreams/eu-1", json={"drained": True}, headers=headers
        )
        assert r.status_code == 200, r.text
