"""The fleet document a gateway's workers last routed on: kept by the parent's directory,
adopted by a worker started later (one in place of a worker that died), also where Redis is
away or came back empty, and then by a real gateway whose worker is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli.procs import wait_http
from gateway.defaults import WORKER_START_GRACE_S
from gateway.fleet import config_doc, config_io, last_known
from gateway.fleet.settle import Stored
from tests.gateway.fleet.test_fleet import TOKEN, admin, fleet_toml, table, upstream
from tests.gateway.fleet.test_redis_store import CFG, gateway, routing
from tests.support import (
    UpstreamSpec,
    children,
    eventually,
    gateway_toml,
    start_gateway,
    start_redis,
    start_sim,
)


def _drained_doc() -> dict[str, object]:
    doc, _, _ = config_doc.change_upstream(config_doc.routing_doc(CFG), "a", {"drained": True})
    return doc


def test_kept_where_a_worker_may_start_while_the_gateway_runs() -> None:
    for shared in (True, False):  # one uvicorn worker is this process: nothing to keep
        with last_known.kept(False, shared) as one:
            assert one is None and last_known.ENV_FLEET_CACHE not in os.environ
    with last_known.kept(True, False) as in_memory:  # the in-memory store's too (fleet.memory)
        assert in_memory is not None
        assert os.environ[last_known.ENV_FLEET_CACHE] == str(in_memory)
    assert not in_memory.parent.exists()  # gone with the gateway: a start is anew
    with last_known.kept(True, True) as path:
        assert path is not None and os.environ[last_known.ENV_FLEET_CACHE] == str(path)
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        fleet = last_known.fleet_of("redis://:secret@127.0.0.1:6379/0", "prod")
        last_known.save(Stored(_drained_doc(), 7, 123.0), fleet)
        assert "secret" not in path.read_text()
        got = last_known.load(fleet)
        assert got is not None and (got.version, got.changed_at) == (7, 123.0)
        assert got.doc == _drained_doc()
        # A worker whose config names another fleet (a reload onto a new deployment or
        # Redis) does not carry this one's document into it.
        assert last_known.load(last_known.fleet_of("redis://127.0.0.1:6379/0", "new")) is None
        assert last_known.load(last_known.fleet_of("redis://127.0.0.1:6380/0", "prod")) is None
    assert not path.parent.exists() and last_known.ENV_FLEET_CACHE not in os.environ
    assert last_known.load(fleet) is None  # none named: none read


def test_a_state_file_is_named_for_one_worker_too_and_kept_after(tmp_path: Path) -> None:
    state = tmp_path / "state" / "fleet.json"
    state.parent.mkdir()
    with last_known.kept(True, False, state) as alone:  # no Redis: kept for the gateway's life
        assert alone is not None and alone != state
    fleet = last_known.fleet_of("redis://127.0.0.1:6379/0", "prod")
    with last_known.kept(False, True, state) as path:
        assert path == state and os.environ[last_known.ENV_FLEET_CACHE] == str(state)
        last_known.save(Stored(_drained_doc(), 7, 123.0), fleet)
    assert last_known.ENV_FLEET_CACHE not in os.environ and state.exists()  # kept after
    assert oct(state.stat().st_mode & 0o777) == "0o600"  # a URL may carry a password
    with last_known.kept(False, True, state):
        got = last_known.load(fleet)
        assert got is not None and (got.version, got.doc) == (7, _drained_doc())


def test_a_gateway_restarted_with_redis_away_keeps_the_fleets_drain(tmp_path: Path) -> None:
    # It routed on its file: a region drained for maintenance took traffic again from every
    # gateway restarted during a Redis outage.
    redis = start_redis(tmp_path)
    sims = [start_sim(tmp_path, f"b{i}", "eu-central", ["m"]) for i in range(2)]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    state = tmp_path / "fleet-state.json"

    def toml(p: int) -> str:
        text = fleet_toml(p, ups, redis.url, "gw0")
        return text.replace("[redis]", f'[redis]\nstate_file = "{state}"')

    gw = start_gateway(tmp_path, toml)
    try:
        r = admin(gw, "PATCH", "/admin/upstreams/b0", json={"drained": True})
        assert r.status_code == 200, r.text
        eventually(lambda: upstream(gw, "b0")["drained"], what="the drain")
        gw.stop()
        redis.stop()
        gw = start_gateway(tmp_path, toml, name="again")  # Redis away: the file's routing
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            doc = c.get(f"{gw.ops_url}/routing-table").json()
        b0 = next(u for reg in doc["regions"] for u in reg["upstreams"] if u["id"] == "b0")
        assert (doc["version"], b0["drained"]) == (2, True), doc
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
        redis.stop()


def test_a_document_of_another_fleet_is_not_routed_on_and_that_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Written as redis://localhost:6379, read as redis://127.0.0.1:6379 (the same server): it
    # was passed over without a word, and a drained region took traffic again.
    path = tmp_path / "fleet.json"
    monkeypatch.setenv(last_known.ENV_FLEET_CACHE, str(path))
    kept = last_known.fleet_of("redis://:pw@localhost:6379", "default")
    last_known.save(Stored(_drained_doc(), 9, 1.0), kept)
    assert last_known.load(kept) == Stored(_drained_doc(), 9, 1.0)
    caplog.set_level("WARNING", "geogate.fleet")
    assert last_known.load(last_known.fleet_of("redis://127.0.0.1:6379", "default")) is None
    said = caplog.records[-1].getMessage()
    assert said.startswith(f"not routing on the fleet config kept in {path}: it is of fleet ")
    assert "'redis://:****@localhost:6379 default', this gateway's is 'redis://127.0.0.1:" in said
    # From memory to a fleet (a gateway given a redis.url): not the fleet's, and no mistake
    caplog.clear()
    last_known.save(Stored(_drained_doc(), 2, 1.0), last_known.memory_fleet({"regions": []}))
    assert last_known.load(kept) is None and not caplog.records


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"doc": [], "version": 3, "changed_at": 0}', '{"doc": {}}']
)
def test_a_file_that_is_no_document_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(text)
    monkeypatch.setenv(last_known.ENV_FLEET_CACHE, str(path))
    assert last_known.load("redis://127.0.0.1:6379 default") is None


async def test_a_later_worker_starts_on_it_and_seeds_it_in_an_empty_redis(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(last_known.ENV_FLEET_CACHE, str(tmp_path / "fleet.json"))
    first = gateway(redis_url, "gw0")
    try:
        await first.start()  # waits for its first sync: seeded, version 1
        assert first.version == 1
        await first.update_upstream("a", {"drained": True}, "alice")  # version 2, kept
        assert routing(first)["a"] == (1.0, True)
    finally:
        await first.stop()
    await first.redis().flushall()  # Redis comes back empty
    later = gateway(redis_url, "gw0")  # a worker started in place of one that died
    try:
        assert (later.version, routing(later)["a"]) == (2, (1.0, True))  # before any sync
        assert later.synced_once  # it routes on the fleet's state, and /readyz says so
        await later.start()
        doc, version = await config_io.load(later.redis(), later.keys)
        assert version == 2 and doc is not None  # the fleet's, not its file's seed
        assert {u["id"]: u["drained"] for u in doc["upstreams"]} == {"a": True, "b": False}
    finally:
        await later.stop()


def test_a_replaced_worker_of_a_real_gateway_keeps_the_drain_with_redis_away(
    tmp_path: Path,
) -> None:
    redis = start_redis(tmp_path)
    sims = [start_sim(tmp_path, f"b{i}", "eu-central", ["m"]) for i in range(2)]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    gw = start_gateway(
        tmp_path,
        lambda p: fleet_toml(p, ups, redis.url, "gw0").replace(
            "[server]", '[server]\nengine = "uvicorn"\nworkers = 2'
        ),
    )
    # Its workers were forked before it answered: their start-up grace counts from before this.
    started = time.monotonic()
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        r = admin(gw, "PATCH", "/admin/upstreams/b0", json={"drained": True})
        assert r.status_code == 200, r.text
        eventually(lambda: upstream(gw, "b0")["drained"], what="the drain")
        redis.stop()  # the replacement cannot sync: what it routes on is what it kept
        # A worker that dies in its first seconds stops the gateway (it would fail again):
        # this one dies later, and is replaced.
        time.sleep(max(0.0, started + WORKER_START_GRACE_S + 1.0 - time.monotonic()))
        victim = min(children(gw.proc.pid))
        os.kill(victim, 9)
        eventually(lambda: len(children(gw.proc.pid) - {victim}) == 2, what="a worker in its place")
        # New connections, spread over both workers by SO_REUSEPORT: every answer says drained.
        seen = set()
        for _ in range(30):
            with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                doc = c.get(f"{gw.ops_url}/routing-table").json()
            b0 = next(u for reg in doc["regions"] for u in reg["upstreams"] if u["id"] == "b0")
            seen.add((doc["version"], b0["drained"]))
        assert seen == {(2, True)}, seen
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
        redis.stop()


def test_granians_sighup_keeps_an_in_memory_gateways_drain(tmp_path: Path) -> None:
    """granian restarts its workers on SIGHUP (README): without Redis, the operator's drain
    was undone with the worker, unsaid, and traffic went back to the upstream taken out."""
    sims = [start_sim(tmp_path, f"b{i}", "eu-central", ["m"]) for i in range(2)]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    extra = f'[admin]\ntokens = {{alice = "{TOKEN}"}}\n'
    gw = start_gateway(
        tmp_path,
        lambda p: gateway_toml(p, ups, extra=extra).replace(
            "[server]", '[server]\nengine = "granian"'
        ),
    )
    try:
        [before] = children(gw.proc.pid)
        r = admin(gw, "PATCH", "/admin/upstreams/b0", json={"drained": True})
        assert r.status_code == 200, r.text
        gw.proc.send_signal(signal.SIGHUP)

        def replaced() -> bool:
            now = children(gw.proc.pid)
            return before not in now and len(now) == 1

        eventually(replaced, what="granian's new worker in place of the old")
        wait_http(f"{gw.ops_url}/routing-table", proc=gw.proc)
        doc = table(gw)
        b0 = next(u for reg in doc["regions"] for u in reg["upstreams"] if u["id"] == "b0")
        assert (doc["version"], b0["drained"]) == (2, True)
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
