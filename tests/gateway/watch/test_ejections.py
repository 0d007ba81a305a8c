"""Ejections for failed requests: told once each way, the healthy gauge in step (in process),
and end to end, a backend whose /health answers while its completions fail stays out for its
ejection time, unless a completion probe finds it working again."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import Config
from gateway.http.ops import ops_app
from gateway.metrics import ABORT_CAUSES, ATTEMPT_OUTCOMES
from gateway.runtime import Runtime, build_runtime
from gateway.watch import ejections
from tests.support import (
    CHAT_BODY,
    Gateway,
    Sim,
    UpstreamSpec,
    eventually,
    gateway_toml,
    pool_config,
    start_gateway,
    start_sim,
)

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [
            {"id": u, "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}
            for u in ("a", "b")
        ],
        "outlier": {"consecutive_failures": 3, "base_ejection_s": 30, "max_ejected_share": 1},
    }
)


def _gauge(rt: Runtime, uid: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "geogate_upstream_healthy", {"upstream": uid, "region": "eu"}
    )


def test_ejection_and_return_are_logged_once_and_the_gauge_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="geogate.health")
    rt = build_runtime(CFG)
    ejections.set_gauge(rt, "a", "eu", 0.0)
    assert _gauge(rt, "a") == 1
    for _ in range(3):
        ejections.record_result(rt, "a", "eu", False, 1.0)
    assert _gauge(rt, "a") == 0  # at once, not at the next probe
    ejections.record_result(rt, "a", "eu", False, 2.0)  # already out: no second line
    assert not ejections.check_return(rt, "a", "eu", 30.9)
    assert ejections.check_return(rt, "a", "eu", 31.0)
    assert not ejections.check_return(rt, "a", "eu", 32.0)  # told once
    assert _gauge(rt, "a") == 1
    for _ in range(3):
        ejections.record_result(rt, "a", "eu", False, 40.0)
    ejections.end_by_probe(rt, "a", "eu", 41.0)
    ejections.end_by_probe(rt, "a", "eu", 42.0)  # nothing left to end
    lines = [r.getMessage() for r in caplog.records if r.name == "geogate.health"]
    assert lines == [
        "upstream a (eu) ejected for 30 s after 3 consecutive failed requests",
        "upstream a (eu) back in rotation: ejection time over",
        "upstream a (eu) ejected for 60 s after 3 consecutive failed requests",
        "upstream a (eu) back in rotation: completion probe succeeded",
    ]
    assert _gauge(rt, "a") == 1


def test_a_return_nobody_told_is_told_before_the_next_ejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The ejection ran out between two probes and requests failed again at once.
    caplog.set_level(logging.INFO, logger="geogate.health")
    rt = build_runtime(CFG)
    for now in (1.0, 1.0, 1.0, 31.5, 31.5, 31.5):
        ejections.record_result(rt, "a", "eu", False, now)
    lines = [r.getMessage() for r in caplog.records if r.name == "geogate.health"]
    assert lines == [
        "upstream a (eu) ejected for 30 s after 3 consecutive failed requests",
        "upstream a (eu) back in rotation: ejection time over",
        "upstream a (eu) ejected for 60 s after 3 consecutive failed requests",
    ]


def test_the_gauge_shows_the_fleets_verdict_too() -> None:
    rt = build_runtime(CFG)
    rt.store.fleet_down = frozenset({"b"})
    ejections.set_gauge(rt, "b", "eu", 0.0)
    assert _gauge(rt, "b") == 0


def test_ejections_are_counted_and_healthy_upstreams_per_model_follow() -> None:
    """What the alert rules read (deploy/prometheus): ejections per upstream, and routable
    upstreams per model, 0 when nobody can serve it."""
    rt = build_runtime(CFG)
    sample = rt.metrics.registry.get_sample_value
    ejections.set_gauge(rt, "a", "eu", 0.0)
    assert sample("geogate_model_healthy_upstreams", {"model": "m"}) == 2
    for uid in ("a", "b"):
        for _ in range(3):
            ejections.record_result(rt, uid, "eu", False, 1.0)
    assert sample("geogate_upstream_ejections_total", {"upstream": "a", "region": "eu"}) == 1
    assert sample("geogate_model_healthy_upstreams", {"model": "m"}) == 0


# --- series of upstreams and models that are gone ----------------------------------------

# A DNS-discovered pool ("pool@<addr>:<port>" members) serving "m", and a fixed upstream
# serving "n".
POOL = pool_config({"id": "s", "region": "eu", "url": "http://127.0.0.1:1", "models": ["n"]})
ONE, TWO = "pool@10.0.0.1:8000", "pool@10.0.0.2:8000"
PER_UPSTREAM = ("geogate_upstream_healthy", "geogate_upstream_rtt_ms", "geogate_upstream_in_flight")


async def _scrape(rt: Runtime) -> dict[str, dict[str, str]]:
    """GET /metrics of the ops app: each gauge's sample lines, name -> labels -> value."""
    transport = httpx.ASGITransport(app=ops_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        text = (await c.get("/metrics")).text
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("#") and "{" in line:
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("} ", 1)
            out.setdefault(name, {})[labels] = value
    return out


def _probed(rt: Runtime) -> None:
    """What a probe round of every current upstream leaves (watch.prober.probe_once)."""
    for u in rt.store.upstreams():
        rt.store.record_probe(u.id, True, 5.0, None)
        ejections.set_gauge(rt, u.id, u.region, 0.0)
        rt.metrics.rtt.labels(u.id, u.region).set(5.0)


async def test_a_member_that_left_has_no_gauge_series_left() -> None:
    """Its healthy series would stay at its last value (an "upstream down" alert that never
    resolves), and pod IP churn would grow the label sets without bound."""
    rt = build_runtime(POOL)
    rt.store.set_members("pool", (("10.0.0.1", 8000), ("10.0.0.2", 8000)))
    _probed(rt)
    scraped = await _scrape(rt)
    for name in PER_UPSTREAM:
        assert set(scraped[name]) == {f'region="eu",upstream="{uid}"' for uid in (ONE, TWO, "s")}, (
            name
        )
    rt.store.set_members("pool", (("10.0.0.2", 8000),))
    # A probe of it that was out when it left comes back late and sets its gauge again.
    ejections.set_gauge(rt, ONE, "eu", 0.0)
    scraped = await _scrape(rt)
    for name in PER_UPSTREAM:
        assert set(scraped[name]) == {f'region="eu",upstream="{uid}"' for uid in (TWO, "s")}, name


async def test_a_removed_upstream_keeps_its_in_flight_series_until_its_requests_end() -> None:
    # Its series went at once while 17 of its requests still ran: the per-upstream sum read
    # 33 where geogate_requests_in_flight read 50.
    rt = build_runtime(POOL)
    rt.store.set_members("pool", (("10.0.0.1", 8000), ("10.0.0.2", 8000)))
    _probed(rt)
    for _ in range(2):
        rt.store.acquire(ONE)
    await _scrape(rt)
    rt.store.set_members("pool", (("10.0.0.2", 8000),))
    flight = "geogate_upstream_in_flight"
    assert (await _scrape(rt))[flight][f'region="eu",upstream="{ONE}"'] == "2.0"
    rt.store.release(ONE)
    assert (await _scrape(rt))[flight][f'region="eu",upstream="{ONE}"'] == "1.0"
    rt.store.release(ONE)
    assert f'region="eu",upstream="{ONE}"' not in (await _scrape(rt))[flight]
    assert (await _scrape(rt))["geogate_upstream_healthy"].keys() == {
        f'region="eu",upstream="{uid}"' for uid in (TWO, "s")
    }


async def test_an_upstream_moved_to_another_region_is_counted_in_flight_once() -> None:
    rt = build_runtime(POOL)
    _probed(rt)
    rt.store.acquire("s")
    await _scrape(rt)
    doc = POOL.model_dump(mode="json")
    doc["regions"].append({"id": "us", "latitude": 40, "longitude": -75})
    doc["upstreams"] = [u | {"region": "us"} if u["id"] == "s" else u for u in doc["upstreams"]]
    rt.store.replace_config(Config.model_validate(doc))
    flight = (await _scrape(rt))["geogate_upstream_in_flight"]
    assert flight['region="us",upstream="s"'] == "1.0"
    assert 'region="eu",upstream="s"' not in flight  # not its count a second time
    rt.store.release("s")


async def test_a_model_whose_upstreams_all_went_reads_0_until_it_leaves_the_config() -> None:
    rt = build_runtime(POOL)
    rt.store.set_members("pool", (("10.0.0.1", 8000), ("10.0.0.2", 8000)))
    _probed(rt)
    assert (await _scrape(rt))["geogate_model_healthy_upstreams"] == {
        'model="m"': "2.0",
        'model="n"': "1.0",
    }
    rt.store.set_members("pool", ())  # the name resolves to nothing: no probe sets it again
    assert (await _scrape(rt))["geogate_model_healthy_upstreams"] == {
        'model="m"': "0.0",
        'model="n"': "1.0",
    }
    # Nor when the next probe (of "s") recounts the models.
    ejections.set_gauge(rt, "s", "eu", 1.0)
    assert (
        rt.metrics.registry.get_sample_value("geogate_model_healthy_upstreams", {"model": "m"}) == 0
    )
    # Once no upstream in the config declares "m", there is nothing to alert on: it goes.
    rt.store.replace_config(POOL.model_copy(update={"upstreams": POOL.upstreams[1:]}))
    assert (await _scrape(rt))["geogate_model_healthy_upstreams"] == {'model="n"': "1.0"}


def test_a_model_whose_only_upstream_is_drained_has_none_routable() -> None:
    """Every request for it gets a 503 (the router skips drained upstreams), so the count
    that GeogateNoHealthyUpstream reads is 0; the upstream's own gauge stays 1 (healthy, and
    a drained region is not down: GeogateRegionDown stays quiet)."""
    cfg = CFG.model_copy(
        update={
            "upstreams": (
                CFG.upstreams[0],
                CFG.upstreams[1].model_copy(update={"models": ("n",), "drained": True}),
            )
        }
    )
    rt = build_runtime(cfg)
    sample = rt.metrics.registry.get_sample_value
    ejections.set_gauge(rt, "b", "eu", 0.0)
    assert sample("geogate_model_healthy_upstreams", {"model": "n"}) == 0
    assert sample("geogate_model_healthy_upstreams", {"model": "m"}) == 1
    assert _gauge(rt, "b") == 1


async def test_counters_exist_from_0_for_each_upstream_and_go_with_it() -> None:
    """An increase() misses a counter's first event when its series appears at 1: each
    current upstream's ejections and bounded attempt outcomes, and each region's stream cuts,
    are there at 0 from the first scrape. A DNS member that left takes its counters with it
    (labelled by member, as its gauges are): churn does not pile up series."""
    rt = build_runtime(POOL)
    rt.store.set_members("pool", (("10.0.0.1", 8000), ("10.0.0.2", 8000)))
    rt.metrics.attempts.count(ONE, "ok")
    scraped = await _scrape(rt)
    ups = (ONE, TWO, "s")
    assert scraped["geogate_upstream_ejections_total"] == {
        f'region="eu",upstream="{uid}"': "0.0" for uid in ups
    }
    attempts = scraped["geogate_upstream_attempts_total"]
    assert attempts == {
        f'outcome="{o}",upstream="{uid}"': "1.0" if (uid, o) == (ONE, "ok") else "0.0"
        for uid in ups
        for o in ATTEMPT_OUTCOMES
    }
    assert scraped["geogate_stream_aborted_total"] == {
        f'cause="{c}",region="eu",stream="{s}"': "0.0"
        for c in ABORT_CAUSES
        for s in ("true", "false")
    }
    for _ in range(POOL.outlier.consecutive_failures):  # ONE is ejected, then leaves
        ejections.record_result(rt, ONE, "eu", False, 1.0)
    assert (await _scrape(rt))["geogate_upstream_ejections_total"][
        f'region="eu",upstream="{ONE}"'
    ] == "1.0"
    rt.store.set_members("pool", (("10.0.0.2", 8000),))
    scraped = await _scrape(rt)
    for name in ("geogate_upstream_ejections_total", "geogate_upstream_attempts_total"):
        assert not [labels for labels in scraped[name] if ONE in labels], name
        assert [labels for labels in scraped[name] if TWO in labels], name


# --- end to end ---------------------------------------------------------------------------


def _served_by(c: httpx.Client, gw: Gateway) -> tuple[int, str]:
    r = c.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY)
    return r.status_code, r.headers["geogate-route"].split("upstream=")[1].split(";")[0]


