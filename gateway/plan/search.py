"""Placement search for many candidate regions: every subset of 13 or more candidates is more
than 8,000 placements (20 candidates: a million), so ``plan`` searches instead of listing.

A beam search over placements by size, within a budget of evaluations. It evaluates every
single region and keeps the best ``width`` of them: first the ones no other beats on cost,
overall p95 and missed objectives (the front), then the rest by how far they miss the
objectives and by cost. Each later round grows the kept placements by one region, up to the
largest size worth trying (a placement with more regions than the demand has points leaves a
region serving nobody; it can only add cost), and keeps the best ``width`` again. The budget
is split across those rounds, so a round cannot spend what the later, larger sizes need
(with 100 candidates, growing 24 placements by every region is 2,400 evaluations a round:
the whole budget went on pairs and no 3-region placement was tried). Within its share a round
evaluates the growths that look best before paying for them: their RTTs are exact and cheap
(the nearest region per demand point), their cost a floor (the placement's bill plus one
instance and the storage of the region added), ranked as the beam is. Then a drop pass: each
placement on the front found so far loses one region at a time, which finds the cheaper
variant a greedy add can step over.

Nothing depends on the order the candidates are listed in: ties are broken by region ids and
sums are exact (math.fsum in the model), so the same input in any order evaluates the same
placements. The Pareto front is taken over every placement evaluated: it is the front of what
was searched, exact when the optimum is within reach of the beam (tests/gateway/plan/
test_search.py builds such cases with 20 and 100 candidates). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.plan.inputs import PlanInput
from gateway.plan.model import (
    MAX_PLACEMENTS,
    Placement,
    evaluate,
    pareto,
    rtt,
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
        return pareto([evaluate(p, combo) for combo in subsets(p.candidates)])
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

    def __init__(self, p: PlanInput, budget: int) -> None:
        self.p = p
        self.budget = budget
        self.order = {c.id: i for i, c in enumerate(p.candidates)}
        self.by_id = {c.id: c for c in p.candidates}
        self.seen: dict[frozenset[str], Placement] = {}

    def __call__(self, ids: frozenset[str], force: bool = False) -> Placement | None:
        """None when evaluated before or the budget is spent (``force``: the single regions,
        every one of which is evaluated, whatever their number)."""
        if ids in self.seen or (len(self.seen) >= self.budget and not force):
            return None
        x = evaluate(self.p, sorted((self.by_id[i] for i in ids), key=lambda c: self.order[c.id]))
        self.seen[ids] = x
        return x


class _Screen:
    """What a grown placement will look like, before paying for its evaluation: its RTTs
    exactly (each demand point to its nearest region), its cost as a floor."""

    def __init__(self, p: PlanInput) -> None:
        self.p = p
        self.rtts = {c.id: [rtt(d, c) for d in p.demand] for c in p.candidates}
        self.floor = {
            c.id: c.usd_per_hour * p.hours_per_month + c.storage_gb * c.storage_usd_per_gb_month
            for c in p.candidates
        }

    def key(self, x: Placement, base: list[float], rid: str) -> Key:
        ms = [min(a, b) for a, b in zip(base, self.rtts[rid], strict=True)]
        everyone = [(v, d.requests_per_day) for v, d in zip(ms, self.p.demand, strict=True)]
        per_cont: dict[str, list[tuple[float, float]]] = {}
        for pair, d in zip(everyone, self.p.demand, strict=True):
            per_cont.setdefault(d.continent, []).append(pair)
        p95 = {k: weighted_percentile(v, 0.95) for k, v in per_cont.items()}
        cost = x.monthly_usd + self.floor[rid]
        return (cost, weighted_percentile(everyone, 0.95), _shortfall(p95, self.p))

    def grow(self, beam: Sequence[Placement], seen: dict[frozenset[str], Placement],
             share: int) -> list[frozenset[str]]:  # fmt: skip
        """The ``share`` most promising placements one region larger than a beam's, not
        evaluated before."""
        keys: dict[frozenset[str], Key] = {}
        for x in beam:
            base = [min(col) for col in zip(*(self.rtts[r] for r in x.regions), strict=True)]
            for rid in self.rtts:
                grown = frozenset(x.regions) | {rid}
                if rid in x.regions or grown in seen:
                    continue
                k = self.key(x, base, rid)
                if grown not in keys or k < keys[grown]:  # reached from two: the better floor
                    keys[grown] = k
        return _rank(list(keys), keys.__getitem__, lambda s: tuple(sorted(s)), share)


def search(p: PlanInput, width: int = BEAM_WIDTH, budget: int = MAX_EVALUATIONS) -> list[Placement]:
    """Every placement evaluated, Pareto-marked and sorted by cost (as ``model.plan``)."""
    ev = _Evaluator(p, budget)
    singles = [x for c in p.candidates if (x := ev(frozenset({c.id}), force=True)) is not None]
    beam = select(singles, p, width)
    screen = _Screen(p)
    top = largest_size(p)
    for size in range(2, top + 1):
        # an even share of what is left for this round and every later one
        share = (budget - budget // DROP_SHARE - len(ev.seen)) // (top - size + 1)
        if share <= 0:  # thousands of candidates: their single regions took it all
            break
        pool = [x for ids in screen.grow(beam, ev.seen, share) if (x := ev(ids)) is not None]
        if not pool:
            break
        beam = select(pool, p, width)
    front = sorted(
        (y for y in pareto(list(ev.seen.values())) if y.pareto),
        key=lambda y: (y.monthly_usd, y.overall_p95_ms, _ids(y)),
    )
    for x in front:
        for r in _ids(x) if len(x.regions) > 1 else ():
            ev(frozenset(x.regions) - {r})
    return pareto(list(ev.seen.values()))
