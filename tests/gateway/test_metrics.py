from __future__ import annotations

from gateway.metrics import Metrics


def test_child_binds_each_label_set_once_and_counts_into_the_registry() -> None:
    m = Metrics()
    a = m.child(m.requests, "200", "eu")
    assert m.child(m.requests, "200", "eu") is a  # bound once
    assert m.child(m.requests, "502", "eu") is not a
    a.inc()
    m.child(m.requests, "200", "eu").inc()
    m.child(m.duration, "eu").observe(0.2)
    get = m.registry.get_sample_value
    assert get("geogate_requests_total", {"code": "200", "region": "eu"}) == 2
    assert get("geogate_requests_total", {"code": "502", "region": "eu"}) == 0
    assert get("geogate_request_duration_seconds_count", {"region": "eu"}) == 1
    # the same child as labels() gives: the metric's own view agrees
    assert m.requests.labels("200", "eu") is a
