"""The placement search for many candidates: 20 candidates (a million placements) in well
under a second of evaluations, the known optimum of a constructed case found, a Pareto front
returned, and the same answer as listing every subset where both can run."""

from __future__ import annotations

import time
from typing import Any

from gateway.plan.inputs import parse
from gateway.plan.model import choose, evaluate, pareto, subsets
from gateway.plan.search import MAX_EVALUATIONS, exhaustive, plan, search

NEAR = {"eu-central": 1.0, "us-east": 1.0, "ap-southeast": 1.0}
OTHERS = {"us-west": 2.0, "eu-west": 2.0, "ap-northeast": 2.0, "au-east": 2.0, "sa-east": 2.0}
# Cheap regions far from every client (mid-ocean, Africa, the poles' edges): a search that
# grows by cost alone would fill its beam with them and never meet the objectives.
DECOYS = [(0, -150), (-40, -120), (10, -30), (-30, 0), (60, -30), (-50, 60), (0, 80),
          (-10, 20), (45, -170), (-60, -60), (70, 100), (20, 170)]  # fmt: skip


def _case(decoys: int = len(DECOYS)) -> dict[str, Any]:
    regions = [{"id": k, "usd_per_hour": v} for k, v in {**NEAR, **OTHERS}.items()]
    regions += [
        {"id": f"decoy-{i}", "latitude": lat, "longitude": lon, "usd_per_hour": 0.5}
        for i, (lat, lon) in enumerate(DECOYS[:decoys])
    ]
    return {
        "objectives_p95_ms": {"EU": 40, "NA": 40, "AS": 40},
        "demand_defaults": {"input_tokens": 100, "output_tokens": 100},
        "demand": [{"country": c, "requests_per_day": 1000} for c in ("GB", "US", "SG")],
        # one instance covers any demand here, and no egress: cost is the hourly prices' sum
        "region_defaults": {"tokens_per_s": 1e6, "egress_usd_per_tb": 0},
        "regions": regions,
    }


def test_twenty_candidates_find_the_known_optimum_fast() -> None:
    p = parse(_case())
    assert len(p.candidates) == 20 and not exhaustive(p)
    t0 = time.perf_counter()
    placements = plan(p)
    took = time.perf_counter() - t0
    print(f"{len(placements)} placements evaluated in {took:.2f} s")
    assert took < 10 and len(placements) <= MAX_EVALUATIONS
    best = choose(placements)
    # the only regions within 40 ms of London, New York and Singapore at $1/h: $2,190/month
    assert best is not None and set(best.regions) == set(NEAR)
    assert best.monthly_usd == 3 * 730.0
    front = [x for x in placements if x.pareto]
    assert best in front
    assert min(placements, key=lambda x: x.monthly_usd).monthly_usd == 0.5 * 730  # one decoy
    for x in front:  # a front: nothing evaluated beats one of its members on both axes
        assert not any(
            y.monthly_usd <= x.monthly_usd
            and y.overall_p95_ms <= x.overall_p95_ms
            and (y.monthly_usd, y.overall_p95_ms) != (x.monthly_usd, x.overall_p95_ms)
            for y in placements
        )


def test_the_search_agrees_with_every_subset_where_both_run() -> None:
    p = parse(_case(decoys=4))  # 12 candidates: 4,095 placements, listed
    assert exhaustive(p)
    every = pareto([evaluate(p, combo) for combo in subsets(p.candidates)])
    found = search(p)
    assert choose(found) == choose(every)
    best_every = {x.regions for x in every if x.pareto}
    best_found = {x.regions for x in found if x.pareto}
    # the search's front is exact on this case: the same placements
    assert best_found == best_every, best_found ^ best_every
