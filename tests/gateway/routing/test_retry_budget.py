from __future__ import annotations

from gateway.routing.retry_budget import RetryBudget


def test_minimum_rate_for_a_quiet_gateway() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=1, window_s=10)
    assert sum(b.try_retry(0.5) for _ in range(20)) == 10


def test_ratio_of_recent_requests() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=0, window_s=10)
    for i in range(1000):
        b.record_request(i / 100)  # 1000 requests over 10 s
    assert sum(b.try_retry(9.99) for _ in range(500)) == 200


def test_window_slides() -> None:
    b = RetryBudget(ratio=0.5, min_per_s=0, window_s=2)
    for _ in range(10):
        b.record_request(0.1)
    assert sum(b.try_retry(0.2) for _ in range(10)) == 5
    assert not b.try_retry(1.5)
    assert not b.try_retry(5.0)  # the requests that earned the budget have aged out
    b.record_request(5.0)
    b.record_request(5.0)
    assert b.try_retry(5.1)
