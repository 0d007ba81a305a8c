"""Merging the workers' families: each worker's counters, histograms and in-flight gauges as
its own series (label worker), never summed; the gauges of shared state one series, the
largest, whichever order the workers come in; one worker's exposition comes back as it was,
with its label."""

from __future__ import annotations

import json
import re

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.metrics_merge import PER_WORKER_GAUGES, WORKER, Part, merge, part
from gateway.metrics import Metrics

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SHARED = {
    "geogate_upstream_healthy",
    "geogate_upstream_rtt_ms",
    "geogate_model_healthy_upstreams",
    "geogate_shared_state_stale_seconds",
    "geogate_config_version",
    "geogate_fleet_config_refused",
}


def _series(text: str | bytes) -> Series:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _metrics(requests: int, in_flight: int, healthy: int, rtt: float, stale: float) -> Metrics:
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
    m.model_healthy.labels("m").set(healthy)
    m.state_stale.set(stale)
    m.config_version.set(7)
    return m


def _part(m: Metrics, worker: str) -> Part:
    """As a sibling sends it: through JSON."""
    return json.loads(json.dumps(part(m.registry.collect(), worker)))  # type: ignore[no-any-return]


def test_one_worker_comes_back_as_its_exposition_with_its_label() -> None:
    m = _metrics(3, 1, 1, 20.0, 0.0)
    alone = _series(generate_latest(m.registry))
    labelled = {
        (name, labels if name in SHARED else tuple(sorted((*labels, (WORKER, "0"))))): value
        for (name, labels), value in alone.items()
    }
    assert _series(merge([_part(m, "0")])) == labelled
    assert {n for n, _ in alone} & SHARED == SHARED  # each kind of gauge was there to check


def test_each_workers_counts_are_its_own_series_and_shared_state_the_largest() -> None:
    a = _part(_metrics(3, in_flight=1, healthy=0, rtt=20.0, stale=0.0), "0")
    b = _part(_metrics(5, in_flight=2, healthy=1, rtt=35.0, stale=12.5), "1")
    merged = _series(merge([a, b]))
    assert merged == _series(merge([b, a]))  # the same answer whichever worker is asked
    ok = (("code", "200"), ("region", "eu"))
    assert merged[("geogate_requests_total", (*ok, (WORKER, "0")))] == 3
    assert merged[("geogate_requests_total", (*ok, (WORKER, "1")))] == 5
    assert ("geogate_requests_total", ok) not in merged  # no sum to drop when one is missing
    assert merged[("geogate_retries_total", ((WORKER, "1"),))] == 2
    # A histogram: each bucket, the count and the sum, per worker.
    hist, eu1 = "geogate_request_duration_seconds", (("region", "eu"), (WORKER, "1"))
    assert merged[(f"{hist}_bucket", (("le", "0.25"), *eu1))] == 0
    assert merged[(f"{hist}_bucket", (("le", "0.5"), *eu1))] == 5
    assert merged[(f"{hist}_count", eu1)] == 5
    assert abs(merged[(f"{hist}_sum", eu1)] - 1.5) < 1e-9
    # What a worker holds: its own series, so sum(in flight) / sum(max_streams) is the load.
    for name in PER_WORKER_GAUGES:
        got = {labels: v for (n, labels), v in merged.items() if n == name}
        assert {dict(labels)[WORKER] for labels in got} == {"0", "1"}, name
    assert merged[("geogate_requests_in_flight", ((WORKER, "1"),))] == 2
    # Shared state as the workers see it: one series, the largest (healthy to one, the worst
    # staleness).
    ups = (("region", "eu"), ("upstream", "a"))
    assert merged[("geogate_upstream_healthy", ups)] == 1
    assert merged[("geogate_model_healthy_upstreams", (("model", "m"),))] == 1
    assert merged[("geogate_upstream_rtt_ms", ups)] == 35
    assert merged[("geogate_shared_state_stale_seconds", ())] == 12.5
    assert merged[("geogate_config_version", ())] == 7
    assert not [k for k in merged if k[0] in SHARED and WORKER in dict(k[1])]


def test_a_worker_left_out_lowers_no_count_of_the_others() -> None:
    """The reviewer's case: summed, a sibling missing from one scrape made every counter
    drop, which Prometheus reads as a reset and adds the whole value as an increase."""
    workers = [_part(_metrics(n, 1, 1, 1.0, 0.0), str(i)) for i, n in enumerate((3, 5, 2))]
    before = _series(merge(workers))
    restarted = _part(_metrics(0, 0, 1, 1.0, 0.0), "1")  # killed, replaced: from 0
    counts = ("_total", "_count", "_bucket", "_sum")
    for after in (merge([workers[0], workers[2]]), merge([workers[0], restarted, workers[2]])):
        for (name, labels), value in _series(after).items():
            if name.endswith(counts) and (WORKER, "1") not in labels:
                assert value == before[(name, labels)], (name, labels)


def test_a_family_keeps_its_lines_together_under_one_header() -> None:
    m = Metrics()
    m.duration.observe_at(0.01, "us")  # only this worker served region "us"
    m.retries.inc()  # prometheus_client's Counter: a _created gauge family after its own
    text = merge([_part(_metrics(2, 0, 1, 1.0, 0.0), "0"), _part(m, "1")]).decode()
    merged = _series(text)
    us, eu = (("region", "us"), (WORKER, "1")), (("region", "eu"), (WORKER, "0"))
    assert merged[("geogate_request_duration_seconds_count", us)] == 1
    assert merged[("geogate_request_duration_seconds_count", eu)] == 2
    assert ("geogate_retries_created", ((WORKER, "1"),)) in merged
    # One HELP and one TYPE per family, its samples right after (a family in two places, or
    # two TYPE lines, and Prometheus refuses the whole scrape).
    names = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert len(names) == len(set(names))
    assert len([ln for ln in text.splitlines() if ln.startswith("# HELP")]) == len(names)
    family = ""
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            family = line.split()[2]
        elif not line.startswith("#"):
            sample = re.split(r"[{ ]", line, maxsplit=1)[0]
            assert sample.startswith(family.removesuffix("_total")), (family, line)


def test_a_family_without_samples_keeps_its_header_and_extra_families_come_last() -> None:
    extra = [GaugeMetricFamily("geogate_workers_scraped", "Workers there", value=2)]
    text = merge([_part(Metrics(), "0")] * 2, extra).decode()
    assert "# TYPE geogate_stream_bodies_total counter" in text  # no stream yet: no sample
    assert not [ln for ln in text.splitlines() if ln.startswith("geogate_stream_bodies")]
    helps = {ln.split()[2]: ln for ln in text.splitlines() if ln.startswith("# HELP")}
    assert helps["geogate_upstream_rtt_ms"] == "# HELP geogate_upstream_rtt_ms EWMA of probe RTT"
    assert text.rstrip().endswith("geogate_workers_scraped 2.0")
