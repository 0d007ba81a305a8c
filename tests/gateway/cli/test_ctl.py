"""``geogate ctl`` against a real gateway (its ops listener) and a real redis-server, in front of
simulated backends: drains move traffic, the audit names the operator, ``top --once`` shows
every upstream, and every mistake is one line with exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.cli.ctl import _region_told, show
from gateway.cli.ctl_fleet import GatewayFleet
from gateway.cli.errors import CLIError
from gateway.cli.main import main
from gateway.cli.procs import free_port, geogate_cmd
from gateway.fleet.keys import Keys
from tests.support import (
    CHAT_BODY,
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
        f'[redis]\nurl = "{redis.url}"\ngateway_id = "gw0"\nrefresh_interval_s = 0.1\n'
        # Changes right after the test's Redis started: the wait after a start
        # (redis.restart_grace_s) has tests of its own.
        "restart_grace_s = 0\n\n"
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


def straight(redis: RedisServer) -> list[str]:
    """ctl's options for the fleet's Redis itself, whose start was moments ago here: no wait
    after it (test_a_change_straight_to_a_young_redis_waits tests the wait)."""
    return ["--redis", redis.url, "--restart-grace", "0"]


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
    # Where the clients go is the gateway's answer (its impact API), never a guess of ctl's.
    assert "next region" not in out
    assert out.splitlines()[1].startswith("impact, as routed just before the change: a1, a2")
    assert served_by(gw.url, 6) == Counter({"b": 6})  # applied by this gateway at once
    rc, out, _ = ctl(capsys, *via(gw), "audit", "--json")
    entry = json.loads(out)[0]
    assert (entry["who"], entry["what"]) == ("alice", "region eu-central")
    assert json.loads(entry["after"]) == {"a1": {"drained": True}, "a2": {"drained": True}}

    # Straight to Redis: the gateway hears it published.
    rc, out, err = ctl(capsys, *straight(redis), "undrain", "eu-central", "--who", "bob")
    assert rc == 0, err
    assert out.startswith("region eu-central undrained: a1, a2 back in rotation")
    assert len(out.splitlines()) == 1  # Redis has no traffic to tell the impact by
    eventually(lambda: regions_served(gw) == {"a"}, timeout=5, what="eu-central back")
    rc, out, _ = ctl(capsys, *straight(redis), "audit")
    assert out.splitlines()[0].split()[2:5] == ["bob", "region", "eu-central:"]

    # An entry another tool wrote, with a line break in it, prints as one row.
    r = Redis.from_url(redis.url, decode_responses=True)
    try:
        entry = {"who": "eve\nv99  mallory", "what": "region eu-central", "version": "99"}
        entry["when"] = "2026-11-28T00:00:00Z"
        r.xadd(Keys("default").audit, {**entry, "before": "{}", "after": "{}"})
    finally:
        r.close()
    rc, out, _ = ctl(capsys, *straight(redis), "audit", "--count", "1")
    assert out.splitlines() == [out.strip()] and "eve\\nv99  mallory" in out, out


def test_weight_and_upstream_drain(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _ = fleet
    rc, out, err = ctl(capsys, *via(gw), "weight", "b", "3")
    assert rc == 0, err
    assert '{"weight": 1.0} -> {"weight": 3.0}' in out and upstream(gw, "b")["weight"] == 3
    assert out.splitlines()[1].startswith("impact, as routed just before the change: b carries")
    rc, out, err = ctl(capsys, *via(gw), "drain", "a1")
    assert rc == 0 and out.startswith("upstream a1 drained"), err
    assert upstream(gw, "a1")["drained"] and served_by(gw.url, 6) == Counter({"a2": 6})
    rc, out, err = ctl(capsys, *via(gw), "undrain", "a1")
    assert rc == 0 and not upstream(gw, "a1")["drained"], err


def test_an_upstream_drained_on_its_own_stays_drained_through_its_regions_undrain(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """ctl says what routing does: undraining an upstream of a drained region leaves it out
    (the region's drain holds it), and undraining the region leaves out one drained on its own;
    each names the undrain that would bring it back."""
    gw, redis = fleet
    try:
        for target in ("a1", "eu-central"):
            rc, _, err = ctl(capsys, *via(gw), "drain", target)
            assert rc == 0, err
        rc, out, err = ctl(capsys, *via(gw), "undrain", "a1")
        assert rc == 0, err
        assert out.startswith(
            "upstream a1 undrained, but its region eu-central is drained: it takes no requests "
            "until `ctl undrain eu-central` (fleet config version "
        ), out
        assert "back in rotation" not in out
        assert upstream(gw, "a1")["drained"] and served_by(gw.url, 6) == Counter({"b": 6})

        rc, _, err = ctl(capsys, *via(gw), "drain", "a1")
        assert rc == 0, err
        rc, out, err = ctl(capsys, *via(gw), "undrain", "eu-central")
        assert rc == 0, err
        assert out.startswith(
            "region eu-central undrained: a2 back in rotation; a1 stays drained (drained on its "
            "own: ctl undrain a1) (fleet config version "
        ), out
        assert served_by(gw.url, 6) == Counter({"a2": 6})

        # Straight to Redis: the same words (drained_regions is in the document ctl reads).
        rc, _, err = ctl(capsys, *straight(redis), "drain", "eu-central", "--who", "bob")
        assert rc == 0, err
        rc, out, err = ctl(capsys, *straight(redis), "undrain", "a1", "--who", "bob")
        assert rc == 0, err
        assert out.startswith("upstream a1 undrained, but its region eu-central is drained"), out
    finally:  # the module's gateway serves the tests after this one
        for target in ("eu-central", "a1"):
            ctl(capsys, *straight(redis), "undrain", target, "--who", "bob")
        eventually(lambda: not any(upstream(gw, u)["drained"] for u in ("a1", "a2")), timeout=5)


def test_straight_to_redis_a_drain_of_a_models_last_upstream_wants_yes(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """Through a gateway the impact query refuses it; straight to Redis nobody said a word,
    and every request for the model got a 503. The fleet's document says it alone now."""
    gw, redis = fleet
    try:
        rc, _, err = ctl(capsys, *straight(redis), "drain", "eu-central", "--who", "bob")
        assert rc == 0, err
        rc, out, err = ctl(capsys, *straight(redis), "drain", "b", "--who", "bob")
        assert rc == 2 and not out and len(err.strip().splitlines()) == 1, (out, err)
        assert (
            "not applied: by the fleet's document (no gateway said), it leaves NO upstream "
            "for model m: their requests get 503; pass --yes to drain b anyway"
        ) in err, err
        assert not upstream(gw, "b")["drained"]
        rc, out, err = ctl(capsys, *straight(redis), "drain", "b", "--who", "bob", "--yes")
        assert rc == 0 and out.startswith("upstream b drained"), (out, err)
        assert "impact: by the fleet's document (no gateway said), it leaves NO upstream" in out
        eventually(lambda: upstream(gw, "b")["drained"], timeout=5)
    finally:  # the module's gateway serves the tests after this one
        for target in ("eu-central", "b"):
            ctl(capsys, *straight(redis), "undrain", target, "--who", "bob")
        eventually(lambda: not any(upstream(gw, u)["drained"] for u in ("a1", "a2", "b")))


def test_a_region_drained_the_old_way_is_undrained_upstream_by_upstream(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every upstream drained and the region not (as a drain of the release before
    drained_regions left it): nothing says which were drained on purpose, so `undrain REGION`
    is refused in one line naming the undrains that would do, and nothing changes."""
    gw, redis = fleet
    said = (
        "region eu-central is not drained as a region: its upstreams a1, a2 are drained on "
        "their own (a region drained before this version included); undrain each: "
        "ctl undrain a1, ctl undrain a2"
    )
    try:
        for target in ("a1", "a2"):
            rc, _, err = ctl(capsys, *straight(redis), "drain", target, "--who", "bob")
            assert rc == 0, err
        eventually(lambda: served_by(gw.url, 6) == Counter({"b": 6}), timeout=5)
        for how in (via(gw), straight(redis)):
            rc, out, err = ctl(capsys, *how, "undrain", "eu-central")
            assert rc == 2 and not out and len(err.strip().splitlines()) == 1, (out, err)
            assert said in err, err
        assert upstream(gw, "a1")["drained"] and upstream(gw, "a2")["drained"]
    finally:  # the module's gateway serves the tests after this one
        for target in ("a1", "a2"):
            ctl(capsys, *straight(redis), "undrain", target, "--who", "bob")
        eventually(lambda: not any(upstream(gw, u)["drained"] for u in ("a1", "a2")), timeout=5)


def test_a_regions_undrain_names_each_upstream_left_drained() -> None:
    by = "fleet config version 7, audited as bob"
    after = {"a1": {"drained": True}, "a2": {"drained": True}, "a3": {"drained": False}}
    assert _region_told("eu", False, after, by) == (
        "region eu undrained: a3 back in rotation; a1, a2 stay drained (drained on their own: "
        f"ctl undrain a1, ctl undrain a2) ({by})"
    )
    after = {"a1": {"drained": True}}
    assert _region_told("eu", False, after, by) == (
        "region eu undrained: no upstream back in rotation; a1 stays drained (drained on its "
        f"own: ctl undrain a1) ({by})"
    )


def test_the_public_listener_given_as_gateway_is_named(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _ = fleet
    rc, out, err = ctl(capsys, "--gateway", gw.url, "top", "--once", "--interval", "0.1")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "is --gateway the public listener? ctl talks to the ops listener, ops.port" in err
    # The admin API's own paths: the public listener said "/admin/config is not an endpoint
    # of the admin API, which has GET /admin/config", and ctl gave no hint.
    rc, out, err = ctl(capsys, *via(gw), "--gateway", gw.url, "show")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "/admin/config: the admin API is on the ops listener (ops.port), not this" in err
    assert "is --gateway the public listener?" in err


def test_https_to_the_plain_ops_listener_says_tls_not_permission(
    fleet: tuple[Gateway, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _ = fleet  # OpenSSL's error code 1 was read as errno EPERM: "operation not permitted"
    https = gw.ops_url.replace("http://", "https://")
    rc, out, err = ctl(capsys, *via(gw), "--gateway", https, "show")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "cannot reach the gateway" in err and "(is it http://, not https://?)" in err
    assert "not permitted" not in err


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
    assert "time to first byte of its streaming requests" in out  # why a p50 is blank


def test_top_into_a_file_writes_a_frame_per_interval(
    fleet: tuple[Gateway, RedisServer], tmp_path: Path
) -> None:
    # rich's Live draws on a terminal only: `ctl top > file` (or `| tee`) wrote nothing until
    # it was stopped. Piped, each interval's frame is appended.
    gw, _ = fleet
    out = tmp_path / "top.txt"
    with out.open("wb") as f:
        p = subprocess.Popen(
            geogate_cmd("ctl", *via(gw), "top", "--interval", "0.2"),
            stdout=f,
            stderr=f,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps every thread
            # As from a terminal: a suite started in the background (`... &`) has SIGINT
            # ignored, which Python keeps. A test that ran before this one in the same pytest
            # process (the model server's in-process CLI) used to take it back by chance.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            eventually(lambda: out.read_text().count("geogate top ") >= 3, timeout=15)
        finally:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # say where it was
                p.send_signal(signal.SIGABRT)
                p.wait(timeout=10)
                pytest.fail(f"ctl top outlived Ctrl-C by 10 s:\n{out.read_text()[-4000:]}")
    assert p.returncode == 128 + signal.SIGINT
    text = out.read_text()
    assert "a1" in text and "Traceback" not in text, text[-2000:]


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
    rc, out, err = ctl(capsys, *straight(redis), "show")
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
        # a token read from a file ends in a line break: it said "not a valid URL"
        (["--token", TOKEN + "\n", "show"], "--token has a space, line break or non-ASCII"),
        (["--ops-token", "é" * 20, "show"], "--ops-token has a space, line break or non-ASCII"),
        (["--gateway", "http://127.0.0.1:1", "top", "--once"], "cannot reach the gateway"),
        (["--gateway", "127.0.0.1:9180", "show"], "not a valid URL: use http:// or https://"),
        (["--gateway", "http://127.0.0.1:99999", "show"], "port must be a number from 1 to"),
        (["--gateway", "http://127.0.0.1:x", "show"], "port must be a number from 1 to 65535"),
        (["--gateway", "http://:9180", "show"], "not a valid URL: needs a host"),
        (["--gateway", "http://127.0.0.1:9180?x=1", "show"], "it has a query or fragment"),
        (["--gateway", "http://[::1:9180", "show"], "not a valid URL: not a valid host"),
        (["--gateway", "http://a b:9180", "show"], "it has a space or control character"),
        (["--gateway", "", "--redis", "redis://127.0.0.1:1", "drain", "a1"], "cannot reach Redis"),
        (["--gateway", "", "--redis", "redis://127.0.0.1:1", "top"], "a gateway's live view"),
        (["--redis", "redis://127.0.0.1:1", "show"], "--gateway URL or --redis URL, not both"),
        (["--gateway", "", "drain", "a1"], "give --gateway URL"),
        (["--gateway", "", "--redis", "redis://127.0.0.1:1", "restore"], "restore goes through"),
        (["--restart-grace", "-1", "show"], "--restart-grace: must be 0 to 604800 seconds (a "),
        (["--restart-grace", "nan", "show"], "--restart-grace: must be 0 to 604800 seconds"),
        # more than the config takes: it was blamed on Redis's document, which it is copied into
        (["--restart-grace", "1e20", "show"], "must be 0 to 604800 seconds (a week), got 1e20"),
        (["--restart-grace", "soon", "show"], "not a number of seconds: 'soon'"),
        # The audit's name: one spanning lines printed as a row of another operator's
        (
            ["--gateway", "", "--redis", "redis://127.0.0.1:1", "drain", "a1", "--who", "a\nb"],
            "--who: operator name 'a\\nb': use 1-64 letters",
        ),
        (
            ["--gateway", "", "--redis", "redis://127.0.0.1:1", "drain", "a1", "--who", ""],
            "--who: operator name ''",
        ),
        (
            ["--gateway", "", "--redis", "redis://127.0.0.1:1", "drain", "a1", "--who", "x" * 65],
            "use 1-64 letters, digits and _.@-",
        ),
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


def test_set_takes_drain_or_undrain_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    """Both used to be taken, as whichever came last."""
    rc, out, err = ctl(
        capsys, "--redis", "redis://127.0.0.1:1", "set", "a1", "--drain", "--undrain"
    )
    assert rc == 2 and not out
    assert "argument --undrain: not allowed with argument --drain" in err


def test_a_deployment_is_checked_as_the_configs_before_redis_is_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ "a b" was looked for in Redis, and said to be no fleet: start a gateway."""
    rc, out, err = ctl(capsys, "--redis", "redis://127.0.0.1:1", "--deployment", "a b", "show")
    assert rc == 2 and not out
    assert err == (
        "geogate: --deployment: deployment 'a b': use letters, digits and _.- (it is part of "
        "the fleet's keys in Redis)\n"
    )


def test_the_nowhere_of_ctl_is_the_impact_apis() -> None:
    from gateway.cli.ctl_fleet import NOWHERE
    from gateway.http.dashboard.impact import REFUSED

    assert NOWHERE == REFUSED


@pytest.fixture(scope="module")
def resident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Clients here are in Germany, and a residency rule keeps EU clients in eu-central (e1):
    us-east (u1) may not serve them, so draining eu-central leaves them with no upstream."""
    tmp = tmp_path_factory.mktemp("ctl-residency")
    sims = [start_sim(tmp, "e1", "eu-central", ["m"]), start_sim(tmp, "u1", "us-east", ["m"])]
    ups = [UpstreamSpec(s.name, s.region, s.url, ["m"]) for s in sims]
    extra = (
        f'[admin]\ntokens = {{alice = "{TOKEN}"}}\n\n'
        '[geoip.default]\ncountry = "DE"\ncontinent = "EU"\n\n'
        '[[residency]]\nname = "eu-only"\ncontinents = ["EU"]\nregions = ["eu-central"]\n\n'
    )
    gw = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=extra))
    try:
        yield gw
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()


def impact_total(gw: Gateway) -> int:
    r = httpx.get(
        f"{gw.ops_url}/dashboard/api/impact?region=eu-central&drained=true",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    return int(r.json()["total"])


def test_a_drain_that_leaves_clients_nowhere_needs_yes(
    resident: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = resident
    served_by(gw.url, 4)
    eventually(lambda: impact_total(gw) >= 4, what="the dashboard's window to count them")
    for args in (["drain", "eu-central"], ["drain", "e1"], ["set", "e1", "--drain"]):
        rc, out, err = ctl(capsys, *via(gw), *args)
        assert rc == 2 and not out, (args, out)
        assert len(err.strip().splitlines()) == 1, err
        assert "would find NO upstream and get 503" in err, err
        assert "pass --yes to" in err and "next region" not in err, err
        assert upstream(gw, "e1")["drained"] is False  # nothing changed

    rc, out, err = ctl(capsys, *via(gw), "drain", "eu-central", "--yes")
    assert rc == 0, err
    assert out.startswith("region eu-central drained: e1 takes no new requests")
    assert "would find NO upstream and get 503" in out.splitlines()[1]
    assert upstream(gw, "e1")["drained"] is True
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY)
    assert r.status_code == 503  # as the gateway said
    rc, out, err = ctl(capsys, *via(gw), "undrain", "eu-central")
    assert rc == 0 and upstream(gw, "e1")["drained"] is False, err
    assert "to e1 (100 %)" in out, out  # from nowhere, back


def test_a_drain_that_strands_a_residency_rule_needs_yes_with_no_traffic_seen(
    resident: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # With two workers, the one answering had seen none of the EU requests: the drain passed.
    gw = resident
    rc, out, err = ctl(capsys, *via(gw), "drain", "eu-central")
    assert rc == 2 and not out, out
    assert "leaves NO upstream for model m for clients under residency rule eu-only" in err
    assert upstream(gw, "e1")["drained"] is False


def test_without_the_impact_api_the_change_is_made_and_claims_nothing(
    fleet: tuple[Gateway, RedisServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway without the dashboard (an older one), or one that does not answer the
    impact question: the change is made, and ctl says nothing of where the clients go."""
    gw, _ = fleet

    monkeypatch.setattr(GatewayFleet, "_json", _without_impact(GatewayFleet._json))
    rc, out, err = ctl(capsys, *via(gw), "drain", "a1")
    assert rc == 0 and upstream(gw, "a1")["drained"] is True, err
    assert len(out.splitlines()) == 1 and out.startswith("upstream a1 drained: no new"), out
    rc, out, err = ctl(capsys, *via(gw), "undrain", "a1")
    assert rc == 0 and upstream(gw, "a1")["drained"] is False, err


def _without_impact(real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The gateway's answer to the impact API, as a gateway without the dashboard gives it."""

    async def json_(self: GatewayFleet, method: str, path: str, **kw: Any) -> Any:
        if path.startswith("/dashboard/api/impact"):
            raise CLIError("the gateway refused: /dashboard/api/impact is not an endpoint")
        return await real(self, method, path, **kw)

    return json_


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["audit", "--json"], 141),  # 128 + SIGPIPE, as a shell reports for `... | head`
        (["show"], 141),
        (["top", "--once", "--interval", "0.1"], 141),  # rich's own would end it with 1
        (["top", "--interval", "0.1"], 141),  # piped, a frame each interval: the first fails
    ],
)
def test_a_reader_that_stops_early_ends_it_quietly(
    fleet: tuple[Gateway, RedisServer], args: list[str], status: int
) -> None:
    """``geogate ctl audit | head -2``: the reader closes the pipe, the next write fails; that
    is the end of the output, not an error with a traceback. Here the reader is gone before
    the first write, so every write fails."""
    gw, _ = fleet
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run(
            geogate_cmd("ctl", *via(gw), *args), stdout=write, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write)
    assert (p.returncode, p.stderr.decode()) == (status, ""), p


