"""Ejections, told: one log line when an upstream is ejected for failed requests and one when
it is back in rotation, and the ``geogate_upstream_healthy`` gauge kept in step with what the
router sees (probe health, ejection, the fleet's verdict).

The proxy reports every request's outcome through ``record_result``; the prober reports an
ejection's end (its time ran out, or a completion probe succeeded). An ejection runs out on
the clock, with nobody to notice: whichever of the two next looks at that upstream tells it.
"""

from __future__ import annotations

import logging

from gateway.logs import event
from gateway.runtime import Runtime

log = logging.getLogger("geogate.health")


def routable(rt: Runtime, upstream_id: str, now: float) -> bool:
    """The store's view of one upstream, as the snapshot gives it to the router: probed
    healthy, not ejected, not down for the fleet."""
    store = rt.store
    return store.health(upstream_id).healthy(now) and upstream_id not in store.fleet_down


def set_gauge(rt: Runtime, upstream_id: str, region: str, now: float) -> None:
    rt.metrics.healthy.labels(upstream_id, region).set(1 if routable(rt, upstream_id, now) else 0)
    # Recounted over every upstream: a handful to a few dozen, once per probe.
    per_model: dict[str, int] = {}
    for u in rt.store.upstreams():
        up = routable(rt, u.id, now)
        for model in u.models:
            per_model[model] = per_model.get(model, 0) + up
    for model, count in per_model.items():
        rt.metrics.model_healthy.labels(model).set(count)


def record_result(rt: Runtime, upstream_id: str, region: str, ok: bool, now: float) -> None:
    """One proxied request's outcome, into passive health."""
    store = rt.store
    if store.ejection_over(upstream_id, now):  # told before a new ejection can overwrite it
        _back(rt, upstream_id, region, now, "ejection time over")
    if store.record_result(upstream_id, ok, now):
        h = store.health(upstream_id)
        log.warning(
            "upstream %s (%s) ejected for %.0f s after %s",
            upstream_id,
            region,
            h.ejected_until - now,
            h.ejection_cause,
            extra=event(
                "upstream-ejected",
                reason=h.ejection_cause,
                upstream=upstream_id,
                region=region,
                ejected_s=round(h.ejected_until - now, 1),
            ),
        )
        rt.metrics.ejections.labels(upstream_id, region).inc()
        set_gauge(rt, upstream_id, region, now)


def check_return(rt: Runtime, upstream_id: str, region: str, now: float) -> bool:
    """Tell an ejection that ran out its time (the prober asks once per probe); True when
    it did, and so set the gauge."""
    if rt.store.ejection_over(upstream_id, now):
        _back(rt, upstream_id, region, now, "ejection time over")
        return True
    return False


def end_by_probe(rt: Runtime, upstream_id: str, region: str, now: float) -> None:
    """A completion probe succeeded: the ejection ends early."""
    if rt.store.end_ejection(upstream_id, now):
        _back(rt, upstream_id, region, now, "completion probe succeeded")


def _back(rt: Runtime, upstream_id: str, region: str, now: float, why: str) -> None:
    log.info(
        "upstream %s (%s) back in rotation: %s",
        upstream_id,
        region,
        why,
        extra=event("upstream-returned", reason=why, upstream=upstream_id, region=region),
    )
    set_gauge(rt, upstream_id, region, now)
