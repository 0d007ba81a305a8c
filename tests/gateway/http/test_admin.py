"""The admin API in-process (httpx over ASGI, the in-memory store): who an operator is, what a
change may hold, how big its body may be; a change refused while Redis lost data, over a real
redis-server. Fleet-wide behaviour is tests/gateway/fleet/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway import defaults as d
from gateway.config import Config
from gateway.defaults import ADMIN_MAX_BODY_BYTES
from gateway.fleet import config_io
from gateway.fleet.redis_store import RedisStateStore
from gateway.http.admin import admin_routes, operator_of
from gateway.runtime import build_runtime
from tests.support import start_redis

ALICE, BOB, LEGACY = "alice-token-0123456789", "bob-token-9876543210", "old-shared-token"


def config(**admin: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
            "upstreams": [
                {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}
            ],
            "admin": admin,
        }
    )


def client(cfg: Config) -> httpx.AsyncClient:
    app = Starlette(routes=admin_routes(build_runtime(cfg)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_the_audits_who_is_the_operator_whose_token_was_sent() -> None:
    async with client(config(tokens={"alice": ALICE, "bob": BOB})) as c:
        # A declared name is not an identity: X-Geogate-Operator changes nothing.
        r = await c.patch(
            "/admin/upstreams/a",
            json={"weight": 2},
            headers=bearer(ALICE, **{"X-Geogate-Operator": "mallory"}),
        )
        assert r.status_code == 200, r.text
        r = await c.patch("/admin/upstreams/a", json={"drained": True}, headers=bearer(BOB))
        assert r.status_code == 200, r.text
        entries = (await c.get("/admin/audit", headers=bearer(BOB))).json()["entries"]
        assert [(e["who"], json.loads(e["after"])) for e in entries] == [
            ("bob", {"drained": True}),
            ("alice", {"weight": 2}),
        ]
        for wrong in ("", "Bearer ", f"Bearer {ALICE}x", f"Bearer {ALICE[:-1]}", ALICE):
            r = await c.get("/admin/config", headers={"Authorization": wrong})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"


async def test_the_single_token_of_old_is_the_operator_admin() -> None:
    async with client(config(token=LEGACY, tokens={"alice": ALICE})) as c:
        h = bearer(LEGACY, **{"X-Geogate-Operator": "alice"})
        assert (await c.patch("/admin/upstreams/a", json={"weight": 3}, headers=h)).is_success
        entries = (await c.get("/admin/audit", headers=bearer(ALICE))).json()["entries"]
        assert [e["who"] for e in entries] == ["admin"]


async def test_a_region_drain_is_one_audited_change_of_its_upstreams() -> None:
    async with client(config(tokens={"alice": ALICE})) as c:
        r = await c.patch("/admin/regions/eu", json={"drained": True}, headers=bearer(ALICE))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["audit"]["what"] == "region eu"
        shown = (await c.get("/admin/config", headers=bearer(ALICE))).json()
        # Written as the release before drained_regions wrote a region drain (every upstream
        # drained, regions[] as it was), with the region's entry beside: none drained on its own.
        assert "drained" not in shown["config"]["regions"][0]
        assert shown["config"]["upstreams"][0]["drained"] is True
        assert shown["config"]["drained_regions"] == {"eu": []}
        [entry] = (await c.get("/admin/audit", headers=bearer(ALICE))).json()["entries"]
        assert entry["who"] == "alice" and json.loads(entry["after"]) == {"a": {"drained": True}}
        r = await c.patch("/admin/regions/nope", json={"drained": True}, headers=bearer(ALICE))
        assert r.status_code == 400 and "no region 'nope'" in r.json()["error"]["message"]
        r = await c.patch("/admin/regions/eu", json={"drained": True})
        assert r.status_code == 401


async def test_undraining_a_region_leaves_an_upstream_drained_on_its_own_drained() -> None:
    cfg = config(tokens={"alice": ALICE}).model_dump(mode="json")
    cfg["upstreams"].append({**cfg["upstreams"][0], "id": "b", "url": "http://127.0.0.1:2"})
    rt = build_runtime(Config.model_validate(cfg))
    app = Starlette(routes=admin_routes(rt))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:

        async def patch(path: str, drained: bool) -> dict[str, Any]:
            r = await c.patch(path, json={"drained": drained}, headers=bearer(ALICE))
            assert r.status_code == 200, r.text
            audit: dict[str, Any] = r.json()["audit"]
            return audit

        def drained() -> dict[str, bool]:
            return {u.id: u.drained for u in rt.store.snapshot(0).upstreams}

        await patch("/admin/upstreams/a", True)  # maintenance on a alone
        await patch("/admin/regions/eu", True)
        assert drained() == {"a": True, "b": True}
        entry = await patch("/admin/regions/eu", False)
        assert drained() == {"a": True, "b": False}  # a stays out; b takes traffic again
        # The audit still names each upstream of the region, with its drain after the change.
        assert json.loads(entry["before"]) == {"a": {"drained": True}, "b": {"drained": True}}
        assert json.loads(entry["after"]) == {"a": {"drained": True}, "b": {"drained": False}}
        await patch("/admin/upstreams/a", False)
        assert drained() == {"a": False, "b": False}
        shown = (await c.get("/admin/config", headers=bearer(ALICE))).json()["config"]
        assert "drained_regions" not in shown  # no region drained: not a key of the document
        # Drained the old way (each upstream on its own): the region's undrain is refused,
        # with what to do instead, and nothing changes.
        await patch("/admin/upstreams/b", True)
        await patch("/admin/upstreams/a", True)
        r = await c.patch("/admin/regions/eu", json={"drained": False}, headers=bearer(ALICE))
        message = r.json()["error"]["message"]
        assert r.status_code == 400 and message.startswith("region eu is not drained as a region")
        assert message.endswith("undrain each: ctl undrain a, ctl undrain b")
        assert drained() == {"a": True, "b": True}


async def test_no_token_configured_means_the_api_is_off() -> None:
    async with client(config()) as c:
        r = await c.get("/admin/config", headers=bearer("anything"))
        assert r.status_code == 404 and "admin.tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"bias_ms": NaN}', "bias_ms must be a finite number"),
        (b'{"weight": Infinity}', "weight must be a finite number"),
        (b'{"weight": 1e309}', "weight must be a finite number"),
        (b'{"weight": -1}', "weight must be between 0 and 1000"),
        # past a float's range: isfinite raised OverflowError, a plain-text 500
        (b'{"bias_ms": -1' + b"0" * 400 + b"}", "bias_ms must be between"),
        (b'{"weight": 1' + b"0" * 400 + b"}", "(got a number of about 400 digits)"),
        (b"[" * 100_000 + b"]" * 100_000, "over 65536 bytes"),
        (b"[" * 60_000 + b"]" * 60, "nested too deeply"),
        # an int over 4300 digits: CPython's message told the client to call a Python function
        (b'{"weight": ' + b"1" * 5000 + b"}", "a number of over 4,300 digits"),
        # bytes were read as UTF-16 by json.loads, which said only "Expecting value"
        (b"\xff\xfe{}", "not UTF-8"),
        # a lone surrogate in an unknown key: Starlette's JSONResponse could not encode the
        # 400 that named it, a 500 with a traceback in the log
        (b'{"\\ud800": 1}', "change one or more of"),
        (b'{"weight": ', "not valid JSON"),
        (b"[1]", "send a JSON object"),
        # the last was taken, the first dropped without a word
        (b'{"weight": 2, "weight": 3}', "'weight' is in the body twice: send each field once"),
        (b'{"drained": false, "x": {"a": 1, "a": 2}}', "'a' is in the body twice"),
    ],
)
async def test_bad_changes_are_400_and_change_nothing(body: bytes, message: str) -> None:
    async with client(config(tokens={"alice": ALICE})) as c:
        r = await c.patch("/admin/upstreams/a", content=body, headers=bearer(ALICE))
        assert r.status_code in (400, 413), r.text
        assert message in r.json()["error"]["message"]
        # What was refused never reached the config: it still prints, as JSON, unchanged.
        shown = await c.get("/admin/config", headers=bearer(ALICE))
        assert shown.status_code == 200
        assert shown.json()["config"]["upstreams"][0]["weight"] == 1.0
        assert shown.json()["version"] == 1


async def test_a_change_with_a_byte_order_mark_is_taken() -> None:
    # json.loads(bytes) took it; decoding first as UTF-8 answered CPython's advice to use
    # utf-8-sig
    async with client(config(tokens={"alice": ALICE})) as c:
        body = "\ufeff" + '{"weight": 2}'
        r = await c.patch("/admin/upstreams/a", content=body.encode(), headers=bearer(ALICE))
        assert r.status_code == 200, r.text
        shown = await c.get("/admin/config", headers=bearer(ALICE))
        assert shown.json()["config"]["upstreams"][0]["weight"] == 2.0


async def test_a_huge_body_is_refused_before_it_is_read_whole() -> None:
    sent = 0

    async def body() -> Any:
        nonlocal sent
        for _ in range(1000):  # 64 MiB if it were all read
            sent += 65536
            yield b" " * 65536

    async with client(config(tokens={"alice": ALICE})) as c:
        r = await c.patch("/admin/upstreams/a", content=body(), headers=bearer(ALICE))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert str(ADMIN_MAX_BODY_BYTES) in r.json()["error"]["message"]
    assert sent <= 2 * ADMIN_MAX_BODY_BYTES  # the rest was never asked for


def test_operator_of_checks_every_token() -> None:
    ops = {"alice": ALICE, "bob": BOB}
    assert operator_of(f"Bearer {BOB}", ops) == "bob"
    assert operator_of(f"bearer {BOB}", ops) == "bob"  # RFC 9110 §11.1: any case
    assert operator_of(f"Basic {BOB}", ops) is None
    assert operator_of(f"Bearer {BOB} ", ops) is None
    assert operator_of(f"Bearer  {BOB}", ops) == "bob"  # §11.4: 1*SP after the scheme
    # a dashboard login's JSON can carry a lone surrogate: no match, not a UnicodeEncodeError
    assert operator_of("Bearer \ud800", ops) is None
    assert operator_of(BOB, ops) is None
    assert operator_of("", {}) is None


@pytest.mark.parametrize(
    ("body_timeout_s", "ops_bound_s", "named"),
    [
        # the admin API answers at server.body_timeout_s, as /v1/* does, not when (or if)
        # the sender finishes
        (0.3, 5.0, "server.body_timeout_s"),
        # server.body_timeout_s (30 s) is the public API's: a change or a login is a few
        # bytes, and slow ones held the ops listener's capped connections for as long; the
        # answer names the bound that cut it, not the setting that did not
        (30.0, 0.3, "the ops listener's bound"),
    ],
)
async def test_a_slow_body_is_refused_at_the_shorter_bound_which_it_names(
    monkeypatch: pytest.MonkeyPatch, body_timeout_s: float, ops_bound_s: float, named: str
) -> None:
    async def trickle() -> Any:  # a byte every 0.1 s
        for b in b'{"weight": 2}':
            await asyncio.sleep(0.1)
            yield bytes([b])

    monkeypatch.setattr(d, "OPS_BODY_TIMEOUT_S", ops_bound_s)
    cfg = config(tokens={"alice": ALICE})
    server = cfg.server.model_copy(update={"body_timeout_s": body_timeout_s})
    cfg = cfg.model_copy(update={"server": server})
    async with client(cfg) as c:
        r = await c.patch("/admin/upstreams/a", content=trickle(), headers=bearer(ALICE))
        assert r.status_code == 408, r.text
        message = r.json()["error"]["message"]
        assert "within 0.3 s" in message and named in message, message
        shown = await c.get("/admin/config", headers=bearer(ALICE))
        assert shown.json()["config"]["upstreams"][0]["weight"] == 1.0


@pytest.mark.parametrize("count", ["0", "1001", "x", "\u00b2", "-1", " 5", "9" * 4301])
async def test_an_audit_count_out_of_bounds_is_400(count: str) -> None:
    # "\u00b2" (superscript two) passes str.isdigit and not int(): it must be a 400, not a 500
    async with client(config(tokens={"alice": ALICE})) as c:
        r = await c.get("/admin/audit", params={"count": count}, headers=bearer(ALICE))
        assert r.status_code == 400 and "count must be 1..1000" in r.json()["error"]["message"]


async def test_redis_away_says_whether_a_change_was_lost_or_only_a_read() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    rt = build_runtime(config(tokens={"alice": ALICE}))

    async def away(*_: Any) -> Any:
        raise RedisConnectionError("Error 1 connecting to redis://:hunter2@cache:6380: refused")

    rt.store.audit = away  # type: ignore[method-assign,assignment]
    rt.store.update_upstream = away  # type: ignore[method-assign,assignment]
    app = Starlette(routes=admin_routes(rt))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        read = await c.get("/admin/audit", headers=bearer(ALICE))
        change = await c.patch("/admin/upstreams/a", json={"weight": 2}, headers=bearer(ALICE))
    for r in (read, change):
        assert r.status_code == 503 and r.json()["error"]["code"] == "shared_state_unavailable"
    assert "nothing was read" in read.json()["error"]["message"]
    assert "the change was not applied" in change.json()["error"]["message"]
    # Redis's own words, not its error's type alone (a TLS certificate not verified, a
    # read-only replica), any password in them masked.
    said = change.json()["error"]["message"]
    assert "(ConnectionError: Error 1 connecting to redis://:****@cache:6380: refused)" in said


async def test_a_change_while_redis_lost_data_is_503_and_says_to_wait(tmp_path: Path) -> None:
    """The real refusal (config_io.update), over a real redis-server: Redis holds version 1
    while a gateway's fresh observation says it routes on version 3."""
    server = start_redis(tmp_path)
    data = config(tokens={"alice": ALICE}).model_dump(mode="json")
    data["redis"] = {"url": server.url, "gateway_id": "gw1", "restart_grace_s": 0}
    rt = build_runtime(Config.model_validate(data))
    assert isinstance(rt.store, RedisStateStore)
    store = rt.store
    try:
        r = store.redis()
        ahead = {"gateway": "gw0", "region": "eu", "upstreams": {}, "config_version": 3}
        await r.set(store.keys.obs("gw0/1"), json.dumps(ahead), px=60_000)
        await r.zadd(store.keys.observers, {"gw0/1": (await r.time())[0]})
        app = Starlette(routes=admin_routes(rt))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            # The change syncs first: Redis, empty, is seeded with version 1 from the file.
            r0 = await c.patch("/admin/upstreams/a", json={"weight": 2}, headers=bearer(ALICE))
        assert r0.status_code == 503 and r0.json()["error"]["code"] == "shared_state_unavailable"
        assert r0.json()["error"]["message"].startswith(
            "Redis lost data: gateways hold version 3 (gw0), Redis 1; wait for them to put it back"
        )
        held = await config_io.read(r, store.keys)
        assert held.version == 1  # nothing written
        assert [u["weight"] for u in (held.doc or {})["upstreams"]] == [1]
    finally:
        await store.stop()
        server.stop()


