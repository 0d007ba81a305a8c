"""The state of the world at a glance, as one JSON-ready dict: regions and their upstreams
(health with the fleet's votes, RTT, queue, first-token percentiles, in-flight, requests/s,
errors, ejections and why), where the traffic comes from, and whether shared state is fresh.

Built by the sampler once a second (``sampler``); the page and ``geogate ctl top`` read it."""

from __future__ import annotations

import time
from typing import Any

from gateway.defaults import DASHBOARD_RATE_WINDOW_S, DASHBOARD_SHARE_WINDOW_S
from gateway.http.dashboard.window import Tick, Window, quantiles
from gateway.routing.model import UpstreamView
from gateway.runtime import Runtime
from gateway.traffic import NOT_SERVED

MAX_PLACES_SHOWN = 300  # map points: the busiest places; the rest are a few requests each


def iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def upstream_state(rt: Runtime, v: UpstreamView, now: float) -> tuple[str, str | None]:
    """(state, why): healthy, standby, drained, down (its health probe fails), joining (added
    at run time, no probe has answered yet: not routed), ejected (for failed requests) or
    fleet-down. A probe that fails is the stronger word: "down" then, with
    the ejection, if any, in the why."""
    store = rt.store
    h = store.health(v.id)
    if v.drained:
        return "drained", _drain_why(rt, v)
    ejected = (
        f"ejected after {h.ejection_cause or 'failed requests'}; back in "
        f"{h.ejected_until - now:.0f} s"
        if h.ejected(now)
        else None
    )
    if h.probed_healthy is False:
        if h.consecutive_ok and h.last_probe_error is None:
            # Back, waiting for health.healthy_threshold good probes in a row: "failed" said
            # the opposite of what the last probe found.
            need = rt.config.health.healthy_threshold
            probe = f"recovering: {h.consecutive_ok} of {need} good health probes"
        else:
            probe = f"health probe: {h.last_probe_error or 'failed'}"
        return "down", f"{probe}; {ejected}" if ejected else probe
    if not h.probe_ok():
        return "joining", "added while running: routed once its first health probe answers"
    if ejected:
        return "ejected", ejected
    if v.id in store.fleet_down:
        return "fleet-down", "most gateways of the fleet see it down"
    if v.weight == 0:
        return "standby", "weight 0: used only when nothing else is left"
    return "healthy", None


def _declared_drain(rt: Runtime, v: UpstreamView) -> bool:
    """The upstream's own drain (``v.drained`` is its own or its region's); a DNS member
    ("uid@addr") has its upstream's. In a drained region every flag is set (the region's drain
    as the release before drained_regions wrote it): its own is whether the region lists it."""
    uid = v.id.partition("@")[0]
    held = rt.config.drained_regions.get(v.region)
    if held is not None:
        return uid in held
    return any(u.drained for u in rt.config.upstreams if u.id == uid)


def _drain_why(rt: Runtime, v: UpstreamView) -> str:
    # Which drain holds it says which undrain brings it back: its own, its region's, or both.
    if v.region not in rt.config.drained_regions:
        return "drained by an operator"
    if _declared_drain(rt, v):
        return f"drained by an operator, and its region {v.region} too"
    return f"its region {v.region} is drained"


def upstream_row(
    rt: Runtime, v: UpstreamView, rates: list[Tick], ttft: dict[str, list[float]], now: float
) -> dict[str, Any]:
    store = rt.store
    h = store.health(v.id)
    ls = store.load(v.id)
    span = Window.span(rates) or 1.0
    attempts, failures = Window.attempts(rates, v.id)
    p50, p99 = quantiles(sorted(ttft.get(v.id, ())))
    state, why = upstream_state(rt, v, now)
    return {
        "id": v.id,
        "region": v.region,
        "state": state,
        "why": why,
        # Its own flag, what its Drain / Undrain button changes (state says drained with
        # its region's drain too).
        "drained": _declared_drain(rt, v),
        "models": sorted(v.models),
        "weight": v.weight,
        "bias_ms": v.bias_ms,
        "rtt_ms": _r(v.rtt_ms),
        "queue_depth": v.queue_depth,
        "kv_usage": ls.kv_usage if ls else None,
        "backend_ttft_ms": _r(v.ttft_ms),  # the backend's own (load poll), when it reports it
        "ttft_p50_ms": p50,  # measured here, streams only, over the last minute
        "ttft_p99_ms": p99,
        "in_flight": store.in_flight().get(v.id, 0),
        "rps": round(attempts / span, 2),
        "error_rate": round(failures / attempts, 3) if attempts else None,
        **h.ejection_fields(now),
        "probe_error": h.last_probe_error,
        # Who sees it how (fleet mode): gateway id -> healthy.
        "votes": dict(store.observations.get(v.id, {})),
        "fleet_down": v.id in store.fleet_down,
    }


def region_state(ups: list[dict[str, Any]]) -> str:
    if not ups:
        return "empty"
    states = {u["state"] for u in ups}
    if states == {"drained"}:
        return "drained"
    routable = [u for u in ups if u["state"] in ("healthy", "standby")]
    if not routable:
        return "down"
    return (
        "healthy"
        if len(routable) + sum(u["state"] == "drained" for u in ups) == len(ups)
        else "degraded"
    )


