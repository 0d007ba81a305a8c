"""Merging the workers' expositions: counters and histograms summed per label set, the gauges
of what a worker holds summed, the gauges of shared state the largest, whichever order the
workers come in; one worker's exposition comes back as it was."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.metrics_merge import SUMMED_NOTE, merge
from gateway.metrics import Metrics

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _series(text: str | bytes) -> Series:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _worker(requests: int, in_flight: int, healthy: int, rtt: float, stale: float) -> str:
    m = Metrics()
    for _ in range(requests):
        m.requests.count("200", "eu")
        m.duration.observe_at(0.3, "eu")
    m.requests.count("503", "-")
    m.retries.inc(2)
    m.requests_in_flight.set(in_flight)
    m.max_streams.set(100)
    m.in_flight.labels("a", "eu").set(in_flight)
    m.healthy.labels("a", "eu").set(healthy)
    m.rtt.labels("a", "eu").set(rtt)
    m.state_stale.set(stale)
    m.config_version.set(7)
    return generate_latest(m.registry).decode()


def test_one_exposition_comes_back_as_it_was() -> None:
    text = _worker(3, 1, 1, 20.0, 0.0)
    assert _series(merge([text])) == _series(text)


def test_counts_are_summed_and_shared_state_is_the_largest_either_way_round() -> None:
    a = _worker(3, in_flight=1, healthy=0, rtt=20.0, stale=0.0)
    b = _worker(5, in_flight=2, healthy=1, rtt=35.0, stale=12.5)
    merged = _series(merge([a, b]))
    assert merged == _series(merge([b, a]))  # the same answer whichever worker is asked
    eu, ups = (("code", "200"), ("region", "eu")), (("region", "eu"), ("upstream", "a"))
    assert merged[("geogate_requests_total", eu)] == 8
    assert merged[("geogate_requests_total", (("code", "503"), ("region", "-")))] == 2
    assert merged[("geogate_retries_total", ())] == 4
    # A histogram: each bucket, the count and the sum.
    hist = "geogate_request_duration_seconds"
    assert merged[(f"{hist}_bucket", (("le", "0.25"), ("region", "eu")))] == 0
    assert merged[(f"{hist}_bucket", (("le", "0.5"), ("region", "eu")))] == 8
    assert merged[(f"{hist}_bucket", (("le", "+Inf"), ("region", "eu")))] == 8
    assert merged[(f"{hist}_count", (("region", "eu"),))] == 8
    assert abs(merged[(f"{hist}_sum", (("region", "eu"),))] - 2.4) < 1e-9
    # What the workers hold adds up, so in_flight / max_streams stays the gateway's load.
    assert merged[("geogate_requests_in_flight", ())] == 3
    assert merged[("geogate_max_streams", ())] == 200
    assert merged[("geogate_upstream_in_flight", ups)] == 3
    # Shared state as the workers see it: the largest (healthy to one, the worst staleness).
    assert merged[("geogate_upstream_healthy", ups)] == 1
    assert merged[("geogate_upstream_rtt_ms", ups)] == 35
    assert merged[("geogate_shared_state_stale_seconds", ())] == 12.5
    assert merged[("geogate_config_version", ())] == 7
    # prometheus_client's first-seen time: the earliest, not a sum of timestamps.
    created = [_series(t)[("geogate_retries_created", ())] for t in (a, b)]
    assert merged[("geogate_retries_created", ())] == min(created)


def test_a_series_one_worker_has_alone_is_kept_with_its_family_whole() -> None:
    m = Metrics()
    m.duration.observe_at(0.01, "us")  # only this worker served region "us"
    only = generate_latest(m.registry).decode()
    text = merge([_worker(2, 0, 1, 1.0, 0.0), only]).decode()
    merged = _series(text)
    assert merged[("geogate_request_duration_seconds_count", (("region", "us"),))] == 1
    assert merged[("geogate_request_duration_seconds_count", (("region", "eu"),))] == 2
    # Each histogram series' lines stay together (bucket ... count, sum), one family per name.
    lines = [ln for ln in text.splitlines() if ln.startswith("geogate_request_duration")]
    regions = [ln.split('region="')[1].split('"')[0] for ln in lines]
    assert regions == sorted(regions, key=regions.index)  # no region comes back later
    assert text.count("# TYPE geogate_request_duration_seconds histogram") == 1


def test_summed_gauges_say_so_and_extra_families_come_last() -> None:
    extra = [GaugeMetricFamily("geogate_workers_scraped", "Workers summed", value=2)]
    text = merge([_worker(1, 0, 1, 1.0, 0.0)] * 2, extra).decode()
    helps = {ln.split()[2]: ln for ln in text.splitlines() if ln.startswith("# HELP")}
    assert helps["geogate_max_streams"].endswith(f"descriptor limit allows fewer){SUMMED_NOTE}")
    assert helps["geogate_upstream_rtt_ms"] == "# HELP geogate_upstream_rtt_ms EWMA of probe RTT"
    assert text.rstrip().endswith("geogate_workers_scraped 2.0")
