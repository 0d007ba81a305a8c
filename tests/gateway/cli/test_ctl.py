"""``geogate ctl`` against a real gateway (its ops listener) and a real redis-server, in front of
simulated backends: drains move traffic, the audit names the operator, ``top --once`` shows
every upstream, and every mistake is one line with exit status 2."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.cli.main import main
from tests.support import (
    Gateway,
    RedisServer,
    UpstreamSpec,
    eventually,
    gateway_toml,
    get_json,
    served_by,
    start_gateway,
    start_redis,
    start_sim,
)

TOKEN = "alice-token-0123456789"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RedisServer]]:
    """Clients here are in Frankfurt (the default location): eu-central (a1, a2) serves them
    until it is drained, then us-east (b)."""
    tmp = tmp_path_factory.mktemp("ctl")
    redis = start_redis(tmp)
    sims = [
        start_sim(tmp, "a1", "eu-central", ["m"]),
        start_sim(tmp, "a2", "eu-central", ["m"]),
        start_sim(tmp, "b", "us-east", ["m"]),
    ]
    ups = [UpstreamSpec(s.name, s.region, s.url, ["m"]) for s in sims]
    extra = (
        f'[redis]\nurl = "{redis.url}"\ngateway_id = "gw0"\nrefresh_interval_s = 0.1\n\n'
        f'[admin]\ntokens = {{alice = "{TOKEN}"}}\n'
    )
    gw = start_gateway(
        tmp,
        lambda port: gateway_toml(port, ups, extra=extra).replace(
            "[server]", "[server]\naccess_log = false"
        ),
    )
    try:
        eventually(lambda: get_json(f"{gw.ops_url}/routing-table")["shared_state"] == "fresh")
        yield gw, redis
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
        redis.stop()


def ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``geogate ctl ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(["ctl", *args])
        rc = 0
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def via(gw: Gateway, token: str = TOKEN) -> list[str]:
    return ["--gateway", gw.ops_url, "--token", token]


def upstream(gw: Gateway, uid: str) -> dict[str, Any]:
    table: Any = get_json(f"{gw.ops_url}/routing-table")
    return next(u for r in table["regions"] for u in r["upstreams"] if u["id"] == uid)


def regions_served(gw: Gateway, n: int = 6) -> set[str]:
    return {uid.rstrip("12") for uid in served_by(gw.url, n)}  # a1, a2 -> "a"


def test_drain_a_region_then_undrain_it(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, redis = fleet
    assert regions_served(gw) == {"a"}
    rc, out, err = ctl(capsys, *via(gw), "drain", "eu-central")
    assert rc == 0, err
    assert out.startswith("region eu-central drained: a1, a2 take no new requests")
    assert "audited as alice" in out
    assert served_by(gw.url, 6) == Counter({"b": 6})  # applied by this gateway at once
    rc, out, _ = ctl(capsys, *via(gw), "audit", "--json")
    entry = json.loads(out)[0]
    assert (entry["who"], entry["what"]) == ("alice", "region eu-central")
    assert json.loads(entry["after"]) == {"a1": {"drained": True}, "a2": {"drained": True}}

    # Straight to Redis: the gateway hears it published.
    rc, out, err = ctl(capsys, "--redis", redis.url, "undrain", "eu-central", "--who", "bob")
    assert rc == 0, err
    assert out.startswith("region eu-central undrained: a1, a2 back in rotation")
    eventually(lambda: regions_served(gw) == {"a"}, timeout=5, what="eu-central back")
    rc, out, _ = ctl(capsys, "--redis", redis.url, "audit")
    assert out.splitlines()[0].split()[2:5] == ["bob", "region", "eu-central:"]


def test_weight_and_upstream_drain(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _ = fleet
    rc, out, err = ctl(capsys, *via(gw), "weight", "b", "3")
    assert rc == 0, err
    assert '{"weight": 1.0} -> {"weight": 3.0}' in out and upstream(gw, "b")["weight"] == 3
    rc, out, err = ctl(capsys, *via(gw), "drain", "a1")
    assert rc == 0 and out.startswith("upstream a1 drained"), err
    assert upstream(gw, "a1")["drained"] and served_by(gw.url, 6) == Counter({"a2": 6})
    rc, out, err = ctl(capsys, *via(gw), "undrain", "a1")
    assert rc == 0 and not upstream(gw, "a1")["drained"], err


def test_top_once_shows_every_region_and_upstream(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _ = fleet
    served_by(gw.url, 4)
    rc, out, err = ctl(capsys, "--gateway", gw.ops_url, "top", "--once", "--interval", "0.3")
    assert rc == 0, err
    assert f"geogate top {gw.ops_url}" in out and "shared state fresh" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("a1", "a2", "b", "eu-central", "us-east", "ap-southeast", "sa-east"):
        assert name in rows, out
    assert "up" in rows["a1"].split() and "1/1 up" in rows["a1"]  # health, fleet votes (gw0)
    assert "2/2 routable" in rows["eu-central"]


def test_environment_names_the_gateway_and_token(
    fleet: tuple[Gateway, RedisServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, redis = fleet
    monkeypatch.setenv("GEOGATE_CTL_GATEWAY", gw.ops_url)
    monkeypatch.setenv("GEOGATE_CTL_TOKEN", TOKEN)
    rc, out, err = ctl(capsys, "show")
    assert rc == 0 and json.loads(out)["upstreams"][0]["id"] == "a1", err
    # An explicit --redis wins over a gateway named only in the environment.
    rc, out, err = ctl(capsys, "--redis", redis.url, "show")
    assert rc == 0 and json.loads(out)["version"] >= 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["drain", "nope"], "no region or upstream 'nope'; regions: eu-central, us-east"),
        (["weight", "eu-central", "2"], "'eu-central' is a region"),
        (["weight", "b", "-1"], "weight must be between 0 and 1000"),
        (["drain", "a1", "--who", "mallory"], "--who is for --redis"),
        (["--token", "wrong", "drain", "a1"], "missing or wrong admin token"),
        (["--token", "", "show"], "give your operator token: --token or GEOGATE_CTL_TOKEN"),
        (["--gateway", "http://127.0.0.1:1", "top", "--once"], "cannot reach the gateway"),
        (["--gateway", "127.0.0.1:9180", "show"], "is not an http(s) URL"),
        (["--gateway", "", "--redis", "redis://127.0.0.1:1", "drain", "a1"], "cannot reach Redis"),
        (["--gateway", "", "--redis", "redis://127.0.0.1:1", "top"], "a gateway's live view"),
        (["--redis", "redis://127.0.0.1:1", "show"], "--gateway URL or --redis URL, not both"),
        (["--gateway", "", "drain", "a1"], "give --gateway URL"),
    ],
)
def test_mistakes_are_one_line(
    fleet: tuple[Gateway, RedisServer],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    gw, _ = fleet
    rc, out, err = ctl(capsys, *via(gw), *args)
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert upstream(gw, "a1")["drained"] is False  # nothing changed


@pytest.mark.parametrize(
    ("count", "message"),
    [
        ("0", "argument --count: must be from 1 to 1000, got 0"),
        ("1001", "argument --count: must be from 1 to 1000, got 1001"),
        ("many", "argument --count: not a whole number: 'many'"),
    ],
)
def test_audit_count_is_checked_with_the_arguments(
    capsys: pytest.CaptureFixture[str], count: str, message: str
) -> None:
    """Not by Redis, whose error read as if Redis could not be reached."""
    rc, out, err = ctl(capsys, "--redis", "redis://127.0.0.1:1", "audit", "--count", count)
    assert rc == 2 and not out
    assert message in err and "Redis" not in err, err
