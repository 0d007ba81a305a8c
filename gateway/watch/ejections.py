"""Ejections, told: one log line when an upstream is ejected for failed requests and one when
it is back in rotation, and the ``geogate_upstream_healthy`` gauge kept in step with what the
router sees (probe health, ejection, the fleet's verdict).

The proxy reports every request's outcome through ``record_result``; the prober reports an
ejection's end (its time ran out, or a completion probe succeeded). An ejection runs out on
the clock, with nobody to notice: whichever of the two next looks at that upstream tells it.

Each ``/metrics`` scrape first calls ``reconcile_gauges``: the upstream set changes under the
gauges (an admin change, the fleet's config from Redis, DNS discovery's members), and a series
nobody sets any more would be exposed at its last value for ever. The per-upstream counters
(attempts, ejections) follow the same set: made at 0 for each upstream there is, so that an
``increase()`` sees an upstream's first event, and removed with the upstream, so that DNS
members (``pool@10.0.0.7:8000``) that come and go do not pile up series.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set

from prometheus_client import Counter, Gauge

from gateway.logs import event
from gateway.metrics import ABORT_CAUSES, ATTEMPT_OUTCOMES
from gateway.runtime import Runtime

log = logging.getLogger("geogate.health")


def routable(rt: Runtime, upstream_id: str, now: float) -> bool:
    """The store's view of one upstream, as the snapshot gives it to the router: probed
    healthy, not ejected, not down for the fleet."""
    store = rt.store
    return store.health(upstream_id).healthy(now) and upstream_id not in store.fleet_down


def set_gauge(rt: Runtime, upstream_id: str, region: str, now: float) -> None:
    rt.metrics.healthy.labels(upstream_id, region).set(1 if routable(rt, upstream_id, now) else 0)
    set_model_gauges(rt, now)


def set_model_gauges(rt: Runtime, now: float) -> None:
    """Routable upstreams per model, recounted over every upstream (a handful to a few dozen,
    once per probe and per scrape).

    Every model the config declares is set, 0 when no upstream of it is left (a discovery
    name that resolves to nothing): counting only the upstreams there are would leave its
    last count, and the "no upstream serves the model" alert would never fire just then. A
    model no upstream declares any more has nothing to alert on: its series goes."""
    per_model = dict.fromkeys((m for u in rt.store.config.upstreams for m in u.models), 0)
    for u in rt.store.upstreams():
        # Drained: healthy, but the router sends it nothing (geogate_upstream_healthy keeps it
        # 1, so a drained region does not page as down; a model left with drained upstreams
        # only gets 503, and pages here).
        up = not u.drained and routable(rt, u.id, now)
        for model in u.models:
            per_model[model] = per_model.get(model, 0) + up
    for model, count in per_model.items():
        rt.metrics.model_healthy.labels(model).set(count)
    _prune(rt.metrics.model_healthy, ("model",), {(m,) for m in per_model})


def reconcile_gauges(rt: Runtime, now: float) -> None:
    """The per-upstream and per-model gauges, and the per-upstream and per-region counters,
    against the upstreams there are now, before a scrape: the series of an upstream gone (or
    moved to another region) are removed (a gone one's in-flight series once its requests
    end), so an alert on it resolves and member churn does not grow the label sets without
    bound; the counters of those there are exist from 0.

    At scrape time rather than where the set changes: it changes in several places (the
    store's ``replace_config``, from the admin API, the fleet's Redis sync or DNS
    discovery), and a probe that was out when its upstream left sets its gauges again after
    the change; before each exposition catches all of them."""
    m = rt.metrics
    current = {(u.id, u.region) for u in rt.store.upstreams()}
    for gauge in (m.healthy, m.rtt, m.ejections):
        _prune(gauge, ("upstream", "region"), current)
    _in_flight_of_removed(m.in_flight, current, rt.store.in_flight())
    m.attempts.keep(0, {uid for uid, _ in current})
    m.answered_whole.keep(0, {uid for uid, _ in current})
    regions = {region for _, region in current}
    m.stream_aborted.keep(1, regions)
    # Counters at 0 before their first event (a lookup each when they are there already).
    for uid, region in current:
        m.ejections.labels(uid, region)
        m.answered_whole.labels(uid)  # from 0: increase() sees an upstream's first one
        for outcome in ATTEMPT_OUTCOMES:
            m.attempts.labels(uid, outcome)
    for region in regions:
        for cause in ABORT_CAUSES:
            for stream in ("true", "false"):  # streams, and whole answers cut mid-body
                m.stream_aborted.labels(cause, region, stream)
    set_model_gauges(rt, now)


def _prune(gauge: Gauge | Counter, names: tuple[str, ...], keep: Set[tuple[str, ...]]) -> None:
    """Remove the series whose label values (``names``, in the metric's own label order, as
    ``remove`` takes them) are not in ``keep``."""
    for metric in gauge.collect():
        for sample in metric.samples:
            values = tuple(sample.labels[n] for n in names)
            if values not in keep:
                gauge.remove(*values)


def _in_flight_of_removed(
    gauge: Gauge, current: Set[tuple[str, str]], n: Mapping[str, int]
) -> None:
    """A removed upstream's series stays at its requests still running until they end: the
    per-upstream sum stays geogate_requests_in_flight's (it dropped them at once). One still
    there under another region goes: its count is the current series' (refresh sets it)."""
    ids = {uid for uid, _ in current}
    for metric in gauge.collect():
        for sample in metric.samples:
            key = (sample.labels["upstream"], sample.labels["region"])
            if key in current:
                continue
            if n.get(key[0]) and key[0] not in ids:
                gauge.labels(*key).set(n[key[0]])
            else:
                gauge.remove(*key)


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