def _gauge_text(gw: Gateway, uid: str) -> str:
    text: str = urllib.request.urlopen(f"{gw.ops_url}/metrics", timeout=5).read().decode()
    prefix = f'geogate_upstream_healthy{{region="eu-central",upstream="{uid}"}} '
    return next(line for line in text.splitlines() if line.startswith(prefix)).split()[-1]


def _eject(c: httpx.Client, gw: Gateway) -> float:
    """Three failed requests to "bad": it is ejected. Returns when."""
    for _ in range(3):
        assert _served_by(c, gw) == (500, "bad")
    return time.monotonic()


def _stays_out(c: httpx.Client, gw: Gateway, until: float) -> int:
    """Requests until ``until``: each must go to "good". Returns how many were sent."""
    n = 0
    while time.monotonic() < until:
        assert _served_by(c, gw) == (200, "good"), f"bad was back after {n} requests"
        n += 1
        time.sleep(0.05)  # pacing, not waiting for anything: probes run every 0.2 s
    return n


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Sim, Sim, list[UpstreamSpec]]]:
    # /health of "bad" answers 200 while every completion fails (a GPU out of memory).
    bad = start_sim(tmp_path, "bad", "eu-central", ["m"], "--error-rate", "1")
    good = start_sim(tmp_path, "good", "us-east", ["m"])
    ups = [
        UpstreamSpec("bad", "eu-central", bad.url, ["m"]),
        UpstreamSpec("good", "us-east", good.url, ["m"]),
    ]
    try:
        yield tmp_path, bad, good, ups
    finally:
        bad.proc.kill()
        good.proc.kill()