def region_rows(
    rt: Runtime, rows: list[dict[str, Any]], ttft: dict[str, list[float]]
) -> list[dict[str, Any]]:
    out = []
    for r in rt.config.regions:
        ups = [u for u in rows if u["region"] == r.id]
        p50, p99 = quantiles(sorted(ms for u in ups for ms in ttft.get(u["id"], ())))
        rps = sum(u["rps"] for u in ups)
        failed = sum(u["rps"] * (u["error_rate"] or 0) for u in ups)
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "latitude": r.latitude,
                "longitude": r.longitude,
                "state": region_state(ups),
                # What the region's Drain / Undrain button changes: its drain as a region (one
                # whose upstreams were each drained on their own is not; its state says so).
                "drained": r.id in rt.config.drained_regions,
                "upstreams": [u["id"] for u in ups],
                "rps": round(rps, 2),
                "error_rate": round(failed / rps, 3) if rps else None,
                "ttft_p50_ms": p50,
                "ttft_p99_ms": p99,
                "in_flight": sum(u["in_flight"] for u in ups),
            }
        )
    return out


def place_rows(rt: Runtime, ticks: list[Tick]) -> list[dict[str, Any]]:
    """Where requests come from: one point per (country, city), sized by requests/s, with the
    regions that served them (the map's flows)."""
    region_of = {u.id: u.region for u in rt.store.upstreams()}
    span = Window.span(ticks) or 1.0
    served, _ = Window.served(ticks)
    places: dict[tuple[str, str], dict[str, Any]] = {}
    for (loc, uid, _model), n in served.items():
        key = (loc.country or "", loc.city or "")
        p = places.get(key)
        if p is None:
            p = places[key] = {
                "country": loc.country,
                "city": loc.city,
                "latitude": round(loc.latitude, 2),
                "longitude": round(loc.longitude, 2),
                "source": str(loc.source),
                "requests": 0,
                "to": {},
            }
        p["requests"] += n
        where = region_of.get(uid, NOT_SERVED) if uid != NOT_SERVED else NOT_SERVED
        p["to"][where] = p["to"].get(where, 0) + n
    rows = sorted(places.values(), key=lambda p: -p["requests"])[:MAX_PLACES_SHOWN]
    for p in rows:
        p["rps"] = round(p.pop("requests") / span, 2)
        p["to"] = {k: round(n / span, 2) for k, n in p["to"].items()}
    return rows


def shared_state(rt: Runtime) -> dict[str, Any]:
    """What /readyz says after ``degraded:``, for the page's banner. Beside "stale since T":
    on what the gateway routes meanwhile (``synced``: false, its own file, without the
    fleet's drains and weights, not a last snapshot), and a fleet document in Redis it
    refuses (``refused``: why; it routes on the one before). A page that said only "shared
    state: fresh" while the gateway ignored the fleet's document hid that from the operator
    whose changes the admin API then refused."""
    store = rt.store
    if not rt.config.redis.url:
        return {"mode": "local", "stale_since": None}
    stale = store.stale_since
    return {
        "mode": "stale" if stale is not None else "fresh",
        "stale_since": None if stale is None else iso(stale),
        "gateway_id": getattr(store, "gateway_id", None),
        "synced": store.synced_once,
        "refused": store.refused,
    }


def point_rows(rt: Runtime, now: float) -> dict[str, Any]:
    """Of the state, what a sparkline point reads (sampler.point), as ``build`` gives it: the
    sampler's each second while nobody looks, when the rest would be built for no one."""
    store = rt.store
    in_flight = store.in_flight()
    rows = [
        {
            "id": v.id,
            "region": v.region,
            "rtt_ms": _r(v.rtt_ms),
            "queue_depth": v.queue_depth,
            "in_flight": in_flight.get(v.id, 0),
        }
        for v in store.snapshot(now).upstreams
    ]
    regions = [
        {"id": r.id, "upstreams": [u["id"] for u in rows if u["region"] == r.id]}
        for r in rt.config.regions
    ]
    return {"regions": regions, "upstreams": rows}


def build(rt: Runtime, window: Window, now: float) -> dict[str, Any]:
    """The whole state; ``now`` is the monotonic clock (health and ejections use it)."""
    store = rt.store
    rates = window.last(DASHBOARD_RATE_WINDOW_S)
    ttft = Window.ttft(window.last(DASHBOARD_SHARE_WINDOW_S))
    snap = store.snapshot(now)
    rows = [upstream_row(rt, v, rates, ttft, now) for v in snap.upstreams]
    config = rt.config
    return {
        "at": iso(time.time()),
        "gateway": {
            "region": config.gateway.region,
            "origin": config.gateway.origin,
            "version": store.version,
            "draining": rt.draining,
            # The worker this page's numbers are from (requests/s, shares, ejections): each
            # worker counts its own traffic. None with one worker.
            "worker": rt.worker,
            "workers": config.server.workers,
        },
        "shared": shared_state(rt),
        "models": sorted({m for u in snap.upstreams for m in u.models}),
        "regions": region_rows(rt, rows, ttft),
        "upstreams": rows,
        "places": place_rows(rt, rates),
        "unrouted_rps": unrouted_rps(rates),
    }


def unrouted_rps(ticks: list[Tick]) -> float:
    """5xx/s answered before any region was chosen (no upstream allowed for the model or the
    client's residency rule, the gateway full: ``region="-"`` in the metrics): a drained
    region's clients, refused, showed nowhere on the page. A client's 4xx (a model none
    serves) is no outage, and a failure at an upstream is its region's."""
    refused = sum(t.tally.unrouted for t in ticks)
    return round(refused / (Window.span(ticks) or 1.0), 2)
