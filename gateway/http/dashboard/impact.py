"""What an operator's change would do to the traffic, said before they confirm it: "eu-central-1
carries 42 % of requests in the last minute (1,234 of 2,938); they will move to us-east-1
(80 %), ap-southeast-1 (20 %)".

The router is pure, so the answer is the router's own: each place and model that sent requests
in the last minute is routed on today's snapshot and on the snapshot as the change would make
it, with the same random draws for both (so identical snapshots give identical answers, and the
difference is the change's alone), and the requests follow the difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.defaults import DASHBOARD_SHARE_WINDOW_S
from gateway.http.dashboard.window import Window
from gateway.routing.model import RequestFacts, Snapshot, UpstreamView
from gateway.routing.policy import Policy
from gateway.routing.router import rank
from gateway.traffic import NOT_SERVED, ServedKey
from geodb.location import Location

MAX_KEYS = 200  # the busiest (place, model) pairs; the rest follow them in proportion
REFUSED = "nowhere"  # no upstream left for them: 503


def member_of(view_id: str, uid: str) -> bool:
    """``view_id`` is upstream ``uid`` or one of its DNS-discovered members (``uid@addr``)."""
    return view_id == uid or view_id.startswith(uid + "@")


def changed_snapshot(
    snap: Snapshot,
    changes: Mapping[str, Mapping[str, Any]],
    shares: Mapping[str, float] | None = None,
) -> Snapshot:
    """``snap`` with ``changes`` (upstream id -> {weight, bias_ms, drained}) applied. A DNS
    member weighs its share of its upstream's weight (SRV weights: the store's
    member_shares), so a new weight reaches it times that share, as the store's expand does."""
    views: list[UpstreamView] = []
    for v in snap.upstreams:
        found = next(((uid, c) for uid, c in changes.items() if member_of(v.id, uid)), None)
        if found is None:
            views.append(v)
            continue
        uid, change = found
        if "weight" in change and v.id != uid:
            change = {**change, "weight": change["weight"] * (shares or {}).get(v.id, 1.0)}
        views.append(replace(v, **change))
    return Snapshot(tuple(views), snap.regions, snap.in_flight)


def _shares(loc: Location, model: str, snap: Snapshot, policy: Policy) -> dict[str, float]:
    """Where a place's requests for ``model`` go, as shares: the router's order, and within
    its tolerance band each upstream's share of the band's weight, which is what the power of
    two choices gives when no load tips it (gateway.routing.router._p2c); under load the less
    busy of two takes more. Computed, not drawn: 16 random draws a place named a different
    split at each look."""
    ranked = rank(RequestFacts(model, loc), snap, policy)
    band = ranked.order[: len(ranked.band)]
    if len(band) < 2:
        chosen = ranked.chosen
        return {chosen.upstream.id if chosen else REFUSED: 1.0}
    total = sum(c.upstream.weight for c in band)  # > 0: standbys are in no band with others
    out: dict[str, float] = {}
    for c in band:
        out[c.upstream.id] = out.get(c.upstream.id, 0.0) + c.upstream.weight / total
    return out


def flows(
    served: Mapping[ServedKey, int], before: Snapshot, after: Snapshot, policy: Policy
) -> tuple[dict[str, float], dict[str, float]]:
    """(requests leaving each upstream, requests arriving at each upstream or REFUSED), per
    minute, for the traffic ``served``."""
    demand: dict[tuple[Location, str], int] = {}
    for (loc, uid, model), n in served.items():
        if uid != NOT_SERVED:
            demand[(loc, model)] = demand.get((loc, model), 0) + n
    busiest = sorted(demand.items(), key=lambda kv: -kv[1])
    counted = sum(n for _, n in busiest[:MAX_KEYS])
    scale = sum(demand.values()) / counted if counted else 1.0
    leaving: dict[str, float] = {}
    arriving: dict[str, float] = {}
    for (loc, model), n in busiest[:MAX_KEYS]:
        b = _shares(loc, model, before, policy)
        a = _shares(loc, model, after, policy)
        for where in b.keys() | a.keys():
            delta = (a.get(where, 0.0) - b.get(where, 0.0)) * n * scale
            if delta < 0:
                leaving[where] = leaving.get(where, 0.0) - delta
            elif delta > 0:
                arriving[where] = arriving.get(where, 0.0) + delta
    return leaving, arriving


