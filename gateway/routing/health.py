"""Health of one upstream: active-probe thresholds, RTT EWMA, passive failure ejection.

Pure state machines; the clock is passed in. The prober and the proxy feed them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config import HealthSection, OutlierSection


@dataclass(slots=True)
class UpstreamHealth:
    # None until the first probe answers; the first probe result then decides without waiting
    # for a threshold. What None means depends on await_probe.
    probed_healthy: bool | None = None
    # False for the upstreams present at start-up: not yet probed counts as healthy, so a
    # fresh gateway can serve at once (the start-up's first look probes them before serving
    # anyway). True for one added at run time (a DNS member, a fleet config change): it may
    # have been published before its server finished loading, so it takes no traffic until a
    # probe has seen it answer.
    await_probe: bool = False
    consecutive_ok: int = 0
    consecutive_fail: int = 0
    rtt_ms: float | None = None
    last_probe_error: str | None = None
    passive_failures: int = 0  # consecutive failed requests, outside ejections
    times_ejected: int = 0  # how often, ever: what the ops views show
    # The ejection time's multiplier (Envoy's), apart from times_ejected: each ejection raises
    # it, each base_ejection_s back in rotation without one lowers it (next_backoff).
    backoff: int = 0
    # Also when the last ejection ended, or the last one the pool's cap denied: the decay
    # counts from it.
    ejected_until: float = 0.0
    window_start: float = 0.0  # failure-rate window
    window_requests: int = 0
    window_failures: int = 0
    # Why the current ejection happened; cleared when its return is reported (ejection_over,
    # end_ejection), so each ejection and each return is told once.
    ejection_cause: str | None = None

    def probe_ok(self) -> bool:
        """The active probes' verdict, before any has answered too (see await_probe)."""
        if self.probed_healthy is None:
            return not self.await_probe
        return self.probed_healthy

    def healthy(self, now: float) -> bool:
        return self.probe_ok() and now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def ejection_fields(self, now: float) -> dict[str, object]:
        """Passive health as the ops views show it: seconds of ejection left (0: in
        rotation), why, how often."""
        return {
            "ejected_s": round(max(0.0, self.ejected_until - now), 1),
            "ejection_cause": self.ejection_cause if self.ejected(now) else None,
            "times_ejected": self.times_ejected,
        }


def apply_probe(
    h: UpstreamHealth, ok: bool, rtt_ms: float | None, error: str | None, cfg: HealthSection
) -> bool:
    """Apply one active probe result; True when the probes' verdict (probe_ok) changed: a
    first answer that confirms what was assumed changes nothing."""
    before = h.probe_ok()
    if ok:
        h.consecutive_ok += 1
        h.consecutive_fail = 0
        h.last_probe_error = None
        if rtt_ms is not None:
            a = cfg.rtt_ewma_alpha
            h.rtt_ms = rtt_ms if h.rtt_ms is None else a * rtt_ms + (1 - a) * h.rtt_ms
        if h.probed_healthy is None or h.consecutive_ok >= cfg.healthy_threshold:
            # Neither the ejection nor the run of failed requests ends here: /health can
            # answer while completions fail (a GPU out of memory). Only a probe that does
            # what failed ends an ejection early (end_ejection).
            h.probed_healthy = True
    else:
        h.consecutive_fail += 1
        h.consecutive_ok = 0
        h.last_probe_error = error
        if h.probed_healthy is None or h.consecutive_fail >= cfg.unhealthy_threshold:
            h.probed_healthy = False
    return before != h.probe_ok()


def apply_result(
    h: UpstreamHealth, ok: bool, now: float, cfg: OutlierSection, may_eject: bool = True
) -> bool:
    """Apply one proxied request's outcome; True when this ejected the upstream.

    Two triggers, as production proxies have: ``consecutive_failures`` in a row, or a failure
    rate of ``failure_rate_threshold`` over at least ``failure_rate_min_requests`` requests in
    the current window. ``may_eject`` is False when the pool's ejected share is at its cap.
    """
    if now < h.ejected_until:  # h.ejected(now), inline: this runs once per request
        # Outcomes while ejected do not count: they are the requests that were in flight when
        # it went out (or retries of them), failing for the reason it was ejected. Counted,
        # they made one failure after the return eject again, for longer. The run and the
        # window start afresh, from zero, when the ejection ends.
        return False
    if now - h.window_start >= cfg.failure_rate_window_s:
        h.window_start, h.window_requests, h.window_failures = now, 0, 0
    h.window_requests += 1
    if ok:
        h.passive_failures = 0
        return False
    h.passive_failures += 1
    h.window_failures += 1
    rate_tripped = (
        h.window_requests >= cfg.failure_rate_min_requests
        and h.window_failures >= cfg.failure_rate_threshold * h.window_requests
    )
    if h.passive_failures < cfg.consecutive_failures and not rate_tripped:
        return False
    if not may_eject:
        # Held in by the pool's cap, failing still: no quiet time in rotation, from which the
        # multiplier's decay counts (next_backoff). It decayed meanwhile, and an upstream that
        # failed every request for minutes was ejected again for one base_ejection_s.
        h.ejected_until = now
        return False
    h.ejection_cause = (
        f"{h.passive_failures} consecutive failed requests"
        if h.passive_failures >= cfg.consecutive_failures
        else f"failure rate {h.window_failures}/{h.window_requests} requests in "
        f"{cfg.failure_rate_window_s:g} s"
    )
    h.times_ejected += 1
    h.backoff = next_backoff(h, now, cfg)
    h.passive_failures = 0
    h.window_start, h.window_requests, h.window_failures = now, 0, 0
    # Back off as Envoy does: base x multiplier, capped (30, 60, 90 ... 300 s with the
    # defaults), so a backend that keeps failing after each return stays out longer.
    h.ejected_until = now + min(cfg.base_ejection_s * h.backoff, cfg.max_ejection_s)
    return True


def next_backoff(h: UpstreamHealth, now: float, cfg: OutlierSection) -> int:
    """The multiplier of an ejection starting at ``now``.

    Lowered by one for each whole ``base_ejection_s`` since the last ejection ended, then
    raised by one, as Envoy lowers its multiplier for each outlier-detection interval a host
    spends in rotation. Without the decay, incidents days apart added up until every
    ejection lasted ``max_ejection_s``. The period is base_ejection_s rather than Envoy's
    10 s interval: a backend that fails again within one base ejection of its return has not
    recovered, and its ejections still climb. Computed from timestamps: no timer.

    Never above the multiplier that reaches the cap (Envoy stops there too): beyond it, a
    long run of ejections would need as many quiet periods again before one got shorter.
    """
    quiet_periods = int(max(0.0, now - h.ejected_until) // cfg.base_ejection_s)
    capped = math.ceil(cfg.max_ejection_s / cfg.base_ejection_s)
    return min(max(0, h.backoff - quiet_periods) + 1, capped)


def end_ejection(h: UpstreamHealth, now: float) -> bool:
    """A probe that exercises what failed (a tiny completion) succeeded: the ejection ends
    now. True when there was one to end."""
    if not h.ejected(now):
        return False
    h.ejected_until = now  # when it returned: the multiplier's decay counts from here
    h.ejection_cause = None
    return True


def ejection_over(h: UpstreamHealth, now: float) -> bool:
    """True once, the first time it is asked after an ejection ran out its time: so the
    return is reported (a log line, the healthy gauge) without a timer per ejection."""
    if h.ejection_cause is None or h.ejected(now):
        return False
    h.ejection_cause = None
    return True
