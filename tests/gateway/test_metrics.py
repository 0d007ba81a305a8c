from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.client import FailureKind
from gateway.http.upstream import RETRYABLE_STATUS
from gateway.metrics import (
    ATTEMPT_OUTCOMES,
    LATENCY_BUCKETS,
    Metrics,
    RequestCounter,
    RequestHistogram,
)


def test_labels_gives_each_label_set_one_child_that_counts_into_the_registry() -> None:
    m = Metrics()
    a = m.requests.labels("200", "eu")
    assert m.requests.labels("200", "eu") is a  # one child per label set, found again
    assert m.requests.labels("502", "eu") is not a
    a.inc()
    m.requests.labels("200", "eu").inc()
    m.duration.labels("eu").observe(0.2)
    get = m.registry.get_sample_value
    assert get("geogate_requests_total", {"code": "200", "region": "eu"}) == 2
    assert get("geogate_requests_total", {"code": "502", "region": "eu"}) == 0
    assert get("geogate_request_duration_seconds_count", {"region": "eu"}) == 1


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but prometheus_client's ``_created`` ones (not kept by ours)."""
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_request_metrics_expose_what_prometheus_clients_own_would() -> None:
    """Same names, labels, bucket bounds, cumulative counts and sums as Counter and Histogram
    given the same updates: a dashboard or alert rule cannot tell them apart."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1 = RequestCounter("t_requests", "doc", ["code", "region"], ours)
    c2 = Counter("t_requests", "doc", ["code", "region"], registry=theirs)
    h1 = RequestHistogram("t_seconds", "doc", ["region"], ours, LATENCY_BUCKETS)
    h2 = Histogram("t_seconds", "doc", ["region"], buckets=LATENCY_BUCKETS, registry=theirs)
    # On a bound, between, past the last, zero, and negative (an le bucket takes equality).
    values = [0.005, 0.007, 1.0, 2.5, 299.0, 300.0, 301.0, 0.0, -1.0, 0.25]
    for i, v in enumerate(values):
        region = "eu" if i % 3 else "us"
        c1.labels(str(200 + i % 2), region).inc()
        c2.labels(str(200 + i % 2), region).inc()
        h1.labels(region).observe(v)
        h2.labels(region).observe(v)
    c1.labels("503", "eu").inc(2.5)
    c2.labels("503", "eu").inc(2.5)
    # The request path's one-call forms update the same series (and make a new one alike).
    c1.count("200", "eu")
    c2.labels("200", "eu").inc()
    c1.count("504", "us")
    c2.labels("504", "us").inc()
    h1.observe_at(2.5, "eu")
    h2.labels("eu").observe(2.5)
    h1.observe_at(0.001, "ap")
    h2.labels("ap").observe(0.001)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("t_seconds_bucket", {"region": "us", "le": "+Inf"}) == 4
    assert ours.get_sample_value("t_requests_total", {"code": "504", "region": "us"}) == 1


def test_request_metrics_refuse_a_wrong_number_of_label_values() -> None:
    c = RequestCounter("t_requests", "doc", ["code", "region"], CollectorRegistry())
    with pytest.raises(ValueError, match=r"t_requests: 1 label values for \('code', 'region'\)"):
        c.labels("200")
    with pytest.raises(ValueError, match=r"t_requests: 1 label values for \('code', 'region'\)"):
        c.count("200")
    h = RequestHistogram("t_seconds", "doc", ["region"], CollectorRegistry(), LATENCY_BUCKETS)
    with pytest.raises(ValueError, match=r"t_seconds: 2 label values for \('region',\)"):
        h.observe_at(1.0, "eu", "us")


def test_request_metrics_keep_prometheus_clients_rules() -> None:
    r = CollectorRegistry()
    c = RequestCounter("t_requests", "doc", ["code"], r)
    # Values are made strings, as labels() does: 200 and "200" are one series.
    c.labels(200).inc()  # type: ignore[arg-type]
    c.labels("200").inc()
    assert r.get_sample_value("t_requests_total", {"code": "200"}) == 2
    with pytest.raises(ValueError, match="a counter only goes up"):
        c.labels("200").inc(-1)
    # A second metric of the same name is refused, as for prometheus_client's own.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_requests", "doc", ["code"], registry=r)


def test_histogram_buckets_must_increase_and_inf_is_implied() -> None:
    nan = float("nan")
    for bad in ([1.0, 0.5], [1.0, 1.0], [], [float("inf")], [0.5, nan, 2.0], [nan], [nan, 1.0]):
        with pytest.raises(ValueError, match="t_seconds: buckets must be given in increasing"):
            RequestHistogram("t_seconds", "doc", [], CollectorRegistry(), bad)
    # A trailing +Inf, as prometheus_client accepts it, is the bucket it always adds.
    r = CollectorRegistry()
    h = RequestHistogram("t_seconds", "doc", [], r, [0.5, float("inf")])
    h.labels().observe(2.0)
    assert r.get_sample_value("t_seconds_bucket", {"le": "0.5"}) == 0
    assert r.get_sample_value("t_seconds_bucket", {"le": "+Inf"}) == 1


def test_keep_removes_the_series_of_label_values_gone() -> None:
    m = Metrics()
    for uid in ("a", "b@10.0.0.1:80"):
        m.attempts.count(uid, "ok")
    m.attempts.keep(0, {"a"})
    get = m.registry.get_sample_value
    assert get("geogate_upstream_attempts_total", {"upstream": "a", "outcome": "ok"}) == 1
    assert (
        get("geogate_upstream_attempts_total", {"upstream": "b@10.0.0.1:80", "outcome": "ok"})
        is None
    )


def test_the_attempt_outcomes_made_at_0_are_every_one_the_proxy_counts() -> None:
    """ATTEMPT_OUTCOMES (made at 0 per upstream) against what gateway.http.upstream labels
    attempts with: an answer passed on (ok, status_5xx), a failed-over status, a failure kind."""
    statuses = {f"status_{s}" for s in RETRYABLE_STATUS}
    kinds = {str(k) for k in FailureKind if k is not FailureKind.STATUS}
    assert set(ATTEMPT_OUTCOMES) == {"ok", "status_5xx"} | statuses | kinds
    assert len(ATTEMPT_OUTCOMES) == len(set(ATTEMPT_OUTCOMES))


def test_the_first_byte_histograms_help_says_what_a_stream_is_timed_at() -> None:
    """What an operator reads beside the TTFT objective's series: a stream's sample is its first
    token, not the first body byte (a role chunk sent ahead of it); at least first_byte_s for
    one that failed before any, its end for one that carried none, nothing for a 4xx
    (gateway.http.ttft); a whole answer's is its end."""
    doc = Metrics().first_byte.doc
    assert "first body byte sent to the client" not in doc
    for said in (
        "a stream's first token",
        "a role chunk sent ahead of it is none",
        "at least timeouts.first_byte_s",
        "one that carried none at its end",
        "4xx not at all",
        "a whole answer's first body byte, its end",
    ):
        assert said in doc, said
