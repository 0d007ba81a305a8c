"""Placement search for many candidate regions: every subset of 13 or more candidates is more
than 8,000 placements (20 candidates: a million), so ``plan`` searches instead of listing.

A beam search over placements by size: start from every single region, grow each kept
placement by every region it lacks, and keep a beam of the best of each size: first the ones
no other of the round beats on cost, overall p95 and missed objectives (the front of that
round), then the rest by how far they miss the objectives and by cost. Then a drop pass: each
placement on the front found so far loses one region at a time, which finds the cheaper
variant a greedy add can step over. The Pareto front is taken over every placement evaluated;
it is the front of what was searched, exact when the optimum is within reach of the beam
(tests/gateway/plan/test_search.py builds such a case with 20 candidates). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.plan.inputs import Candidate, PlanInput
from gateway.plan.model import MAX_PLACEMENTS, Placement, evaluate, pareto, subsets

BEAM_WIDTH = 24  # placements kept per size: 20 candidates cost ~24 x 20 evaluations a size
MAX_EVALUATIONS = MAX_PLACEMENTS  # the same budget as listing every subset of 12 candidates


def exhaustive(p: PlanInput) -> bool:
    """Whether every subset of the candidates fits the budget (12 candidates or fewer)."""
    return (1 << len(p.candidates)) - 1 <= MAX_PLACEMENTS


def plan(p: PlanInput) -> list[Placement]:
    """Every placement (every subset of the candidates) when they fit the budget, else the
    ones the search evaluated; Pareto-marked, sorted by cost."""
    if exhaustive(p):
        return pareto([evaluate(p, combo) for combo in subsets(p.candidates)])
    return search(p)


def shortfall_ms(x: Placement, p: PlanInput) -> float:
    """How far a placement misses the p95 objectives, summed over continents (0: meets)."""
    return sum(
        max(0.0, x.rtt_p95_ms[cont] - ms)
        for cont, ms in p.objectives_p95_ms.items()
        if cont in x.rtt_p95_ms
    )


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def select(pool: Sequence[Placement], p: PlanInput, width: int) -> list[Placement]:
    """The beam: the round's non-dominated placements (cost, overall p95, shortfall), then
    the rest by shortfall and cost, ``width`` in all."""
    keys = {x.regions: (x.monthly_usd, x.overall_p95_ms, shortfall_ms(x, p)) for x in pool}
    front = [x for x in pool if not any(_dominates(keys[y.regions], keys[x.regions]) for y in pool)]
    rest = [x for x in pool if x not in front]

    def rank(x: Placement) -> tuple[float, float, float]:
        cost, p95, short = keys[x.regions]
        return (short, cost, p95)

    front.sort(key=rank)
    rest.sort(key=rank)
    return (front + rest)[:width]


class _Evaluator:
    """Evaluates each placement once, candidates always in input order (a placement's name
    does not depend on the order it was reached in), within a budget."""

    def __init__(self, p: PlanInput, budget: int) -> None:
        self.p = p
        self.budget = budget
        self.order = {c.id: i for i, c in enumerate(p.candidates)}
        self.seen: dict[frozenset[str], Placement] = {}

    def __call__(self, cands: Sequence[Candidate]) -> Placement | None:
        key = frozenset(c.id for c in cands)
        if key in self.seen:
            return None  # reached before: already in a beam or out of it
        if len(self.seen) >= self.budget:
            return None
        x = evaluate(self.p, sorted(cands, key=lambda c: self.order[c.id]))
        self.seen[key] = x
        return x


def search(p: PlanInput, width: int = BEAM_WIDTH, budget: int = MAX_EVALUATIONS) -> list[Placement]:
    """Every placement evaluated, Pareto-marked and sorted by cost (as ``model.plan``)."""
    ev = _Evaluator(p, budget)
    by_id = {c.id: c for c in p.candidates}
    beam = [x for c in p.candidates if (x := ev([c])) is not None]
    while beam and len(ev.seen) < budget:
        pool = []
        for x in beam:
            for c in p.candidates:
                if c.id not in x.regions:
                    grown = ev([by_id[r] for r in x.regions] + [c])
                    if grown is not None:
                        pool.append(grown)
        beam = select(pool, p, width)
    for x in [y for y in pareto(list(ev.seen.values())) if y.pareto]:
        for r in x.regions if len(x.regions) > 1 else ():
            ev([by_id[k] for k in x.regions if k != r])
    return pareto(list(ev.seen.values()))
