"""Load polling end to end: a backend whose TTFT rises loses its traffic share."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from gateway.config import LoadSection
from gateway.routing.load import LoadReading
from gateway.watch.load_poller import next_round_s
from tests.support import (
    Sim,
    UpstreamSpec,
    eventually,
    gateway_toml,
    get_json,
    served_by,
    start_gateway,
    start_sim,
)


def test_traffic_moves_away_from_a_slowed_backend(tmp_path: Path) -> None:
    sims = [start_sim(tmp_path, n, "eu-central", ["m"], "--ttft-ms", "5") for n in ("a", "b")]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    extra = "[load]\npoll_interval_s = 0.1\n"
    gw = start_gateway(
        tmp_path,
        lambda p: gateway_toml(p, ups, extra=extra).replace(
            "[server]", "[server]\naccess_log = false"
        ),
    )
    try:
        before = served_by(gw.url, 60)
        assert before["a"] > 15 and before["b"] > 15, before  # near-equal: both carry traffic
        httpx.post(f"{sims[1].url}/sim/config", json={"ttft_ms": 150})

        def b_is_slow() -> bool:
            served_by(gw.url, 5)  # traffic goes on, as it would: b's TTFT needs requests
            table = get_json(f"{gw.ops_url}/routing-table")
            ups = {u["id"]: u for r in table["regions"] for u in r["upstreams"]}  # type: ignore[union-attr,index]
            return (ups["b"]["ttft_ms"] or 0) > 50

        eventually(b_is_slow, timeout=15, what="the gateway to see b's TTFT rise")
        after = served_by(gw.url, 60)
        assert after["a"] >= 57, after  # b is out of the tolerance band
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()


def _reading(queue: float | None = 0.0, running: float | None = 0.0) -> LoadReading:
    return LoadReading(queue_depth=queue, running=running)


def test_polls_slow_down_only_while_nothing_at_all_is_going_on() -> None:
    cfg = LoadSection()  # 0.25 s, samples trusted for 2 s
    idle = [_reading(), _reading()]
    assert next_round_s(cfg, idle, {"a": 0, "b": 0}, routed=False) == 1.0  # 4x: an idle worker
    # Any sign of work keeps the short interval: a queue forming is seen within 0.25 s.
    assert next_round_s(cfg, [_reading(), _reading(queue=1)], {}, routed=False) == 0.25
    assert next_round_s(cfg, [_reading(running=2), _reading()], {}, routed=False) == 0.25
    assert next_round_s(cfg, idle, {"a": 1}, routed=False) == 0.25  # ours in flight
    assert next_round_s(cfg, idle, {}, routed=True) == 0.25  # we routed since the last round
    # Not known to be idle: a failed scrape, or a regional gateway's /load (no queue figures).
    assert next_round_s(cfg, [_reading(), None], {}, routed=False) == 0.25
    assert next_round_s(cfg, [_reading(queue=None)], {}, routed=False) == 0.25
    assert next_round_s(cfg, [LoadReading(ttft_ms=120.0)], {}, routed=False) == 0.25


def test_an_idle_round_never_lets_a_sample_age_out() -> None:
    # 4 x 0.4 s would be past half of max_age_s: the idle wait stops at 1 s, a sample's
    # age stays under max_age_s even when one scrape of the next round fails.
    cfg = LoadSection(poll_interval_s=0.4, max_age_s=2.0)
    assert next_round_s(cfg, [_reading()], {}, routed=False) == 1.0
    slow = LoadSection(poll_interval_s=1.5, max_age_s=2.0)  # never below the configured pace
    assert next_round_s(slow, [_reading()], {}, routed=False) == 1.5


def test_an_idle_gateway_polls_its_idle_backend_slower_and_speeds_up_with_traffic(
    tmp_path: Path,
) -> None:
    sim = start_sim(tmp_path, "a", "eu-central", ["m"], "--ttft-ms", "5")
    ups = [UpstreamSpec(sim.name, "eu-central", sim.url, ["m"])]
    gw = start_gateway(
        tmp_path, lambda p: gateway_toml(p, ups, extra="[load]\npoll_interval_s = 0.1\n")
    )
    try:

        def scrapes(seconds: float) -> int:
            before = _scraped(sim)
            time.sleep(seconds)
            return _scraped(sim) - before

        eventually(lambda: scrapes(1.0) <= 4, what="idle polls, every 0.4 s")
        stop = time.monotonic() + 1.5
        busy = 0
        while time.monotonic() < stop:  # requests flowing: the short interval again
            before = _scraped(sim)
            served_by(gw.url, 3)
            time.sleep(0.1)
            busy += _scraped(sim) - before
        assert busy >= 8, busy  # ~15 at 0.1 s; idle pace would give at most 4
    finally:
        gw.stop()
        sim.proc.kill()


def _scraped(sim: Sim) -> int:
    """How many /metrics scrapes the sim-backend has answered."""
    scrapes = sim.stats()["scrapes"]
    assert isinstance(scrapes, int)
    return scrapes