def test_failed_completions_eject_for_the_whole_time_despite_good_health(
    pair: tuple[Path, Sim, Sim, list[UpstreamSpec]],
) -> None:
    tmp, _, _, ups = pair
    outlier = "[outlier]\nconsecutive_failures = 3\nbase_ejection_s = 5\n"
    gw = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=outlier))
    try:
        with httpx.Client(timeout=10) as c:
            at = _eject(c, gw)
            assert _gauge_text(gw, "bad") == "0.0"
            # ~17 good /health probes of "bad" meanwhile; the last 1.5 s of the ejection are
            # left out: room for a request a loaded machine answers slowly.
            n = _stays_out(c, gw, at + 3.5)
            eventually(
                lambda: (
                    "upstream bad (eu-central) back in rotation: ejection time over"
                    in gw.log_text()
                ),
                timeout=10,
                what="the ejection to run out",
            )
            out_s = time.monotonic() - at
            assert _gauge_text(gw, "bad") == "1.0"
            _eject(c, gw)  # still failing: out again, for twice as long
        # The third failure is recorded once its answer has gone out: the line may come
        # just after the client has read it.
        again = "upstream bad (eu-central) ejected for 10 s after 3 consecutive failed"
        eventually(lambda: again in gw.log_text(), timeout=5, what="the second ejection")
        log = gw.log_text()
        print(f"stayed out {out_s:.1f} s ({n} requests to good); log lines:")
        print("\n".join(line for line in log.splitlines() if "upstream bad" in line))
        assert "upstream bad (eu-central) ejected for 5 s after 3 consecutive failed" in log
        assert again in log
    finally:
        gw.stop()


