"""Wrong tokens on the ops listener, counted per address: the window itself (a clock passed in),
the middleware over the ops app in process (every surface that checks a token), and a real
gateway's ops listener over sockets from two loopback addresses."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.defaults import AUTH_FAILURE_WINDOW_S, AUTH_FAILURES_MAX
from gateway.http.auth_throttle import AuthThrottle, FailureWindow, address_keys
from gateway.http.ops import ops_app
from gateway.runtime import build_runtime
from tests.support import Gateway, one_sim_gateway

ALICE = "alice-token-0123456789"
OPS = "ops-token-0123456789ab"


def test_the_window_holds_an_address_back_until_its_oldest_failure_is_old() -> None:
    w = FailureWindow(limit=3, window_s=60.0)
    assert [w.failed("a", t) for t in (0.0, 10.0, 20.0)] == [False, False, True]
    assert w.wait_s("a", 20.0) == pytest.approx(40.0)  # the first failure leaves at 60 s
    assert w.wait_s("b", 20.0) == 0.0  # another address is not held back
    assert w.wait_s("a", 59.0) == pytest.approx(1.0)
    assert w.wait_s("a", 60.0) == 0.0  # two left in the window: it may try again
    assert w.failed("a", 61.0) is True  # and a third failure holds it back again
    assert w.wait_s("a", 61.0) == pytest.approx(9.0)
    assert w.wait_s("a", 200.0) == 0.0  # all aged out: forgotten


def test_the_limit_is_said_once() -> None:
    w = FailureWindow(limit=3, window_s=60.0)
    assert [w.failed("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [False, False, True, False]


def test_the_window_keeps_a_bounded_number_of_addresses() -> None:
    w = FailureWindow(limit=2, window_s=60.0, max_addresses=3)
    for i in range(3):
        w.failed(f"old{i}", 0.0)
    w.failed("x", 1.0)
    w.failed("x", 1.0)
    assert w.wait_s("x", 1.0) > 0
    for i in range(10):  # a scan from many addresses: old ones go, the memory stays bounded
        w.failed(f"scan{i}", 100.0)
    assert len(w._failures) <= 3


def test_many_addresses_with_a_failure_each_do_not_set_a_guesser_free() -> None:
    # 4,096 addresses with one wrong token each evicted the oldest kept: the guesser held
    # back for its ten, who then had ten more.
    w = FailureWindow(limit=10, window_s=60.0, max_addresses=64)
    for _ in range(10):
        w.failed("guesser", 0.0)
    for i in range(1000):
        w.failed(f"other{i}", 1.0 + i / 1000)
    assert w.wait_s("guesser", 2.0) == pytest.approx(58.0)
    assert len(w) <= 64


def test_a_table_full_of_held_back_addresses_holds_back_new_ones_too() -> None:
    # Evicting held-back addresses set guessers free: 4,700 /64s of one /48 at ten tries each
    # made 47,000 tries. Full of held-back ones, the table holds back whoever is not in it.
    w = FailureWindow(limit=2, window_s=60.0, max_addresses=8)
    said = [w.failed(f"g{i}", float(i)) for i in range(8) for _ in range(2)]
    assert said.count(True) == 8  # each said once
    assert w.failed("newcomer", 10.0) is True  # the table is full: said once
    assert w.failed("another", 11.0) is False
    assert w.wait_s("newcomer", 11.0) == pytest.approx(49.0)  # until g0's first failure ages out
    assert all(w.wait_s(f"g{i}", 11.0) > 0 for i in range(8))  # none set free
    assert w.wait_s("newcomer", 61.0) == 0.0


@pytest.mark.parametrize(
    ("address", "keys"),
    [
        ("198.51.100.7", ("198.51.100.7", None)),
        ("2001:db8:1:2:aaaa::1", ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64")),
        ("2001:0db8:1:2:bbbb::9", ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64")),
        ("::ffff:198.51.100.7", ("198.51.100.7", None)),
        ("fe80::1%eth0", ("fe80::1", "fe80::/64")),
        ("-", ("-", None)),
    ],
)
def test_an_ipv6_address_counts_alone_and_in_its_64(
    address: str, keys: tuple[str, str | None]
) -> None:
    assert address_keys(address) == keys


async def test_an_ipv6_subnets_hosts_are_held_back_apart_and_its_64_at_ten_times() -> None:
    app = _app()

    async def guess(address: str) -> int:
        async with _ops((address, 4000), app) as c:
            r = await c.get("/admin/config", headers={"Authorization": "Bearer guess"})
            return r.status_code

    # One host's stale token holds back that host, not its subnet's others (an AWS VPC's /64).
    assert [await guess("2001:db8::1") for _ in range(11)] == [401] * 10 + [429]
    assert await guess("2001:db8::2") == 401
    # A host rotating through its /64: ten addresses' worth of tries, then the /64 is held.
    statuses = [await guess(f"2001:db8::{i:x}") for i in range(3, 200)]
    assert statuses.count(401) == AUTH_FAILURES_MAX * 10 - 11
    assert statuses[-1] == 429
    assert await guess("2001:db8:0:1::1") == 401  # another /64


def _app() -> AuthThrottle:
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
            "upstreams": [
                {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}
            ],
            "admin": {"tokens": {"alice": ALICE}},
            "ops": {"token": OPS},
        }
    )
    return ops_app(build_runtime(cfg))


def _ops(client: tuple[str, int], app: AuthThrottle | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app or _app(), client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://ops")


async def test_every_surface_that_checks_a_token_counts_and_is_held_back() -> None:
    async with _ops(("198.51.100.7", 4000)) as c:
        wrong = {"Authorization": "Bearer guess"}
        # The ops token, an operator's token and the dashboard's login each answer 401.
        r = await c.get("/routing-table", headers=wrong)
        assert r.json()["error"]["code"] == "invalid_ops_token"
        r = await c.get("/admin/config", headers=wrong)
        assert r.json()["error"]["code"] == "invalid_admin_token"
        for _ in range(AUTH_FAILURES_MAX - 2):
            r = await c.post("/dashboard/login", json={"token": "guess"})
            assert r.status_code == 401, r.text
        # The tenth wrong token was the last checked: the right ones are now refused
        # unchecked, on every surface.
        for r in (
            await c.get("/admin/config", headers={"Authorization": f"Bearer {ALICE}"}),
            await c.get("/routing-table", headers={"Authorization": f"Bearer {OPS}"}),
            await c.post("/dashboard/login", json={"token": ALICE}),
        ):
            path = r.request.url.path
            assert r.status_code == 429, (path, r.text)
            err = r.json()["error"]
            assert (err["code"], err["type"]) == ("too_many_auth_failures", "rate_limit_error")
            assert "198.51.100.7" in err["message"] and "try again in" in err["message"]
            assert 0 < int(r.headers["retry-after"]) <= AUTH_FAILURE_WINDOW_S
        # What carries no token is not held back: the page, and who is logged in (nobody).
        assert (await c.get("/dashboard")).status_code == 200
        assert (await c.get("/dashboard/api/session")).json() == {"operator": None, "csrf": None}


async def test_right_tokens_and_missing_ones_are_not_counted() -> None:
    async with _ops(("198.51.100.8", 4000)) as c:
        for _ in range(AUTH_FAILURES_MAX * 2):
            r = await c.get("/admin/config", headers={"Authorization": f"Bearer {ALICE}"})
            assert r.status_code == 200
            r = await c.get("/dashboard/api/state")  # no cookie: a 401 with nothing guessed
            assert r.status_code == 401
        r = await c.post("/dashboard/login", json={"token": ALICE})
        assert r.status_code == 200 and r.json()["operator"] == "alice"


async def test_wrong_tokens_sent_at_once_are_not_all_checked() -> None:
    # Logins whose bodies come late all passed the check before the first failure was
    # counted: 60 at once were 60 tries (and 51 log lines).
    app = _app()

    async def login(i: int) -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/dashboard/login",
            "raw_path": b"/dashboard/login",
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "http_version": "1.1",
            "server": ("ops", 80),
            "client": ("198.51.100.9", 4000),
            "headers": [(b"host", b"ops"), (b"content-type", b"application/json")],
        }
        body = json.dumps({"token": f"guess{i}"}).encode()
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)  # the body comes late: every check starts first
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    statuses = Counter(await asyncio.gather(*(login(i) for i in range(60))))
    assert statuses[401] <= AUTH_FAILURES_MAX and statuses[429] >= 60 - AUTH_FAILURES_MAX, statuses


def _scope(method: str, path: str, client: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("ops", 80),
        "client": (client, 4000),
        "headers": [(b"host", b"ops"), *headers],
    }


async def test_wrong_bearer_tokens_sent_at_once_are_not_all_checked() -> None:
    # Counted after the answer's send, which a server's send may wait on (hypercorn's), a
    # burst of 3,000 wrong tokens from one address was 1,700 tries.
    app = _app()

    async def guess(i: int) -> int:
        statuses: list[int] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await asyncio.sleep(0)  # the send waits: the other requests run meanwhile

        auth = (b"authorization", f"Bearer guess{i}".encode())
        await app(_scope("GET", "/admin/config", "198.51.100.11", auth), _no_body, send)
        return statuses[0]

    statuses = Counter(await asyncio.gather(*(guess(i) for i in range(300))))
    assert statuses == {401: AUTH_FAILURES_MAX, 429: 300 - AUTH_FAILURES_MAX}, statuses


async def test_logins_that_never_send_their_bodies_lock_nobody_out() -> None:
    # Counted as failures to come, ten logins left without their bodies (renewed every body
    # timeout) kept the operator's own login at 429 with no wrong token sent.
    app = _app()
    never, all_reading = asyncio.Event(), asyncio.Event()
    reading: list[int] = []

    async def silent() -> dict[str, Any]:
        reading.append(1)  # at its body's read: its check has begun
        if len(reading) == 20:
            all_reading.set()
        await never.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def quiet(message: MutableMapping[str, Any]) -> None:
        pass

    json_type = (b"content-type", b"application/json")
    login = _scope("POST", "/dashboard/login", "198.51.100.12", json_type)
    waiting = [asyncio.create_task(app(dict(login), silent, quiet)) for _ in range(20)]
    await asyncio.wait_for(all_reading.wait(), 5)  # every one waiting for its body
    try:
        async with _ops(("198.51.100.12", 4000), app) as c:
            r = await c.post("/dashboard/login", json={"token": ALICE})
        assert r.status_code == 200, r.text
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def test_good_tokens_sent_at_once_are_not_held_back() -> None:
    # A scrape and the edge tier's reads from one address, at once, each answered after a
    # moment: none is a wrong token to come, and none may be refused for the others.
    async def slow_ok(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    throttle = AuthThrottle(slow_ok)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/routing-table",
        "client": ("198.51.100.10", 4000),
        "headers": [(b"authorization", f"Bearer {OPS}".encode())],
    }

    async def scrape() -> int:
        statuses: list[int] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await throttle(dict(scope), _no_body, send)
        return statuses[0]

    assert set(await asyncio.gather(*(scrape() for _ in range(40)))) == {200}


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with one_sim_gateway(tmp_path, f'[admin]\ntokens = {{ alice = "{ALICE}" }}\n') as g:
        yield g


def _from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


def test_a_real_ops_listener_holds_back_one_address_not_another(gw: Gateway) -> None:
    with _from("127.0.0.2") as guesser, _from("127.0.0.3") as operator:
        for _ in range(AUTH_FAILURES_MAX):
            r = guesser.post(f"{gw.ops_url}/dashboard/login", json={"token": "guess"})
            assert r.status_code == 401, r.text
        r = guesser.post(f"{gw.ops_url}/dashboard/login", json={"token": ALICE})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        # Another address logs in with the right token, and a wrong one is still a 401.
        r = operator.post(f"{gw.ops_url}/dashboard/login", json={"token": ALICE})
        assert r.status_code == 200 and r.json()["operator"] == "alice"
        r = operator.get(f"{gw.ops_url}/admin/config", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401
    [line] = [x for x in gw.log_text().splitlines() if "wrong tokens from" in x]
    assert "127.0.0.2" in line and "127.0.0.3" not in line


def test_old_failures_do_not_pass_for_a_full_table() -> None:
    # Unpruned, entries with nine old failures and one new looked held back a window later:
    # the table passed for full, and a newcomer's 300 wrong tokens went uncounted (a bug of
    # an earlier version of the full-table rule, not of the code before it).
    w = FailureWindow(limit=10, window_s=60.0, max_addresses=4)
    for i in range(4):
        for _ in range(9):
            w.failed(f"old{i}", 0.0)
        w.failed(f"old{i}", 59.0)
    for _ in range(10):
        w.failed("newcomer", 63.0)
    assert w.wait_s("newcomer", 63.0) == pytest.approx(60.0)  # counted, and held back


async def test_a_table_full_of_guessers_does_not_hold_back_a_known_good_address() -> None:
    throttle = _app()
    inner = AuthThrottle(throttle.app, window=FailureWindow(limit=2, max_addresses=4))
    ok = {"Authorization": f"Bearer {ALICE}"}
    wrong = {"Authorization": "Bearer guess"}
    async with _ops(("198.51.100.20", 4000), inner) as operator:
        assert (await operator.get("/admin/config", headers=ok)).status_code == 200
    for i in range(5):  # four fill the table, held back; the fifth finds it full
        async with _ops((f"203.0.113.{i}", 4000), inner) as guesser:
            for _ in range(2):
                await guesser.get("/admin/config", headers=wrong)
    async with _ops(("198.51.100.20", 4000), inner) as operator:
        assert (await operator.get("/admin/config", headers=ok)).status_code == 200
    async with _ops(("198.51.100.21", 4000), inner) as stranger:  # fails closed meanwhile
        assert (await stranger.get("/admin/config", headers=ok)).status_code == 429


async def test_the_warning_names_a_full_table_or_an_address_whichever_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = AuthThrottle(_app().app, window=FailureWindow(limit=2, max_addresses=2))
    wrong = {"Authorization": "Bearer guess"}
    with caplog.at_level(logging.WARNING, logger="geogate"):
        for i in range(3):
            async with _ops((f"203.0.113.{i}", 4000), inner) as guesser:
                for _ in range(2):
                    await guesser.get("/admin/config", headers=wrong)
    said = [r.getMessage() for r in caplog.records if "refused unchecked" in r.getMessage()]
    assert [m.split(":")[0] for m in said] == [
        "2 wrong tokens from 203.0.113.0 within 60 s",
        "2 wrong tokens from 203.0.113.1 within 60 s",
        "wrong tokens from 2 addresses hold the whole table",
    ], said
