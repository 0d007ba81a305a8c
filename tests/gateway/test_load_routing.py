"""Load polling end to end: a backend whose TTFT rises loses its traffic share."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from gateway.cli.procs import free_port
from gateway.client import Client
from gateway.config import Config, LoadSection, Upstream
from gateway.routing.load import SCRAPE_QUERY, LoadReading, LoadState, parse_load
from gateway.runtime import build_runtime
from gateway.watch.load_poller import next_round_s, poll_once, scrape_url, scraped
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

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)


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
            table: Any = get_json(f"{gw.ops_url}/routing-table")
            ups = {u["id"]: u for r in table["regions"] for u in r["upstreams"]}
            return (ups["b"]["ttft_ms"] or 0) > 50

        eventually(b_is_slow, timeout=15, what="the gateway to see b's TTFT rise")
        after = served_by(gw.url, 60)
        assert after["a"] >= 57, after  # b is out of the tolerance band
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()


def test_traffic_moves_away_from_a_backend_with_a_queue(tmp_path: Path) -> None:
    """vllm:num_requests_waiting end to end: a backend whose batch is full, with requests
    waiting (the sim's --max-waiting, as vLLM queues them), loses the gateway's traffic while
    its queue lasts, though its first tokens, when they come, are as quick as ever."""
    knobs = (
        "--ttft-ms",
        "20",
        "--tokens-per-s",
        "20",
        "--max-concurrency",
        "2",
        "--max-waiting",
        "64",
    )
    sims = [start_sim(tmp_path, n, "eu-central", ["m"], *knobs) for n in ("a", "b")]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    extra = "[load]\npoll_interval_s = 0.1\n"
    gw = start_gateway(tmp_path, lambda p: gateway_toml(p, ups, extra=extra))
    held: list[socket.socket] = []
    try:
        before = served_by(gw.url, 40)
        assert before["a"] > 8 and before["b"] > 8, before  # near-equal: both carry traffic
        body = b'{"model": "m", "prompt": "hi", "max_tokens": 100000}'
        for _ in range(32):  # b's own clients, not the gateway's: 2 running, 30 waiting
            conn = socket.create_connection(("127.0.0.1", sims[1].port), timeout=10)
            held.append(conn)
            conn.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            )

        def b_has_a_queue() -> bool:
            table: Any = get_json(f"{gw.ops_url}/routing-table")
            ups = {u["id"]: u for r in table["regions"] for u in r["upstreams"]}
            return (ups["b"]["queue_depth"] or 0) >= 30

        eventually(b_has_a_queue, timeout=15, what="the gateway to see b's queue")
        # 20 ms x (1 + 30 / 16 slots): 58 ms against a's 20, out of the tolerance band.
        assert served_by(gw.url, 30) == {"a": 30}
    finally:
        for conn in held:
            conn.close()
        gw.stop()
        for s in sims:
            s.proc.kill()


def _reading(
    queue: float | None = 0.0, running: float | None = 0.0, done: float = 7.0
) -> LoadReading:
    return LoadReading(queue_depth=queue, running=running, ttft_count=done)


def _sample(done: float | None = 7.0) -> LoadState:
    """What the store kept from the last round: its TTFT count."""
    return LoadState(at=0.0, queue_depth=0.0, ttft_ms=None, ttft_sum_s=0.1, ttft_count=done)


def test_polls_slow_down_only_while_nothing_at_all_is_going_on() -> None:
    cfg = LoadSection()  # 0.25 s, samples trusted for 2 s, a scrape's timeout 1 s
    idle: list[LoadReading | None] = [_reading(), _reading()]
    kept: list[LoadState | None] = [_sample(), _sample()]

    def wait(
        now: Sequence[LoadReading | None],
        before: Sequence[LoadState | None] = kept,
        in_flight: Mapping[str, int] | None = None,
        busy: bool = False,
    ) -> float:
        flight = {"a": 0, "b": 0} if in_flight is None else in_flight
        return next_round_s(cfg, now, before, flight, busy)

    assert wait(idle) == 1.0  # 4x: an idle worker
    # Any sign of work keeps the short interval: a queue forming is seen within 0.25 s.
    assert wait([_reading(), _reading(queue=1)]) == 0.25
    assert wait([_reading(running=2), _reading()]) == 0.25
    assert wait([_reading(), _reading(done=8)]) == 0.25  # a request finished there meanwhile
    assert wait(idle, in_flight={"a": 1}) == 0.25  # ours in flight
    assert wait(idle, busy=True) == 0.25  # we proxied one since the last round
    # Not known to be idle: a failed scrape, or a regional gateway's /load (no queue figures),
    # or no sample before this one to compare with (the first round, a new upstream).
    assert wait([_reading(), None]) == 0.25
    assert wait([_reading(queue=None), _reading()]) == 0.25
    assert wait([LoadReading(ttft_ms=120.0), _reading()]) == 0.25
    assert wait(idle, before=[_sample(), None]) == 0.25
    # No TTFT count (a server that exports none, as TGI): requests may come and go unseen.
    unseen = LoadReading(queue_depth=0.0, running=0.0)
    assert wait([unseen, _reading()], before=[_sample(done=None), _sample()]) == 0.25


def test_an_idle_round_leaves_a_scrape_s_timeout_before_a_sample_expires() -> None:
    idle: list[LoadReading | None] = [_reading()]
    kept: list[LoadState | None] = [_sample()]
    # 4 x 0.4 s would leave the last sample 0.4 s to live when the next scrape begins, less
    # than that scrape's 1 s timeout: the idle wait stops at max_age_s - 1 s.
    cfg = LoadSection(poll_interval_s=0.4, max_age_s=2.0)
    assert next_round_s(cfg, idle, kept, {}, busy=False) == 1.0
    short = LoadSection(poll_interval_s=0.1, max_age_s=1.5)
    assert next_round_s(short, idle, kept, {}, busy=False) == 0.4  # 4 x 0.1 fits
    tight = LoadSection(poll_interval_s=0.2, max_age_s=1.5)  # 0.8 s would leave only 0.7
    assert next_round_s(tight, idle, kept, {}, busy=False) == 0.5
    slow = LoadSection(poll_interval_s=1.5, max_age_s=2.0)  # never below the configured pace
    assert next_round_s(slow, idle, kept, {}, busy=False) == 1.5


def test_an_idle_gateway_polls_its_idle_backend_slower_and_speeds_up_with_traffic(
    tmp_path: Path,
) -> None:
    sim = start_sim(tmp_path, "a", "eu-central", ["m"], "--ttft-ms", "5")
    ups = [UpstreamSpec(sim.name, "eu-central", sim.url, ["m"])]
    fast = "[load]\npoll_interval_s = 0.1\n"
    gw = start_gateway(tmp_path, lambda p: gateway_toml(p, ups, extra=fast))
    try:

        def rate(seconds: float) -> float:
            """Scrapes a second the backend answered over ``seconds``."""
            before, t0 = _scraped(sim), time.monotonic()
            time.sleep(seconds)
            return (_scraped(sim) - before) / (time.monotonic() - t0)

        # idle: every 0.4 s, about 2.5 a second (at 0.1 s it would be 10); not stopped either
        eventually(lambda: 0 < rate(2.0) <= 4, what="idle polls, every 0.4 s")
        stop = threading.Event()

        def traffic() -> None:  # requests back to back: something is always going on
            while not stop.is_set():
                served_by(gw.url, 1)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            busy = rate(2.0)
        finally:
            stop.set()
            sender.join()
        assert busy >= 6, busy  # the short interval again: about 10 a second
    finally:
        gw.stop()
        sim.proc.kill()


def _scraped(sim: Sim) -> int:
    """How many /metrics scrapes the sim-backend has answered."""
    scrapes = sim.stats()["scrapes"]
    assert isinstance(scrapes, int)
    return scrapes


def test_a_scrape_asks_for_only_the_samples_read_and_the_sim_backend_honours_it(
    tmp_path: Path,
) -> None:
    sim = start_sim(tmp_path, "a", "eu-central", ["m"])
    try:
        up = Upstream(id="a", region="eu-central", url=sim.url + "/", models=("m",))
        url = scrape_url(up, LoadSection())
        assert url == f"{sim.url}/metrics?{SCRAPE_QUERY}"
        part, whole = httpx.get(url).text, httpx.get(f"{sim.url}/metrics").text
        assert len(part) < len(whole) / 4 and "_bucket" not in part
        assert parse_load(part) == parse_load(whole) != LoadReading()
        # Names it has not: an empty answer, as prometheus_client's handler gives (the poller
        # then asks for the whole text); an empty name asks for nothing either.
        for names in (["nope"], [""]):
            none = httpx.get(f"{sim.url}/metrics", params={"name[]": names})
            assert none.status_code == 200 and none.text == ""
    finally:
        sim.proc.kill()
    # A path with a query of its own is the operator's: left as configured.
    own = Upstream(id="b", region="eu-central", url="http://127.0.0.1:9", models=("m",))
    assert scrape_url(own, LoadSection(path="/stats?format=prometheus")) == (
        "http://127.0.0.1:9/stats?format=prometheus"
    )


class _NamesNothing:
    """A collector that names no samples up front, as prometheus_client's multiprocess one
    (SGLang's /metrics): the ``name[]`` filter of prometheus_client's handler keeps none."""

    def __init__(self) -> None:
        self.collected = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.collected += 1
        yield GaugeMetricFamily("sglang:num_queue_reqs", "queue", value=3)
        yield GaugeMetricFamily("sglang:num_running_reqs", "running", value=6)


def test_a_server_whose_filtered_scrape_is_empty_is_scraped_whole_from_then_on() -> None:
    registry = CollectorRegistry()
    collector = _NamesNothing()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    whole: set[str] = set()
    try:
        # No samples at all yet (a server starting up): unmeasured, and not remembered.
        assert _polls(f"http://127.0.0.1:{port}", whole, 1) == [LoadReading()] and not whole
        registry.register(collector)
        readings = _polls(f"http://127.0.0.1:{port}", whole, 2)
    finally:
        server.shutdown()
        thread.join()
    assert [(r.queue_depth, r.running) if r else None for r in readings] == [(3.0, 6.0)] * 2
    assert whole == {"a"}  # remembered: the second poll asked for the whole text at once
    assert collector.collected == 2  # the first poll's filtered scrape read nothing; no third


class _OthersOnly(http.server.BaseHTTPRequestHandler):
    """A server that ignores ``name[]`` and exposes none of the samples read, as a regional
    gateway's /load before it has measured a TTFT (only its routable gauge)."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = b"# TYPE geogate_region_routable_upstreams gauge\n"
        body += b'geogate_region_routable_upstreams{region="eu"} 1\n'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return None


def test_a_server_with_samples_but_none_read_is_scraped_once_a_round() -> None:
    """Its answer to the filtered scrape holds samples, so the query was not what emptied it:
    no second, whole scrape (across an ocean, for an edge reading a region's /load)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OthersOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    whole: set[str] = set()
    try:
        readings = _polls(f"http://127.0.0.1:{server.server_port}", whole, 2)
    finally:
        server.shutdown()
        thread.join()
    assert readings == [LoadReading()] * 2 and not whole
    assert len(_OthersOnly.paths) == 2 and all("name" in p for p in _OthersOnly.paths)


def _polls(url: str, whole: set[str], rounds: int) -> list[LoadReading | None]:
    """``rounds`` polls, by the gateway's own poller, of one upstream at ``url``."""
    rt = build_runtime(Config.model_validate(_one_upstream(url)))

    async def polls() -> list[LoadReading | None]:
        rt.session = Client(1.0)
        try:
            return [await poll_once(rt, rt.config.upstreams[0], whole) for _ in range(rounds)]
        finally:
            await rt.session.close()

    return asyncio.run(polls())


def _one_upstream(url: str) -> dict[str, object]:
    return {
        "gateway": {"region": "eu"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": url, "models": ["m"]}],
    }


def test_an_upstream_the_probes_hold_down_is_not_scraped() -> None:
    # Its failed scrape kept every round at the fast interval: four TLS handshakes a second
    # to an upstream whose certificate was refused, against one probe every interval.
    doc = _one_upstream("http://127.0.0.1:1")
    ups: list[dict[str, object]] = [
        {"id": u, "region": "eu", "url": f"http://127.0.0.1:{p}", "models": ["m"]}
        for u, p in (("a", 1), ("b", 2), ("c", 3))
    ]
    rt = build_runtime(Config.model_validate({**doc, "upstreams": ups}))
    assert [u.id for u in scraped(rt)] == ["a", "b", "c"]  # not probed yet: up until told

    def probes(uid: str, ok: bool) -> None:
        h = rt.config.health
        for _ in range(h.healthy_threshold if ok else h.unhealthy_threshold):
            rt.store.record_probe(uid, ok, 12.0 if ok else None, None if ok else "refused")

    probes("a", False)
    assert [u.id for u in scraped(rt)] == ["b", "c"]
    probes("b", False)  # one of three up, under the panic threshold: the router tries all,
    assert [u.id for u in scraped(rt)] == ["a", "b", "c"]  # and scores them on their queues
    probes("a", True)
    assert [u.id for u in scraped(rt)] == ["a", "c"]
    # Per model, as the router decides it: "n"'s one upstream down is its panic, whatever
    # "m"'s are; a drained upstream is none of a pool's.
    ups.append({"id": "d", "region": "eu", "url": "http://127.0.0.1:4", "models": ["n"]})
    ups[2] = ups[2] | {"drained": True}  # c
    rt.store.replace_config(Config.model_validate({**doc, "upstreams": ups}))
    probes("d", False)
    # "m": a up of {a, b} (c drained) is half, no panic: b left out; "n": none up, d scraped.
    assert [u.id for u in scraped(rt)] == ["a", "c", "d"]
    probes("a", False)  # "m": none of {a, b} up: both scraped
    assert [u.id for u in scraped(rt)] == ["a", "b", "c", "d"]
