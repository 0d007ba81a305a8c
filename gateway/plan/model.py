"""The planner's arithmetic: for a placement (a set of candidate regions) the RTT each
continent's demand sees, the instances each region needs with N+1 headroom, the monthly bill,
and across placements the Pareto front of cost against latency. Pure: no I/O.

Latency uses the router's own distance model (geodb.distance.est_rtt_ms): demand goes to its
nearest region in the placement, as geogate routes an idle fleet. When a region fails, its
demand lands on the next-nearest region of the placement, and every region is sized for the
worst single failure (or for normal load if that is more): N+1 across regions, not within one.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from gateway.errors import PlanInvalid
from gateway.plan.inputs import Candidate, Demand, PlanInput
from geodb.distance import est_rtt_ms

MAX_PLACEMENTS = 4096  # every subset of up to 12 candidates; beyond, gateway.plan.search
TB = 1e12
MAX_INSTANCES = 1_000_000  # in one region: no cloud region holds a million GPU instances


@dataclass(frozen=True)
class RegionLine:
    id: str
    instance: str
    instances: int
    peak_tokens_per_s: float  # the worst case it is sized for (normal or a failover)
    sized_for: str  # "normal" or "failover of <region>"
    compute_usd: float
    egress_tb: float
    egress_usd: float
    storage_usd: float

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.egress_usd + self.storage_usd


@dataclass(frozen=True)
class Placement:
    regions: tuple[str, ...]
    lines: tuple[RegionLine, ...]
    rtt_p50_ms: dict[str, float]  # per continent, over its demand
    rtt_p95_ms: dict[str, float]
    overall_p95_ms: float
    meets: bool
    misses: tuple[str, ...] = ()
    pareto: bool = False
    assignment: dict[str, str] = field(default_factory=dict)  # demand label -> region

    @property
    def monthly_usd(self) -> float:
        # fsum: exact, so the same placement costs the same whatever order its regions are
        # listed in (a last-digit difference would break a tie one way or the other)
        return math.fsum(x.total_usd for x in self.lines)

    def ttft_ms(self, backend_ttft_ms: float) -> dict[str, float]:
        """Predicted TTFT p50 per continent: network round trip plus the backend's TTFT."""
        return {c: v + backend_ttft_ms for c, v in self.rtt_p50_ms.items()}


def rtt(d: Demand, c: Candidate) -> float:
    return est_rtt_ms(d.lat, d.lon, c.lat, c.lon)