def test_a_completion_probe_ends_the_ejection_once_completions_work(
    pair: tuple[Path, Sim, Sim, list[UpstreamSpec]],
) -> None:
    tmp, bad, _, ups = pair
    extra = (
        "completion_probe = true\n\n"  # into [health], which gateway_toml opened
        "[outlier]\nconsecutive_failures = 3\nbase_ejection_s = 60\n"
    )
    gw = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=extra))
    try:
        with httpx.Client(timeout=10) as c:
            at = _eject(c, gw)
            _stays_out(c, gw, at + 1.0)  # completion probes fail while completions do
            assert int(str(bad.stats()["requests"])) > 3  # the probes were sent
            heal = json.dumps({"error_rate": 0}).encode()
            req = urllib.request.Request(f"{bad.url}/sim/config", data=heal, method="POST")
            urllib.request.urlopen(req, timeout=5).read()
            eventually(
                lambda: _served_by(c, gw) == (200, "bad"),
                timeout=5,
                what="the completion probe to bring bad back (its ejection is 60 s)",
            )
            back_s = time.monotonic() - at
        log = gw.log_text()
        print(f"back after {back_s:.1f} s of a 60 s ejection")
        assert "upstream bad (eu-central) back in rotation: completion probe succeeded" in log
    finally:
        gw.stop()