async def test_a_change_right_after_redis_started_is_503_with_retry_after(tmp_path: Path) -> None:
    """redis.restart_grace_s after Redis's start (30 s here): a change waits, with the
    wait in Retry-After as in the message, and nothing is written."""
    server = start_redis(tmp_path)
    data = config(tokens={"alice": ALICE}).model_dump(mode="json")
    data["redis"] = {"url": server.url, "gateway_id": "gw1", "restart_grace_s": 30}
    rt = build_runtime(Config.model_validate(data))
    assert isinstance(rt.store, RedisStateStore)
    try:
        app = Starlette(routes=admin_routes(rt))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            r0 = await c.patch("/admin/upstreams/a", json={"weight": 2}, headers=bearer(ALICE))
        assert r0.status_code == 503 and r0.json()["error"]["code"] == "shared_state_unavailable"
        said = r0.json()["error"]["message"]
        assert said.startswith("Redis started ") and "(redis.restart_grace_s)" in said
        assert said.endswith(f"; retry in {r0.headers['retry-after']} s")
        assert 28 <= int(r0.headers["retry-after"]) <= 30
        held = await config_io.read(rt.store.redis(), rt.store.keys)
        assert held.version == 1  # the seed, nothing more
    finally:
        await rt.store.stop()
        server.stop()


async def test_a_change_that_changes_nothing_is_said_not_versioned() -> None:
    async with client(config(tokens={"alice": ALICE})) as c:
        first = await c.patch("/admin/upstreams/a", json={"weight": 2}, headers=bearer(ALICE))
        assert (first.json()["version"], first.json()["changed"]) == (2, True)
        again = await c.patch("/admin/upstreams/a", json={"weight": 2}, headers=bearer(ALICE))
        assert again.status_code == 200, again.text
        body = again.json()
        assert (body["version"], body["changed"], body["audit"]["changed"]) == (2, False, "false")
        entries = (await c.get("/admin/audit", headers=bearer(ALICE))).json()["entries"]
        assert len(entries) == 1