def weighted_percentile(pairs: Sequence[tuple[float, float]], q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (weights: requests)."""
    ordered = sorted(pairs)
    total = sum(w for _, w in ordered)
    if total <= 0:
        return ordered[-1][0] if ordered else 0.0
    acc = 0.0
    for value, w in ordered:
        acc += w
        if acc >= q * total - 1e-9:
            return value
    return ordered[-1][0]


def load_tokens_per_s(d: Demand, p: PlanInput) -> float:
    """Peak decode-equivalent tokens/s: output tokens plus prompt tokens at their weight."""
    per_request = d.output_tokens + p.input_token_weight * d.input_tokens
    return d.requests_per_day * per_request / 86400.0 * d.peak_factor


def egress_tb_per_month(d: Demand, p: PlanInput) -> float:
    days = p.hours_per_month / 24.0
    return d.requests_per_day * d.output_tokens * p.bytes_per_output_token * days / TB


Near = list[tuple[int, int]]  # per demand row: the ranks of its nearest and next-nearest region


class Table:
    """What every evaluation of one input shares, computed once (a search evaluates thousands
    of placements, each of which recomputed every RTT for every failover case): each demand
    row's load and egress (checked), each candidate's RTT to each row, and each row's order of
    the candidates by RTT, then id. A placement's nearest region for a row is its member of
    lowest rank there, the one its demand fails over to the next: the same choice as taking
    the least (RTT, id) among the regions left, so the same figures to the last digit."""

    def __init__(self, p: PlanInput, cands: Sequence[Candidate] | None = None) -> None:
        _check_demand(p)
        rows = range(len(p.demand))
        self.cands = p.candidates if cands is None else tuple(cands)
        self.by_id = {c.id: c for c in self.cands}
        self.load = [load_tokens_per_s(d, p) for d in p.demand]
        self.egress = [egress_tb_per_month(d, p) for d in p.demand]
        self.rtt = {c.id: [rtt(d, c) for d in p.demand] for c in self.cands}
        self.where = {c.id: f"regions[{p.candidates.index(c)}] ({c.id})" for c in self.cands}
        self.order = [[c for _, c in sorted((v[i], c) for c, v in self.rtt.items())] for i in rows]
        self.rank = {c.id: [0] * len(rows) for c in self.cands}
        for i, row in enumerate(self.order):
            for r, cid in enumerate(row):
                self.rank[cid][i] = r
        self.none = len(self.cands)  # the next-nearest of a placement of one region: none

    def nearest(self, ids: Sequence[str]) -> Near:
        """Per demand row, the ranks of the placement's nearest and next-nearest region."""
        if len(ids) == 1:
            return [(r, self.none) for r in self.rank[ids[0]]]
        return [(t[0], t[1]) for t in map(sorted, zip(*(self.rank[c] for c in ids), strict=True))]


def _served(t: Table, ids: Sequence[str], near: Near) -> dict[str, list[int]]:
    """Per region, the demand rows it serves (in demand order)."""
    served: dict[str, list[int]] = {c: [] for c in ids}
    for i, (f, _) in enumerate(near):
        served[t.order[i][f]].append(i)
    return served


def ordered_sum(values: Sequence[float], rows: Iterable[int]) -> float:
    """The values of these rows added one at a time, in order: the figure to the last digit
    whatever computes it (not sum(), which compensates from Python 3.12)."""
    return functools.reduce(operator.add, [values[i] for i in rows], 0.0)


def _sizing(t: Table, ids: Sequence[str], near: Near) -> dict[str, tuple[float, str]]:
    """Per region: the peak tokens/s it must serve and which case sets it. When a region
    fails only the rows it served move, each to its next-nearest, so a failover case changes
    the load of the regions they move to; each of those is summed anew over its rows in
    demand order (the additions, and so the figure, of summing each row's nearest survivor)."""
    served = _served(t, ids, near)
    worst = {c: (ordered_sum(t.load, rows), "normal") for c, rows in served.items()}
    if len(ids) < 2:
        return worst  # one region: nowhere to fail over to
    for failed in ids:
        moved: dict[str, list[int]] = {}
        for i in served[failed]:
            moved.setdefault(t.order[i][near[i][1]], []).append(i)
        for cid, rows in moved.items():
            v = ordered_sum(t.load, sorted(served[cid] + rows))
            if v > worst[cid][0]:
                worst[cid] = (v, f"failover of {failed}")
    return worst


def _egress(t: Table, ids: Sequence[str], near: Near) -> dict[str, float]:
    egress = {c: 0.0 for c in ids}
    for i, (f, _) in enumerate(near):
        egress[t.order[i][f]] += t.egress[i]
    return egress


def line_usd(p: PlanInput, c: Candidate, peak: float, egress_tb: float, where: str) -> float:
    """A region's line of the bill (RegionLine.total_usd, to the last digit) without the line."""
    compute = _instances(p, c, peak, where) * c.usd_per_hour * p.hours_per_month
    return compute + egress_tb * c.egress_usd_per_tb + c.storage_gb * c.storage_usd_per_gb_month


def _finite(value: float, what: str, inputs: str) -> float:
    """A computed figure, checked: the inputs' bounds keep every figure finite, but a
    PlanInput built in code has none, and inf or nan would print as a bill or end in an
    OverflowError (math.ceil) far from its cause."""
    if not math.isfinite(value):
        raise PlanInvalid(f"plan: {what} is {value}, not a finite number: check {inputs}")
    return value


def _big(x: float) -> str:
    return f"{x:,.0f}" if x < 1e9 else f"{x:.3g}"


def _instances(p: PlanInput, c: Candidate, peak: float, where: str) -> int:
    """Instances to serve ``peak`` tokens/s at the target utilisation, at least one."""
    capacity = c.tokens_per_s * p.target_utilisation
    need = peak / capacity if capacity > 0 else math.inf
    if not need <= MAX_INSTANCES:  # also nan
        raise PlanInvalid(
            f"plan: {where} would need {_big(need)} instances for {_big(peak)} tokens/s at peak "
            f"({c.tokens_per_s:g} tokens/s each at {p.target_utilisation:g} utilisation), more "
            f"than {MAX_INSTANCES:,} in one region: check the demand's requests_per_day, "
            "tokens and peak_factor, and the region's tokens_per_s"
        )
    return max(1, math.ceil(need - 1e-9))


def _line(
    p: PlanInput, c: Candidate, peak: float, why: str, egress_tb: float, where: str
) -> RegionLine:
    n = _instances(p, c, peak, where)
    return RegionLine(
        id=c.id,
        instance=c.instance,
        instances=n,
        peak_tokens_per_s=peak,
        sized_for=why,
        compute_usd=_finite(
            n * c.usd_per_hour * p.hours_per_month,
            f"{where}: compute $/month",
            "its usd_per_hour and hours_per_month",
        ),
        egress_tb=egress_tb,
        egress_usd=_finite(
            egress_tb * c.egress_usd_per_tb,
            f"{where}: egress $/month",
            "its egress_usd_per_tb and the demand's requests_per_day and output_tokens",
        ),
        storage_usd=_finite(
            c.storage_gb * c.storage_usd_per_gb_month,
            f"{where}: storage $/month",
            "its storage_gb and storage_usd_per_gb_month",
        ),
    )


def _check_demand(p: PlanInput) -> None:
    for i, d in enumerate(p.demand):
        where = f"demand[{i}] ({d.label})"
        _finite(
            load_tokens_per_s(d, p),
            f"{where}: peak tokens/s",
            "its requests_per_day, input_tokens, output_tokens and peak_factor",
        )
        _finite(
            egress_tb_per_month(d, p),
            f"{where}: egress TB/month",
            "its requests_per_day and output_tokens, and bytes_per_output_token",
        )


def evaluate(p: PlanInput, cands: Sequence[Candidate], t: Table | None = None) -> Placement:
    """One placement's bill and latencies; ``t``, a Table of (at least) these candidates,
    saves recomputing RTTs across evaluations."""
    t = Table(p, cands) if t is None else t
    ids = [c.id for c in cands]
    near = t.nearest(ids)
    sizing, egress = _sizing(t, ids, near), _egress(t, ids, near)
    per_cont: dict[str, list[tuple[float, float]]] = {}
    everyone: list[tuple[float, float]] = []
    assignment = {}
    for i, d in enumerate(p.demand):
        cid = t.order[i][near[i][0]]
        assignment[d.label] = cid
        pair = (t.rtt[cid][i], d.requests_per_day)
        per_cont.setdefault(d.continent, []).append(pair)
        everyone.append(pair)
    lines = [_line(p, c, *sizing[c.id], egress[c.id], t.where[c.id]) for c in cands]
    p50 = {k: weighted_percentile(v, 0.5) for k, v in sorted(per_cont.items())}
    p95 = {k: weighted_percentile(v, 0.95) for k, v in sorted(per_cont.items())}
    misses = tuple(
        f"{cont} p95 {p95[cont]:.0f} > {ms:g} ms"
        for cont, ms in sorted(p.objectives_p95_ms.items())
        if cont in p95 and p95[cont] > ms
    )
    return Placement(
        regions=tuple(c.id for c in cands),
        lines=tuple(lines),
        rtt_p50_ms=p50,
        rtt_p95_ms=p95,
        overall_p95_ms=weighted_percentile(everyone, 0.95),
        meets=not misses,
        misses=misses,
        assignment=assignment,
    )


def subsets(cands: Sequence[Candidate]) -> Iterable[tuple[Candidate, ...]]:
    """Every non-empty subset, smallest first, up to MAX_PLACEMENTS of them."""
    count = 0
    for k in range(1, len(cands) + 1):
        for combo in itertools.combinations(cands, k):
            if count >= MAX_PLACEMENTS:
                return
            count += 1
            yield combo


def pareto(placements: Sequence[Placement]) -> list[Placement]:
    """Marks the placements no other beats on both cost and overall p95; returns all, sorted
    by cost. A sweep by cost (n log n, not every pair: a search evaluates thousands): one is
    dominated when a cheaper one is as fast, or one as cheap is faster."""
    keyed = sorted((x.monthly_usd, x.overall_p95_ms, i) for i, x in enumerate(placements))
    front = [False] * len(keyed)
    best_cheaper = math.inf  # the lowest p95 among strictly cheaper placements
    i = 0
    while i < len(keyed):
        j = i
        while j < len(keyed) and keyed[j][0] == keyed[i][0]:
            j += 1
        fastest_here = keyed[i][1]  # sorted by p95 within one cost
        for _, p95, idx in keyed[i:j]:
            front[idx] = not (best_cheaper <= p95 or fastest_here < p95)
        best_cheaper = min(best_cheaper, fastest_here)
        i = j
    out = [_with_pareto(x, front[i]) for i, x in enumerate(placements)]
    return sorted(out, key=lambda x: (x.monthly_usd, x.overall_p95_ms))


def _with_pareto(a: Placement, flag: bool) -> Placement:
    return replace(a, pareto=flag)


def choose(placements: Sequence[Placement]) -> Placement | None:
    """The cheapest placement that meets every objective (None when none does)."""
    meeting = [x for x in placements if x.meets]
    # a tie on cost and p95 goes to the region ids, never to the order of the input
    key = lambda x: (x.monthly_usd, x.overall_p95_ms, sorted(x.regions))  # noqa: E731
    return min(meeting, key=key) if meeting else None
