"""Placement search for many candidate regions: every subset of 13 or more candidates is more
than 8,000 placements (20 candidates: a million), so ``plan`` searches instead of listing.

A beam search over placements by size, within a budget of evaluations. It evaluates every
single region and the placement of each demand row's nearest candidate (the lowest RTTs any
placement has), and keeps the best ``width`` single regions: first the ones no other beats on
cost, overall p95 and missed objectives (the front), then the rest by how far they miss the
objectives and by cost. Each later round grows the kept placements by one region and keeps the
best ``width`` again, while a placement of that size can still beat what was found: none can
once the floor of its bill (an instance and the storage of each region, the egress at the
cheapest price) is above both the cheapest placement found that meets the objectives and the
cheapest found at the lowest p95 there is (the nearest-candidate placement is one, so its bill
bounds the rounds), and none grows past one region per distinct demand point. The budget is
split evenly across the rounds still worth running, so a round cannot spend what the larger
sizes need (with 100 candidates, growing 24 placements by every region is 2,400 evaluations:
all of the budget once went on pairs). A round first prices every growth of the beam, exactly
and without evaluating it (gateway/plan/grow.py resizes only the regions whose rows the new
one takes or backs up), ranks them as the beam is ranked and evaluates the best within its
share: with a share of at least ``width``, the next beam is the one evaluating every growth
would give. A region that would serve no row, even in a failover, is not tried: it would only
add its bill. Then a drop pass: each placement on the front found so far loses one region at a
time, which finds the cheaper variant a greedy add can step over.

Nothing depends on the order the candidates are listed in: ties are broken by region ids and
sums are exact (math.fsum in the model), so the same input in any order evaluates the same
placements. The Pareto front is taken over every placement evaluated: it is the front of what
was searched, exact when the optimum is within reach of the beam (tests/gateway/plan/
test_search.py builds such cases with 20 and 100 candidates). Every RTT is computed once, in
model.Table (100 candidates and 40 demand rows: 4,000, where sizing each placement for every
failover recomputed 84 million). Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.plan.grow import Growths
from gateway.plan.inputs import PlanInput
from gateway.plan.model import (
    MAX_PLACEMENTS,
    Placement,
    Table,
    evaluate,
    pareto,
    subsets,
    weighted_percentile,
)

BEAM_WIDTH = 24  # placements kept per size: 20 candidates cost ~24 x 20 evaluations a size
MAX_EVALUATIONS = MAX_PLACEMENTS  # the same budget as listing every subset of 12 candidates
DROP_SHARE = 8  # an eighth of the budget is kept for the drop pass, whatever the rounds took

T = TypeVar("T")
Key = tuple[float, float, float]  # monthly cost, overall p95, shortfall against the objectives


def exhaustive(p: PlanInput) -> bool:
    """Whether every subset of the candidates fits the budget (12 candidates or fewer)."""
    return (1 << len(p.candidates)) - 1 <= MAX_PLACEMENTS


def plan(p: PlanInput) -> list[Placement]:
    """Every placement (every subset of the candidates) when they fit the budget, else the
    ones the search evaluated; Pareto-marked, sorted by cost."""
    if exhaustive(p):
        t = Table(p)
        return pareto([evaluate(p, combo, t) for combo in subsets(p.candidates)])
    return search(p)


def _shortfall(p95: dict[str, float], p: PlanInput) -> float:
    return sum(max(0.0, p95[cont] - ms) for cont, ms in p.objectives_p95_ms.items() if cont in p95)


def shortfall_ms(x: Placement, p: PlanInput) -> float:
    """How far a placement misses the p95 objectives, summed over continents (0: meets)."""
    return _shortfall(x.rtt_p95_ms, p)


def largest_size(p: PlanInput) -> int:
    """The largest placement the rounds grow to: one region per distinct demand point at most
    (demand at one point always goes to one region, so a further region serves nobody; it
    can only take failover load, and costs at least an instance)."""
    return min(len(p.candidates), len({(d.lat, d.lon) for d in p.demand}))


def _dominates(a: Key, b: Key) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _rank(items: Sequence[T], key: Callable[[T], Key], name: Callable[[T], tuple[str, ...]],
          width: int) -> list[T]:  # fmt: skip
    """The best ``width`` items: the non-dominated ones first, then the rest, each by
    shortfall, cost, p95 and then name (region ids: never the input order). The front in one
    sweep by (cost, p95, shortfall): whatever dominates an item sorts before it, and an item
    dominated by anything is dominated by something on the front."""
    keyed = sorted(((key(x), name(x), x) for x in items), key=lambda t: (t[0], t[1]))
    front: list[tuple[Key, tuple[str, ...], T]] = []
    rest: list[tuple[Key, tuple[str, ...], T]] = []
    for t in keyed:
        (rest if any(_dominates(f[0], t[0]) for f in front) else front).append(t)

    def order(t: tuple[Key, tuple[str, ...], T]) -> tuple[float, float, float, tuple[str, ...]]:
        (cost, p95, short), ids, _ = t
        return (short, cost, p95, ids)

    return [t[2] for t in sorted(front, key=order) + sorted(rest, key=order)][:width]


def _ids(x: Placement) -> tuple[str, ...]:
    return tuple(sorted(x.regions))


def select(pool: Sequence[Placement], p: PlanInput, width: int) -> list[Placement]:
    """The beam: the pool's non-dominated placements (cost, overall p95, shortfall), then
    the rest by shortfall and cost, ``width`` in all."""
    return _rank(pool, lambda x: (x.monthly_usd, x.overall_p95_ms, shortfall_ms(x, p)), _ids, width)


class _Evaluator:
    """Evaluates each placement once, candidates always in input order (a placement's name
    does not depend on the order it was reached in), within a budget."""

    def __init__(self, p: PlanInput, t: Table, budget: int) -> None:
        self.p = p
        self.t = t
        self.budget = budget
        self.order = {c.id: i for i, c in enumerate(p.candidates)}
        self.by_id = {c.id: c for c in p.candidates}
        self.seen: dict[frozenset[str], Placement] = {}

    def __call__(self, ids: frozenset[str], force: bool = False) -> Placement | None:
        """None when evaluated before or the budget is spent (``force``: the single regions,
        every one of which is evaluated, whatever their number, and the nearest placement)."""
        if ids in self.seen or (len(self.seen) >= self.budget and not force):
            return None
        cands = sorted((self.by_id[i] for i in ids), key=lambda c: self.order[c.id])
        x = evaluate(self.p, cands, self.t)
        self.seen[ids] = x
        return x


class _Screen:
    """What a grown placement will be, before evaluating it: its bill as ``evaluate`` gives it
    to the last digit (gateway/plan/grow.py; no floor or estimate: adding a region can lower
    the others' failover sizing and move egress), its p95s and its shortfall, so growths rank
    exactly as ``select`` ranks placements."""

    def __init__(self, p: PlanInput, t: Table) -> None:
        self.p = p
        self.t = t
        self.weight = [d.requests_per_day for d in p.demand]
        self.rows: dict[str, list[int]] = {}  # each continent's rows
        for i, d in enumerate(p.demand):
            self.rows.setdefault(d.continent, []).append(i)

    def _latency(self, x: Placement, base: list[float], cid: str,
                 taken: list[int]) -> tuple[float, float]:  # fmt: skip
        """Overall p95 and shortfall of x grown by cid, which serves the rows ``taken``:
        only their RTTs change, and only their continents' p95s."""
        if not taken:
            return x.overall_p95_ms, shortfall_ms(x, self.p)
        ms = list(base)
        for i in taken:
            ms[i] = self.t.rtt[cid][i]  # nearer than their region before, or as near
        p95 = dict(x.rtt_p95_ms)
        for cont in {self.p.demand[i].continent for i in taken}:
            p95[cont] = weighted_percentile(
                [(ms[i], self.weight[i]) for i in self.rows[cont]], 0.95
            )
        overall = weighted_percentile(list(zip(ms, self.weight, strict=True)), 0.95)
        return overall, _shortfall(p95, self.p)

    def grow(self, beam: Sequence[Placement], seen: dict[frozenset[str], Placement],
             share: int) -> list[frozenset[str]]:  # fmt: skip
        """The ``share`` best placements one region larger than a beam's, not evaluated
        before, ranked as ``select`` ranks: with a share of at least the beam's width, the
        next beam is the one evaluating every growth would give. Left out: a beam placement
        grown by a region that would serve nobody, even in a failover (``Growths.rows``),
        however else it is reached: it costs more than that beam placement and is no faster,
        as each of its growths is against the same growth without that region."""
        keys: dict[frozenset[str], Key] = {}
        useless: set[frozenset[str]] = set()
        for x in beam:
            growths = Growths(self.p, self.t, x.regions)
            base = [min(col) for col in zip(*(self.t.rtt[r] for r in x.regions), strict=True)]
            for cid in self.t.rtt:
                ids = frozenset(x.regions) | {cid}
                if cid in x.regions or ids in seen or ids in useless:
                    continue
                rows = growths.rows(cid)
                if not rows:
                    useless.add(ids)
                    keys.pop(ids, None)
                elif ids not in keys:  # the same key whichever placement it grew from
                    usd, taken = growths.bill(cid, rows)
                    keys[ids] = (usd, *self._latency(x, base, cid, taken))
        return _rank(list(keys), keys.__getitem__, lambda s: tuple(sorted(s)), share)


class _Floor:
    """What no placement of a given size can undercut: each of its regions bills at least one
    instance and its storage, and the demand's egress costs at least the cheapest egress
    price (``cost[k - 1]``: k regions, the cheapest; less a billionth for rounding). And the
    lowest p95 any placement has: a row is served no faster than by its nearest candidate,
    and a p95 never rises when RTTs fall, so the placement of every row's nearest candidate
    has the lowest overall p95 and each continent's, and meets the objectives if any does."""

    def __init__(self, p: PlanInput, t: Table) -> None:
        units = sorted(
            c.usd_per_hour * p.hours_per_month + c.storage_gb * c.storage_usd_per_gb_month
            for c in p.candidates
        )
        egress = math.fsum(t.egress) * min(c.egress_usd_per_tb for c in p.candidates)
        self.cost = [(egress + u) * (1 - 1e-9) for u in itertools.accumulate(units)]
        self.nearest = frozenset(row[0] for row in t.order)  # every row's nearest candidate
        best = [
            (t.rtt[row[0]][i], d.requests_per_day)
            for i, (row, d) in enumerate(zip(t.order, p.demand, strict=True))
        ]
        self.ideal_p95 = weighted_percentile(best, 0.95)

    def top(self, p: PlanInput, found: Sequence[Placement]) -> int:
        """The largest size a placement can have and still beat what is ``found``: a larger
        one costs more (its floor) than both the cheapest found meeting the objectives (so it
        is not the choice) and the cheapest found at the lowest p95 there is (which dominates
        it). Once ``nearest`` is found, its bill bounds this; ``largest_size`` always does."""
        meets = [x.monthly_usd for x in found if x.meets]  # none: nothing can (nearest would)
        fastest = [x.monthly_usd for x in found if x.overall_p95_ms <= self.ideal_p95]
        bound = max(min(meets, default=-math.inf), min(fastest, default=math.inf))
        return sum(1 for c in self.cost[: largest_size(p)] if c <= bound)


def search(p: PlanInput, width: int = BEAM_WIDTH, budget: int = MAX_EVALUATIONS) -> list[Placement]:
    """Every placement evaluated, Pareto-marked and sorted by cost (as ``model.plan``)."""
    t = Table(p)
    ev = _Evaluator(p, t, budget)
    singles = [x for c in p.candidates if (x := ev(frozenset({c.id}), force=True)) is not None]
    screen, floor = _Screen(p, t), _Floor(p, t)
    ev(floor.nearest, force=True)  # the lowest RTTs: it bounds the rounds
    beam = select(singles, p, width)
    size = 2
    while size <= (top := floor.top(p, list(ev.seen.values()))):
        # an even share of what is left for this round and every later one
        share = (budget - budget // DROP_SHARE - len(ev.seen)) // (top - size + 1)
        if share <= 0:  # thousands of candidates: their single regions took it all
            break
        pool = [x for ids in screen.grow(beam, ev.seen, share) if (x := ev(ids)) is not None]
        if not pool:
            break
        beam = select(pool, p, width)
        size += 1
    front = sorted(
        (y for y in pareto(list(ev.seen.values())) if y.pareto),
        key=lambda y: (y.monthly_usd, y.overall_p95_ms, _ids(y)),
    )
    for x in front:
        for r in _ids(x) if len(x.regions) > 1 else ():
            ev(frozenset(x.regions) - {r})
    return pareto(list(ev.seen.values()))
