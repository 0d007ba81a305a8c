"""Many gateways as one fleet over a real redis-server, with simulated backends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from redis import Redis

from gateway.cli.procs import free_port, geogate_cmd, kill
from gateway.fleet.keys import Keys
from tests.support import (
    Gateway,
    RedisServer,
    Sim,
    UpstreamSpec,
    children,
    eventually,
    gateway_toml,
    get_json,
    served_by,
    start_gateway,
    start_redis,
    start_sim,
)

TOKEN = "s3cret"
BODY = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def fleet_toml(port: int, ups: list[UpstreamSpec], redis_url: str, gid: str) -> str:
    extra = (
        f'[redis]\nurl = "{redis_url}"\ngateway_id = "{gid}"\nrefresh_interval_s = 0.1\n'
        # Changes within seconds of the test's Redis start (redis.restart_grace_s's own
        # tests: tests/gateway/fleet/test_redis_store.py).
        "observation_ttl_s = 1.0\nrestart_grace_s = 0\n\n"
        f'[admin]\ntokens = {{alice = "{TOKEN}"}}\n\n'
        "[router]\ntolerance_ms = 1000\n"
    )  # both upstreams near-equal: weights decide
    return gateway_toml(port, ups, extra=extra).replace("[server]", "[server]\naccess_log = false")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RedisServer, list[Gateway], list[Sim]]]:
    redis = start_redis(tmp_path)
    sims = [start_sim(tmp_path, f"b{i}", "eu-central", ["m"]) for i in range(2)]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]

    def toml_for(i: int) -> Callable[[int], str]:
        return lambda p: fleet_toml(p, ups, redis.url, f"gw{i}")

    gws = [start_gateway(tmp_path, toml_for(i), name=f"gw{i}") for i in range(3)]
    try:
        for gw in gws:

            def fresh(gw: Gateway = gw) -> bool:
                return bool(table(gw)["shared_state"] == "fresh")

            eventually(fresh, what="fresh state")
        yield redis, gws, sims
    finally:
        for gw in gws:
            gw.stop()
        for s in sims:
            s.proc.kill()
        redis.stop()


def table(gw: Gateway) -> dict[str, Any]:
    return get_json(f"{gw.ops_url}/routing-table")


def upstream(gw: Gateway, uid: str) -> dict[str, Any]:
    regions: list[dict[str, Any]] = table(gw)["regions"]
    return next(u for r in regions for u in r["upstreams"] if u["id"] == uid)


def admin(gw: Gateway, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}  # the token says who: alice
    return httpx.request(method, f"{gw.ops_url}{path}", headers=headers, **kw)


def test_a_change_on_one_gateway_is_obeyed_by_all(fleet: Any) -> None:
    _, gws, _ = fleet
    r = admin(gws[0], "PATCH", "/admin/upstreams/b0", json={"drained": True})
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    for gw in gws:

        def changed(gw: Gateway = gw) -> bool:
            return bool(table(gw)["version"] == version)

        # Pushed: under a second as a rule; 5 s leaves room for a loaded machine's Redis call.
        eventually(
            changed,
            timeout=5.0,
            what="the change to reach every gateway",
        )
        assert served_by(gw.url, 20) == Counter({"b1": 20})
    r = admin(gws[1], "PATCH", "/admin/upstreams/b0", json={"drained": False, "weight": 3})
    for gw in gws:

        def weighted(gw: Gateway = gw) -> bool:
            return bool(upstream(gw, "b0")["weight"] == 3)

        eventually(
            weighted,
            timeout=5.0,
            what="the weight change everywhere",
        )
    share = served_by(gws[2].url, 400)
    assert 0.65 < share["b0"] / 400 < 0.85, share  # weight 3 : 1 -> 75 %
    audit = admin(gws[2], "GET", "/admin/audit", params={"count": 5}).json()["entries"]
    assert [e["who"] for e in audit] == ["alice", "alice"]
    assert json.loads(audit[0]["after"]) == {"drained": False, "weight": 3}
    assert json.loads(audit[1]["before"]) == {"drained": False}


def test_ctl_show_set_and_audit(fleet: Any) -> None:
    redis, gws, _ = fleet

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            geogate_cmd("ctl", "--redis", redis.url, "--restart-grace", "0", *args),
            capture_output=True,
            text=True,
            timeout=30,
        )

    p = ctl("set", "b1", "--bias-ms", "25", "--who", "bob")
    assert p.returncode == 0, p.stderr
    assert '{"bias_ms": 0.0} -> {"bias_ms": 25.0}' in p.stdout
    eventually(
        lambda: (
            all(upstream(g, "b1")["bias_ms"] == 25.0 for g in gws)
            and json.loads(ctl("show").stdout)["upstreams"][1]["bias_ms"] == 25.0
        ),
        what="ctl show",
    )
    assert "bob" in ctl("audit").stdout
    bad = ctl("set", "nope", "--weight", "1")
    assert bad.returncode == 2 and "no upstream 'nope'" in bad.stderr
    bad = ctl("set", "b1", "--weight", "-1")
    assert bad.returncode == 2 and "weight" in bad.stderr
    gone = subprocess.run(
        geogate_cmd("ctl", "--redis", "redis://127.0.0.1:1", "show"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gone.returncode == 2 and "cannot reach Redis" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_admin_api_needs_the_token(fleet: Any) -> None:
    _, gws, _ = fleet
    r = httpx.patch(f"{gws[0].ops_url}/admin/upstreams/b0", json={"weight": 2})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    r = admin(gws[0], "PATCH", "/admin/upstreams/b0", json={"colour": "red"})
    assert r.status_code == 400 and "weight" in r.json()["error"]["message"]
    r = admin(gws[0], "PATCH", "/admin/upstreams/b0", content=b'{"weight": ')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = admin(gws[0], "PATCH", "/admin/upstreams/nope", json={"weight": 2})
    assert r.status_code == 400 and "no upstream 'nope'" in r.json()["error"]["message"]
    r = admin(gws[0], "GET", "/admin/audit", params={"count": "all"})
    assert r.status_code == 400 and "count" in r.json()["error"]["message"]
    assert table(gws[0])["version"] == 1  # none of it changed anything


def test_a_killed_backend_leaves_every_rotation(fleet: Any) -> None:
    _, gws, sims = fleet
    kill(sims[0].proc)
    for gw in gws:

        def down(gw: Gateway = gw) -> bool:
            return bool(upstream(gw, "b0")["fleet_down"])

        eventually(
            down,
            timeout=5,
            what="the fleet to agree b0 is down",
        )
        assert served_by(gw.url, 10) == Counter({"b1": 10})
    # Who saw what: a gateway may route away on the majority before its own probe noticed;
    # soon every observer reports b0 down.
    eventually(
        lambda: upstream(gws[0], "b0")["seen_by"] == {"gw0": False, "gw1": False, "gw2": False},
        what="every observer to report b0 down",
    )


def test_a_dead_gateway_stops_counting_after_its_ttl(fleet: Any) -> None:
    _, gws, _ = fleet
    eventually(
        lambda: set(upstream(gws[0], "b0")["seen_by"]) == {"gw0", "gw1", "gw2"},
        what="all three observers",
    )
    kill(gws[2].proc)  # SIGKILL: it cannot say goodbye
    eventually(
        lambda: set(upstream(gws[0], "b0")["seen_by"]) == {"gw0", "gw1"},
        timeout=5,
        what="gw2's observations to expire",
    )


def test_redis_stops_and_returns_without_failed_requests(fleet: Any) -> None:
    redis, gws, _ = fleet
    statuses: Counter[int] = Counter()

    async def traffic(stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as s:
            i = 0
            while not stop.is_set():
                async with s.post(f"{gws[i % 2].url}/v1/chat/completions", json=BODY) as r:
                    await r.read()
                    statuses[r.status] += 1
                i += 1

    async def scenario() -> None:
        stop = asyncio.Event()
        load = asyncio.ensure_future(traffic(stop))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis.stop)
        for gw in gws[:2]:

            def degraded(gw: Gateway = gw) -> bool:
                return httpx.get(f"{gw.url}/readyz").text.startswith(
                    "degraded: shared state stale since"
                )

            await asyncio.to_thread(
                eventually,
                degraded,
                5.0,
                "readyz to say degraded",
            )
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis.start)
        for gw in gws[:2]:

            def fresh(gw: Gateway = gw) -> bool:
                return bool(table(gw)["shared_state"] == "fresh")

            await asyncio.to_thread(
                eventually,
                fresh,
                10.0,
                "the gateway to re-sync",
            )
        stop.set()
        await load

    asyncio.run(scenario())
    assert set(statuses) == {200} and statuses[200] > 50, statuses
    # Converged again: a change made after the outage reaches both.
    r = admin(gws[0], "PATCH", "/admin/upstreams/b1", json={"weight": 2})
    assert r.status_code == 200, r.text
    for gw in gws[:2]:

        def weighted(gw: Gateway = gw) -> bool:
            return bool(upstream(gw, "b1")["weight"] == 2)

        eventually(
            weighted,
            timeout=10,
            what="the post-outage change everywhere",
        )
    # Polled: on a loaded machine one refresh can time out (redis.connect_timeout_s) and go
    # stale for a moment again; what must hold is that it settles back to fresh.
    eventually(
        lambda: (
            "geogate_shared_state_stale_seconds 0.0" in httpx.get(f"{gws[0].ops_url}/metrics").text
        ),
        timeout=5,
        what="the staleness gauge back at 0",
    )


def test_a_gateway_with_two_workers_is_one_observer(tmp_path: Path) -> None:
    """Without redis.gateway_id, `geogate gateway` names the fleet observer by its own pid for
    all its workers (gateway.server hands it to them): two workers, one vote in seen_by."""
    server = start_redis(tmp_path)
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    extra = f'[redis]\nurl = "{server.url}"\nrefresh_interval_s = 0.1\nobservation_ttl_s = 1.0\n'
    gw = start_gateway(
        tmp_path,
        lambda p: gateway_toml(p, ups, extra=extra).replace(
            "[server]", '[server]\nengine = "uvicorn"\nworkers = 2'
        ),
    )
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        observers: list[str] = []

        def both_workers_observe() -> bool:
            observers[:] = [str(o) for o in client.zrange(Keys("default").observers, 0, -1)]
            return len(observers) == 2

        eventually(both_workers_observe, what="both workers' views in Redis")
        gateways = {o.rpartition("/")[0] for o in observers}
        assert len(gateways) == 1, observers  # one gateway id, two worker keys
        assert list(upstream(gw, "s")["seen_by"]) == [gateways.pop()]
    finally:
        client.close()
        gw.stop()
        sim.proc.kill()
        server.stop()


def test_a_gateway_told_to_stop_as_it_starts_stops(tmp_path: Path) -> None:
    """A worker never exited: SIGTERM 50 ms after the gateway answered, its drain done, its
    Redis sync lost the cancel (3.11's asyncio.wait_for, python/cpython#86296) and went on,
    the shutdown waiting on it. It hung in a third to two thirds of starts: twelve here."""
    server = start_redis(tmp_path)
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    extra = f'[redis]\nurl = "{server.url}"\nrefresh_interval_s = 0.1\n'
    try:
        for i in range(12):
            gw = start_gateway(
                tmp_path,
                lambda p: gateway_toml(p, ups, extra=extra).replace(
                    "[server]", '[server]\nengine = "uvicorn"\nworkers = 2'
                ),
                name=f"gw{i}",
            )
            workers = children(gw.proc.pid)
            time.sleep(0.05)
            gw.proc.send_signal(signal.SIGTERM)
            try:
                assert gw.proc.wait(8) == 0, gw.log_text()[-2000:]
            except subprocess.TimeoutExpired:
                alive = [w for w in workers if Path(f"/proc/{w}").exists()]
                for pid in alive:  # each in its own process group
                    os.kill(pid, signal.SIGKILL)
                kill(gw.proc)
                pytest.fail(f"start {i}: workers {alive} still running 8 s after SIGTERM")
    finally:
        sim.proc.kill()
        server.stop()


def test_a_gateway_that_never_reached_redis_says_it_routes_on_its_own_file(
    tmp_path: Path,
) -> None:
    """/readyz said "routing on the last snapshot" though there was none: a gateway that has
    not synced once routes on its own file's config, and says so."""
    sim = start_sim(tmp_path, "b0", "eu-central", ["m"])
    ups = [UpstreamSpec(sim.name, "eu-central", sim.url, ["m"])]
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gw = start_gateway(tmp_path, lambda p: fleet_toml(p, ups, nowhere, "gw0"), name="gw0")
    try:
        eventually(
            lambda: "own file" in httpx.get(f"{gw.url}/readyz").text,
            what="readyz to name the gateway's own file",
        )
        text = httpx.get(f"{gw.url}/readyz").text
        assert text.startswith("degraded: shared state stale since"), text
        assert "this gateway's own file (never in sync with the fleet)" in text, text
    finally:
        gw.stop()
        sim.proc.kill()


def test_readyz_says_when_the_gateway_ignores_the_fleets_document(tmp_path: Path) -> None:
    """A document in Redis the gateway refuses (a hand edit): it serves on the one before,
    and /readyz said "ready" as if it routed on the fleet's. Degraded, not 503 (every gateway
    may refuse the same document), the metric an alert pages on, ctl show's note; and `ctl
    restore` puts the routed one back (every change was refused with the document's error)."""
    server = start_redis(tmp_path)
    sim = start_sim(tmp_path, "b0", "eu-central", ["m"])
    ups = [UpstreamSpec(sim.name, "eu-central", sim.url, ["m"])]
    gw = start_gateway(tmp_path, lambda p: fleet_toml(p, ups, server.url, "gw0"), name="gw0")
    client = Redis.from_url(server.url, decode_responses=True)
    key = Keys("default").config

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = geogate_cmd("ctl", "--gateway", gw.ops_url, "--token", TOKEN, *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    try:
        eventually(lambda: httpx.get(f"{gw.url}/readyz").text.startswith("ready: 1 healthy"))
        assert ctl("restore").stderr.strip() == (
            "geogate: the gateway refused: nothing to restore: the fleet's document in Redis is "
            "one this gateway routes on; change it with drain, undrain, weight or set"
        )
        client.hset(key, mapping={"doc": "not json", "version": 7})
        client.publish(Keys("default").events, "7")
        eventually(lambda: "ignoring" in httpx.get(f"{gw.url}/readyz").text, what="degraded")
        r = httpx.get(f"{gw.url}/readyz")
        why = (
            "invalid fleet config in Redis (version 7): the document is not JSON (Expecting "
            "value: line 1 column 1 (char 0))"
        )
        assert r.status_code == 200
        assert r.text == (
            f"degraded: ignoring the fleet config in Redis ({why}); routing on version 1 "
            "(1 healthy upstream(s))"
        )
        assert served_by(gw.url, 2) == {"b0": 2}  # still served, on version 1
        assert "\ngeogate_fleet_config_refused 1.0\n" in httpx.get(f"{gw.ops_url}/metrics").text
        assert get_json(f"{gw.ops_url}/routing-table")["fleet_config_refused"] == why
        shown = ctl("show")
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == 1
        assert f"note: the gateway ignores the fleet's document in Redis ({why})" in shown.stderr
        drained = ctl("drain", "b0", "--yes")  # builds on Redis's document: refused
        assert drained.returncode == 2 and "the document is not JSON" in drained.stderr
        restored = ctl("restore")
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.strip() == (
            "fleet config restored: version 1, which this gateway routed on, put back over a "
            f"document it could not route on ({why}) (fleet config version 8, audited as "
            "alice)"
        )
        assert client.hget(key, "version") == "8"
        eventually(lambda: httpx.get(f"{gw.url}/readyz").text.startswith("ready: 1 healthy"))
        assert "\ngeogate_fleet_config_refused 0.0\n" in httpx.get(f"{gw.ops_url}/metrics").text
        assert get_json(f"{gw.ops_url}/routing-table")["fleet_config_refused"] is None
        assert ctl("drain", "b0", "--yes").returncode == 0  # changes are made again
    finally:
        client.close()
        gw.stop()
        sim.proc.kill()
        server.stop()
