from __future__ import annotations

from gateway.config import HealthSection, OutlierSection
from gateway.routing.health import (
    UpstreamHealth,
    apply_probe,
    apply_result,
    ejection_over,
    end_ejection,
)

HC = HealthSection(healthy_threshold=2, unhealthy_threshold=2, rtt_ewma_alpha=0.5)
OUT = OutlierSection(consecutive_failures=3, base_ejection_s=10, max_ejection_s=35)


def test_first_probe_decides_then_thresholds_apply() -> None:
    h = UpstreamHealth()
    assert h.healthy(0)  # optimistic before any probe
    assert apply_probe(h, False, None, "refused", HC)
    assert not h.healthy(0) and h.last_probe_error == "refused"
    assert not apply_probe(h, True, 10.0, None, HC)  # one good probe is not enough
    assert apply_probe(h, True, 20.0, None, HC)
    assert h.healthy(0)
    assert h.rtt_ms == 15.0  # EWMA with alpha 0.5
    assert not apply_probe(h, False, None, "x", HC)  # one bad probe is not enough
    assert apply_probe(h, False, None, "x", HC)


def test_passive_ejection_backs_off() -> None:
    h = UpstreamHealth()
    apply_probe(h, True, 1.0, None, HC)
    assert not apply_result(h, False, 0, OUT) and not apply_result(h, False, 0, OUT)
    assert apply_result(h, False, 0, OUT)  # third consecutive failure ejects for 10 s
    assert not h.healthy(5) and h.healthy(10)
    for _ in range(3):
        apply_result(h, False, 20, OUT)
    assert h.ejected_until == 40  # second ejection: 2 x 10 s
    for _ in range(3):
        apply_result(h, False, 100, OUT)
    assert h.ejected_until == 130  # third: 3 x 10 s (the cap, 35 s, not reached)
    for _ in range(3):
        apply_result(h, False, 200, OUT)
    assert h.ejected_until == 235  # fourth: 4 x 10 s, capped at 35 s


def test_good_health_probes_do_not_end_an_ejection() -> None:
    # /health answers while completions fail (a GPU out of memory): the ejection runs its time.
    h = UpstreamHealth()
    for _ in range(3):
        apply_result(h, False, 0, OUT)
    assert h.ejected_until == 10 and h.ejection_cause == "3 consecutive failed requests"
    for _ in range(5):
        apply_probe(h, True, 1.0, None, HC)
    assert not h.healthy(9.9) and h.healthy(10)


def test_backoff_applies_across_returns_with_good_probes_between() -> None:
    # Each time it is back, it fails again; /health answers all along, during the ejections
    # too. Out for base x times ejected: 10, 20, 30 s, then the 35 s cap.
    h = UpstreamHealth()
    now = 0.0
    for expected in (10, 20, 30, 35):
        assert [apply_result(h, False, now, OUT) for _ in range(3)] == [False, False, True]
        for _ in range(3):
            apply_probe(h, True, 1.0, None, HC)
        assert not h.healthy(now + expected - 0.1) and h.healthy(now + expected)
        now += expected
    assert h.times_ejected == 4


def test_end_ejection_and_ejection_over_tell_each_once() -> None:
    h = UpstreamHealth()
    assert not end_ejection(h, 0) and not ejection_over(h, 0)  # nothing to end
    for _ in range(3):
        apply_result(h, False, 0, OUT)
    assert not ejection_over(h, 5)  # still out
    assert end_ejection(h, 5)  # a completion probe succeeded
    assert h.healthy(5) and h.ejection_cause is None
    assert not end_ejection(h, 5) and not ejection_over(h, 5)
    for _ in range(3):
        apply_result(h, False, 20, OUT)
    assert h.ejected_until == 40
    assert ejection_over(h, 40)  # its time ran out: told once
    assert not ejection_over(h, 41)


def test_success_resets_the_failure_run() -> None:
    h = UpstreamHealth()
    for ok in (False, False, True, False, False):
        assert not apply_result(h, ok, 0, OUT)


RATE = OutlierSection(
    consecutive_failures=100,
    failure_rate_threshold=0.5,
    failure_rate_min_requests=10,
    failure_rate_window_s=10,
)


def test_failure_rate_ejects_interleaved_failures() -> None:
    h = UpstreamHealth()
    results = [ok for _ in range(5) for ok in (True, False)]  # never two failures in a row
    ejected = [apply_result(h, ok, 1.0, RATE) for ok in results]
    assert ejected == [False] * 9 + [True]  # 5 of 10 failed: the rate trips at request 10
    assert h.ejection_cause == "failure rate 5/10 requests in 10 s"


def test_failure_rate_needs_enough_requests_and_windows_reset() -> None:
    h = UpstreamHealth()
    assert not any(apply_result(h, False, 1.0, RATE) for _ in range(9))  # 9 < 10 requests
    assert not apply_result(h, True, 12.0, RATE)  # a new window: the old failures are gone
    assert h.window_requests == 1 and h.window_failures == 0


def test_may_eject_false_holds_the_ejection() -> None:
    h = UpstreamHealth()
    assert not any(apply_result(h, False, 0, OUT, may_eject=False) for _ in range(5))
    assert h.healthy(0)


def test_ejection_fields_say_time_left_why_and_how_often() -> None:
    h = UpstreamHealth()
    for _ in range(3):
        apply_result(h, False, 0, OUT)
    assert h.ejection_fields(2.96) == {
        "ejected_s": 7.0,
        "ejection_cause": "3 consecutive failed requests",
        "times_ejected": 1,
    }
    # Over: no time left and no cause, but the count stays.
    assert h.ejection_fields(11) == {"ejected_s": 0.0, "ejection_cause": None, "times_ejected": 1}