# --- straight to a Redis that holds what a gateway would refuse, or lost data ----------------

UPSTREAM: dict[str, Any] = {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}
DOC = {"regions": [{"id": "eu", "latitude": 50, "longitude": 8}], "upstreams": [UPSTREAM]}
CONFIG_KEY = "{geogate:default}:config"


@pytest.fixture
def bare_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Redis]]:
    server = start_redis(tmp_path)
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def test_a_document_a_gateway_refuses_is_one_line_not_a_traceback(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    server, r = bare_redis
    bad = {**DOC, "upstreams": [{**UPSTREAM, "weight": -5}]}
    for doc, said in [
        (
            json.dumps(bad),
            "geogate: invalid fleet config in Redis (deployment 'default', version 4): "
            "upstreams.0.weight: Input should be greater than or equal to 0; the gateways "
            "refuse it too and route on the one before",
        ),
        (
            "not json",
            "geogate: invalid fleet config in Redis (version 4): the document is not JSON",
        ),
    ]:
        r.hset(CONFIG_KEY, mapping={"doc": doc, "version": 4})
        for args in (["drain", "a"], ["show"], ["weight", "a", "2"]):
            rc, out, err = ctl(capsys, *straight(server), *args)
            assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
            assert err.startswith(said), err
    assert r.hget(CONFIG_KEY, "version") == "4"  # nothing written


def test_a_change_while_redis_lost_data_is_refused_until_the_gateways_put_it_back(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis holds version 1 (restored from an older snapshot), a gateway routes on version 3
    and says so in its observation (fresh for its TTL): a change now would be made on the
    older copy."""
    server, r = bare_redis
    r.hset(CONFIG_KEY, mapping={"doc": json.dumps(DOC), "version": 1})
    seen = {"gateway": "gw0", "upstreams": {}, "config_version": 3}
    r.set("{geogate:default}:obs:gw0/1", json.dumps(seen), px=5000)
    r.zadd("{geogate:default}:observers", {"gw0/1": 0})
    rc, out, err = ctl(capsys, *straight(server), "weight", "a", "2", "--who", "bob")
    assert rc == 2 and not out
    assert err.strip() == (
        "geogate: Redis lost data: gateways hold version 3 (gw0), Redis 1; wait for them to "
        "put it back (within a refresh, redis.refresh_interval_s), then retry"
    )
    assert r.hget(CONFIG_KEY, "version") == "1"
    r.delete("{geogate:default}:obs:gw0/1")  # that gateway's observation expired
    rc, out, err = ctl(capsys, *straight(server), "weight", "a", "2", "--who", "bob")
    assert rc == 0 and "fleet config version 2, audited as bob" in out, err


def test_an_empty_audit_says_why_on_stderr(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    # After Redis lost its data the audit printed nothing with status 0: no trail, no word.
    server, r = bare_redis
    r.hset(CONFIG_KEY, mapping={"doc": json.dumps(DOC), "version": 1})
    rc, out, err = ctl(capsys, *straight(server), "audit")
    assert rc == 0 and out == ""
    assert "no operator changes recorded" in err and "appendonly" in err
    # A deployment Redis holds nothing for (a typo): that, not an empty trail.
    rc, out, err = ctl(capsys, *straight(server), "--deployment", "defualt", "audit")
    assert rc == 2 and not out and "no fleet config in Redis for deployment 'defualt'" in err


def test_an_empty_redis_says_the_gateways_put_theirs_back(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    # Right after a Redis restart it told the operator to start a gateway, with gateways
    # running that put their document back seconds later.
    server, _ = bare_redis
    rc, out, err = ctl(capsys, *straight(server), "show")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "a running gateway puts its own back within seconds of a Redis restart" in err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://127.0.0.1:1/0?db=x", "Invalid value for 'db' in connection URL"),
        ("redis://127.0.0.1:1?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis://127.0.0.1:1?ssl_cert_reqs=none", "?ssl_cert_reqs= is for rediss://"),
    ],
)
def test_a_redis_url_redis_py_refuses_is_one_line(
    capsys: pytest.CaptureFixture[str], url: str, said: str
) -> None:
    rc, out, err = ctl(capsys, "--redis", url, "show")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"geogate: --redis {url}: {said}"), err


def test_show_says_when_the_gateways_copy_is_a_stale_snapshot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # With Redis away, `ctl show` through a gateway printed its last snapshot as if current.
    class Stale:
        stale_since = 1_700_000_000.0

        async def config(self) -> tuple[dict[str, Any], int]:
            return {"upstreams": []}, 15

    asyncio.run(show(Stale(), argparse.Namespace()))  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert json.loads(out) == {"version": 15, "upstreams": []}
    assert (
        err.startswith("note: this is the gateway's last snapshot")
        and "2023-11-14 22:13:20 UTC" in err
    )
    Stale.stale_since = 0.0  # fresh (None, or no such attribute: Redis): nothing said
    asyncio.run(show(Stale(), argparse.Namespace()))  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""


def test_show_says_a_gateway_never_in_sync_shows_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway that has not reached Redis since it started routes on its own file (version
    0): `ctl show` called that "the gateway's last snapshot", the fleet's as last seen, drains
    and weights included, which it is not."""
    ups = [UpstreamSpec("a1", "eu-central", f"http://127.0.0.1:{free_port()}", ["m"])]
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    extra = f'[redis]\nurl = "{nowhere}"\n\n[admin]\ntokens = {{alice = "{TOKEN}"}}\n'
    gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups, extra=extra))
    try:
        rc, out, err = ctl(capsys, *via(gw), "show")
    finally:
        gw.stop()
    assert rc == 0 and json.loads(out)["version"] == 0, err
    assert err.startswith("note: this is the gateway's own config file, not the fleet's"), err
    assert "last snapshot" not in err and "drains and weights are not in it" in err, err


