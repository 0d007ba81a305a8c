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
    # Each return is followed by failures within one base ejection (10 s): not recovered.
    h = UpstreamHealth()
    apply_probe(h, True, 1.0, None, HC)
    assert not apply_result(h, False, 0, OUT) and not apply_result(h, False, 0, OUT)
    assert apply_result(h, False, 0, OUT)  # third consecutive failure ejects for 10 s
    assert not h.healthy(5) and h.healthy(10)
    for _ in range(3):
        apply_result(h, False, 15, OUT)
    assert h.ejected_until == 35  # second ejection: 2 x 10 s
    for _ in range(3):
        apply_result(h, False, 44, OUT)
    assert h.ejected_until == 74  # third: 3 x 10 s (the cap, 35 s, not reached)
    for _ in range(3):
        apply_result(h, False, 80, OUT)
    assert h.ejected_until == 115  # fourth: 4 x 10 s, capped at 35 s


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
        apply_result(h, False, 12, OUT)  # 7 s after the early end: the backoff climbs
    assert h.ejected_until == 32
    assert ejection_over(h, 32)  # its time ran out: told once
    assert not ejection_over(h, 33)


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


# --- the backoff's decay --------------------------------------------------------------------

DAY = 86_400.0
DEFAULT_OUT = OutlierSection()  # 5 in a row, 30 s x multiplier, capped at 300 s


def _burst(h: UpstreamHealth, now: float, cfg: OutlierSection = DEFAULT_OUT) -> float:
    """Traffic that goes well, then a short failure burst that ejects: the ejection's length."""
    for _ in range(50):
        assert not apply_result(h, True, now, cfg)
    ejected = [apply_result(h, False, now, cfg) for _ in range(cfg.consecutive_failures)]
    assert ejected[-1] and not any(ejected[:-1])
    return h.ejected_until - now


def test_incidents_days_apart_are_each_a_first_ejection() -> None:
    # A day back in rotation is thousands of base ejections without one: the multiplier is
    # back to 0 each time, so the twelfth incident is out for 30 s, not the 300 s cap.
    h = UpstreamHealth()
    lengths = [_burst(h, day * DAY) for day in range(12)]
    assert lengths == [30.0] * 12
    assert h.times_ejected == 12  # the ops views still say how often


def test_bursts_close_together_still_escalate_up_to_the_cap() -> None:
    h = UpstreamHealth()
    now, lengths = 0.0, []
    for _ in range(12):
        lengths.append(_burst(h, now))
        now = h.ejected_until + 29  # back for less than one base ejection each time
    assert lengths == [30.0 * n for n in range(1, 11)] + [300.0, 300.0]


def test_the_multiplier_drops_one_per_base_ejection_in_rotation() -> None:
    h = UpstreamHealth()
    now = 0.0
    for _ in range(3):  # 30, 60, 90 s
        _burst(h, now)
        now = h.ejected_until
    assert h.backoff == 3
    # 65 s back (two whole periods of 30 s): 3 - 2, + 1 for this ejection = 2 -> 60 s.
    assert _burst(h, now + 65) == 60.0
    now = h.ejected_until
    assert _burst(h, now + 30) == 60.0  # one period: 2 - 1 + 1


def test_from_the_cap_one_quiet_period_already_shortens_the_next() -> None:
    # Twenty ejections in a row do not bank twenty periods to wait off: the multiplier stops
    # at the cap's (300 / 30 = 10).
    h = UpstreamHealth()
    now = 0.0
    for _ in range(20):
        _burst(h, now)
        now = h.ejected_until
    assert h.backoff == 10 and h.times_ejected == 20
    assert _burst(h, now + 30) == 300.0  # 10 - 1 + 1: at the cap still
    assert _burst(h, h.ejected_until + 60) == 270.0  # 10 - 2 + 1


def test_failing_while_the_cap_holds_it_in_is_no_quiet_time() -> None:
    # Kept in rotation by outlier.max_ejected_share, failing every request for minutes: the
    # multiplier decayed all that time, and the next ejection was one base_ejection_s.
    h = UpstreamHealth()
    now = 0.0
    for _ in range(2):  # 30, 60 s
        _burst(h, now)
        now = h.ejected_until
    for t in range(0, 300, 10):  # five minutes of failures, the pool's cap full
        assert not apply_result(h, False, now + t, DEFAULT_OUT, may_eject=False)
    assert apply_result(h, False, now + 300, DEFAULT_OUT)  # room again: out
    assert h.ejected_until - (now + 300) == 90.0  # 2 + 1, not 0 + 1


def test_an_early_end_starts_the_quiet_time_then() -> None:
    h = UpstreamHealth()
    _burst(h, 0)
    _burst(h, 30)  # at its return: 60 s, until 90
    assert end_ejection(h, 40)  # a completion probe: back at 40, not 90
    assert _burst(h, 40 + 60) == 30.0  # two quiet periods since 40: 2 - 2 + 1


# --- outcomes while ejected -----------------------------------------------------------------


def test_failures_during_an_ejection_do_not_count_after_it() -> None:
    # 20 requests in flight fail: 5 eject, 15 land during the ejection (the same broken
    # backend, or retries of them). After the return the threshold applies afresh.
    h = UpstreamHealth()
    ejected = [apply_result(h, False, 1.0, DEFAULT_OUT) for _ in range(20)]
    assert ejected == [False] * 4 + [True] + [False] * 15
    assert h.passive_failures == 0 and h.window_requests == 0
    back = h.ejected_until
    assert not apply_result(h, False, back, DEFAULT_OUT)  # one failure: 1 of 5
    assert h.healthy(back)
    assert [apply_result(h, False, back, DEFAULT_OUT) for _ in range(4)] == [False] * 3 + [True]
    assert h.ejection_cause == "5 consecutive failed requests"  # not "20"


def test_outcomes_during_an_ejection_do_not_feed_the_failure_rate() -> None:
    h = UpstreamHealth()
    for _ in range(3):
        apply_result(h, False, 0, OUT)  # ejected until 10
    for t in (1.0, 5.0, 9.0):
        assert not apply_result(h, False, t, RATE) and not apply_result(h, True, t, OUT)
    assert (h.window_requests, h.window_failures, h.passive_failures) == (0, 0, 0)


# --- not yet probed -------------------------------------------------------------------------


def test_one_added_at_run_time_waits_for_its_first_probe() -> None:
    start_up, joined = UpstreamHealth(), UpstreamHealth(await_probe=True)
    assert start_up.healthy(0) and start_up.probe_ok()
    assert not apply_probe(start_up, True, 3.0, None, HC)  # confirmed: no change to tell
    assert not joined.healthy(0) and not joined.probe_ok()
    assert not apply_probe(joined, False, None, "connection refused", HC)  # still out
    assert not joined.healthy(0)
    joined = UpstreamHealth(await_probe=True)
    assert apply_probe(joined, True, 3.0, None, HC)  # the first answer decides: in
    assert joined.healthy(0) and joined.rtt_ms == 3.0