def _takes(snap: Snapshot, model: str, regions: frozenset[str] | None = None) -> bool:
    return any(
        model in v.models and not v.drained and (regions is None or v.region in regions)
        for v in snap.upstreams
    )


def stranded(before: Snapshot, after: Snapshot, policy: Policy) -> list[str]:
    """What the change leaves with no undrained upstream, whatever the last minute's traffic:
    each model some upstream takes now and none would, everywhere or within a residency
    rule's regions. Traffic alone missed it where the worker that answered had seen none of
    those requests (each worker's window holds its own): a drain of the one EU region with a
    residency rule passed as "no request moves", and the next EU request got a 503."""
    out: list[str] = []
    for model in sorted({m for v in before.upstreams for m in v.models}):
        if _takes(before, model) and not _takes(after, model):
            out.append(f"model {model}")
            continue
        out += [
            f"model {model} for clients under residency rule {rule.name}"
            for rule in policy.residency
            if _takes(before, model, rule.regions) and not _takes(after, model, rule.regions)
        ]
    return out


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "0 %"


def what_if(
    window: Window,
    snap: Snapshot,
    policy: Policy,
    targets: list[str],
    changes: Mapping[str, Mapping[str, Any]],
    shares: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The traffic ``changes`` would move, over the last minute; ``targets`` name what the
    operator changes (upstreams, or a region's upstreams); ``shares``: their DNS members'
    (changed_snapshot)."""
    served, total = Window.served(window.last(DASHBOARD_SHARE_WINDOW_S))
    carried = sum(n for (_, uid, _), n in served.items() if any(member_of(uid, t) for t in targets))
    after = changed_snapshot(snap, changes, shares)
    leaving, arriving = flows(served, snap, after, policy)
    lost = stranded(snap, after, policy)
    moving = sum(arriving.values())
    names = ", ".join(targets)
    verb = "carries" if len(targets) == 1 else "carry"
    text = (
        f"{names} {verb} {_pct(carried, total)} of requests in the last minute "
        f"({carried:,} of {total:,})"
    )
    if moving >= 0.5:
        into = sorted(arriving.items(), key=lambda kv: -kv[1])
        dest = ", ".join(f"{k} ({_pct(v, moving)})" for k, v in into)
        src = ", ".join(k for k, _ in sorted(leaving.items(), key=lambda kv: -kv[1]))
        # leaving names DNS members (``uid@addr``) where targets name their pool
        only_targets = all(any(member_of(k, t) for t in targets) for k in leaving)
        if only_targets and abs(moving - carried) <= max(1.0, 0.1 * carried):
            text += f"; they will move to {dest}"  # what they carried is what leaves them
        else:
            # Routed as the snapshot stands now, which may differ from the last minute (a
            # backend that just died sent its clients here).
            text += f"; routed as now, about {moving:,.0f} a minute will move from {src} to {dest}"
        if REFUSED in arriving:
            text += f" — {arriving[REFUSED]:,.0f} a minute would find NO upstream and get 503"
    elif carried:
        # What it carried in the last minute, routing no longer sends it: an ejection, a
        # failed health check or a drain since (said, or "no request moves" beside a share
        # it carried reads as a contradiction), or the change keeps those requests where
        # they are.
        text += "; routed as now, none of it moves"
        ours = [v for v in snap.upstreams if any(member_of(v.id, t) for t in targets)]
        if ours and not any(v.healthy and not v.drained for v in ours):
            text += f" ({names} {'is' if len(targets) == 1 else 'are'} out of rotation already)"
    else:
        text += "; at the last minute's traffic, no request moves"
    if lost:
        text += f" — it leaves NO upstream for {'; '.join(lost)}: their requests get 503"
    return {
        "targets": targets,
        "total": total,
        "carried": carried,
        "share": round(carried / total, 3) if total else 0.0,
        "leaving": {k: round(v, 1) for k, v in leaving.items()},
        "arriving": {k: round(v, 1) for k, v in arriving.items()},
        "stranded": lost,
        "text": text + ".",
    }