def test_a_change_straight_to_a_young_redis_waits(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis started moments ago (empty, then seeded by a fresh gateway): gateways cut off by
    the restart may hold the fleet's newer document, so a change waits the fleet's
    redis.restart_grace_s (by default 5 + 0.5 + 1 s), exit status 2, nothing written; with
    --restart-grace 0 (a fleet whose Redis never restarts empty) it is made."""
    server, r = bare_redis
    r.hset(CONFIG_KEY, mapping={"doc": json.dumps(DOC), "version": 1, "changed_at": "0"})
    rc, out, err = ctl(capsys, "--redis", server.url, "weight", "a", "2", "--who", "bob")
    assert rc == 2 and not out
    said = re.fullmatch(
        r"geogate: Redis started (\d+) s ago: gateways cut off by its restart may hold newer "
        r"changes, which they put back within 6\.5 s \(redis\.restart_grace_s\); retry in (\d+) s",
        err.strip(),
    )
    assert said is not None, err
    up, wait = (int(n) for n in said.groups())
    assert up < 6 and wait == math.ceil(6.5 - up), err
    assert r.hget(CONFIG_KEY, "version") == "1" and r.xlen("{geogate:default}:audit") == 0
    rc, out, err = ctl(capsys, *straight(server), "weight", "a", "2", "--who", "bob")
    assert rc == 0 and "fleet config version 2, audited as bob" in out, err
    # Not for a gateway: it knows its own redis.restart_grace_s.
    rc, out, err = ctl(capsys, "--gateway", "http://127.0.0.1:1", "--restart-grace", "0", "show")
    assert rc == 2 and err.strip() == (
        "geogate: --restart-grace is for --redis; a gateway knows its own"
    )


def test_a_change_that_changes_nothing_writes_nothing(
    bare_redis: tuple[RedisServer, Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    # A weight an upstream has, a drain of a drained one: a new version and an audit entry
    # "{"weight": 1.0} -> {"weight": 1.0}" each time, which idempotent scripts filled the
    # trail with.
    server, r = bare_redis
    r.hset(CONFIG_KEY, mapping={"doc": json.dumps(DOC), "version": 1})
    rc, out, err = ctl(capsys, *straight(server), "weight", "a", "2", "--who", "bob")
    assert rc == 0 and "fleet config version 2, audited as bob" in out, err
    for args in (["weight", "a", "2"], ["set", "a", "--weight", "2"]):
        rc, out, err = ctl(capsys, *straight(server), *args, "--who", "bob")
        assert rc == 0, err
        assert out.strip() == (
            'upstream a: already {"weight": 2.0}; nothing changed (fleet config version 2 '
            "unchanged, nothing audited)"
        )
    rc, out, err = ctl(capsys, *straight(server), "drain", "a", "--who", "bob", "--yes")
    assert rc == 0, err
    rc, out, err = ctl(capsys, *straight(server), "drain", "a", "--who", "bob", "--yes")
    assert rc == 0 and "upstream a: already drained; nothing changed (fleet config version 3" in out
    assert r.hget(CONFIG_KEY, "version") == "3"
    assert r.xlen("{geogate:default}:audit") == 2
    # Undraining a region that is not drained: the same (it was a refusal, exit 2).
    rc, out, err = ctl(capsys, *straight(server), "undrain", "a", "--who", "bob")
    assert rc == 0, err
    rc, out, err = ctl(capsys, *straight(server), "undrain", "eu", "--who", "bob", "--yes")
    assert rc == 0 and "region eu: already not drained; nothing changed" in out, err
    assert r.hget(CONFIG_KEY, "version") == "4" and r.xlen("{geogate:default}:audit") == 3
