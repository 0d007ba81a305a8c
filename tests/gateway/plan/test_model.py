"""The planner's arithmetic: the reference figures, N+1 sizing, percentiles, the Pareto front."""

from __future__ import annotations

import random
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import PlanInvalid
from gateway.plan.inputs import Candidate, PlanInput, parse
from gateway.plan.model import (
    Table,
    choose,
    evaluate,
    load_tokens_per_s,
    rtt,
    weighted_percentile,
)
from gateway.plan.search import plan

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "plan.toml"


def _example() -> dict[str, object]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_reference_figures_for_one_region() -> None:
    """g5.xlarge at $1.006/h in ap-southeast is about $730/month, 500 GB SSD about $45, egress
    about $90/TB: about $850/month for one region with the example's demand."""
    p = parse(_example())
    sg = next(c for c in p.candidates if c.id == "ap-southeast")
    x = evaluate(p, [sg])
    (line,) = x.lines
    print(line, x.monthly_usd)
    assert line.instances == 1
    assert line.compute_usd == pytest.approx(1.006 * 730)  # 734.38: "about $730"
    assert line.storage_usd == pytest.approx(45.0)
    assert line.egress_tb == pytest.approx(300_000 * 400 * 220 * 730 / 24 / 1e12)  # 0.80 TB
    assert line.egress_usd == pytest.approx(line.egress_tb * 90)
    assert 840 <= x.monthly_usd <= 860  # "about $850"


def _two_regions(peak: float, tps: float) -> dict[str, object]:
    return {
        "settings": {"target_utilisation": 0.5, "input_token_weight": 0.0},
        "demand": [
            {"country": "DE", "requests_per_day": 86400, "input_tokens": 0,
             "output_tokens": 10, "peak_factor": peak},
            {"country": "US", "requests_per_day": 86400 * 3, "input_tokens": 0,
             "output_tokens": 10, "peak_factor": peak},
        ],
        "regions": [
            {"id": "eu-central", "usd_per_hour": 1.0, "tokens_per_s": tps,
             "egress_usd_per_tb": 0},
            {"id": "us-east", "usd_per_hour": 2.0, "tokens_per_s": tps,
             "egress_usd_per_tb": 0},
        ],
    }  # fmt: skip


def test_n_plus_one_sizes_each_region_for_the_other_failing() -> None:
    # DE: 10 tokens/s, US: 30 tokens/s at peak; an instance plans for 10 x 0.5 = 5 tokens/s
    p = parse(_two_regions(peak=1.0, tps=10))
    both = evaluate(p, p.candidates)
    lines = {x.id: x for x in both.lines}
    assert lines["eu-central"].instances == 8  # 40 tokens/s when us-east fails
    assert lines["eu-central"].sized_for == "failover of us-east"
    assert lines["us-east"].instances == 8
    assert both.monthly_usd == pytest.approx(8 * 1.0 * 730 + 8 * 2.0 * 730)
    alone = evaluate(p, p.candidates[:1])  # one region: no failover, sized for normal load
    assert alone.lines[0].instances == 8 and alone.lines[0].sized_for == "normal"


def _sized_by_rescanning(p: PlanInput, cands: Sequence[Candidate]) -> dict[str, tuple[float, str]]:
    """N+1 sizing as first written: every row's nearest survivor found anew, with its RTT,
    for each failure (k + 1 passes over every row and region)."""

    def loads(cs: Sequence[Candidate]) -> dict[str, float]:
        out = {c.id: 0.0 for c in cs}
        for d in p.demand:
            out[min(cs, key=lambda c: (rtt(d, c), c.id)).id] += load_tokens_per_s(d, p)
        return out

    worst = {rid: (v, "normal") for rid, v in loads(cands).items()}
    for failed in cands if len(cands) > 1 else ():
        for rid, v in loads([c for c in cands if c is not failed]).items():
            if v > worst[rid][0]:
                worst[rid] = (v, f"failover of {failed.id}")
    return worst


def test_sizing_from_the_rtt_table_is_rescanning_s_to_the_last_digit() -> None:
    """Each row's nearest and next-nearest region read from the Table's ranks: the same loads,
    cases and labels as finding every row's nearest survivor anew for each failure."""
    doc = _example()
    assert isinstance(doc["regions"], list)
    doc["regions"] += [
        {"id": f"r{i}", "latitude": (37 * i) % 140 - 60, "longitude": (71 * i) % 360 - 180,
         "usd_per_hour": 1.0}
        for i in range(1, 16)
    ]  # fmt: skip
    p = parse(doc)
    t = Table(p)
    rng = random.Random(7)
    failovers = 0
    for _ in range(200):
        cands = rng.sample(p.candidates, rng.randint(1, 12))
        x = evaluate(p, cands, t)
        assert x == evaluate(p, cands)  # a Table of these candidates only: the same
        sized = {line.id: (line.peak_tokens_per_s, line.sized_for) for line in x.lines}
        assert sized == _sized_by_rescanning(p, cands)
        failovers += sum(line.sized_for != "normal" for line in x.lines)
    assert failovers > 100


def test_peak_factor_scales_instances() -> None:
    p = parse(_two_regions(peak=2.0, tps=10))
    alone = evaluate(p, p.candidates[1:])
    assert alone.lines[0].instances == 16


def test_weighted_percentile() -> None:
    pairs = [(10.0, 90.0), (200.0, 10.0)]
    assert weighted_percentile(pairs, 0.5) == 10.0
    assert weighted_percentile(pairs, 0.9) == 10.0
    assert weighted_percentile(pairs, 0.95) == 200.0


def test_pareto_front_and_choice() -> None:
    p = parse(_example())
    placements = plan(p)
    assert len(placements) == 2 ** len(p.candidates) - 1
    front = [x for x in placements if x.pareto]
    for a in front:  # nothing on the front is beaten on both axes
        assert not any(
            b.monthly_usd < a.monthly_usd and b.overall_p95_ms < a.overall_p95_ms
            for b in placements
        )
    best = choose(placements)
    assert best is not None and best.meets
    assert all(x.monthly_usd >= best.monthly_usd for x in placements if x.meets)
    # more regions never raise any continent's RTT
    one = next(x for x in placements if x.regions == ("us-east",))
    assert all(best.rtt_p95_ms[c] <= one.rtt_p95_ms[c] + 1e-9 for c in one.rtt_p95_ms)


# A PlanInput built in code has no input bounds (gateway/plan/checks.py): the model checks what
# it computes, and says which input made it so, instead of an OverflowError from math.ceil(inf)
# or a bill of $inf with exit status 0.
@pytest.mark.parametrize(
    ("demand", "region", "settings", "message"),
    [
        ({"requests_per_day": 1e308}, {}, {},
         "plan: demand[0] (DE): peak tokens/s is inf, not a finite number: check its "
         "requests_per_day"),
        ({"output_tokens": 1e300}, {}, {"bytes_per_output_token": 1e10},
         "plan: demand[0] (DE): egress TB/month is inf, not a finite number: check its "
         "requests_per_day and output_tokens, and bytes_per_output_token"),
        ({"peak_factor": 1e300}, {}, {},
         "plan: regions[0] (eu-central) would need 2e+300 instances for 1e+301 tokens/s"),
        ({}, {}, {"target_utilisation": 1e-320},
         "plan: regions[0] (eu-central) would need inf instances for 10 tokens/s at peak"),
        ({}, {"tokens_per_s": 1e-300}, {"target_utilisation": 1e-30},
         "plan: regions[0] (eu-central) would need inf instances"),
        ({}, {"usd_per_hour": 1e308}, {},
         "plan: regions[0] (eu-central): compute $/month is inf, not a finite number: check "
         "its usd_per_hour and hours_per_month"),
        ({}, {"egress_usd_per_tb": 1e308}, {"bytes_per_output_token": 1e30},
         "plan: regions[0] (eu-central): egress $/month is inf"),
        ({}, {"storage_gb": 1e308, "storage_usd_per_gb_month": 10.0}, {},
         "plan: regions[0] (eu-central): storage $/month is inf"),
    ],
)  # fmt: skip
def test_figures_that_are_not_finite_are_one_line_naming_the_input(
    demand: dict[str, Any], region: dict[str, Any], settings: dict[str, Any], message: str
) -> None:
    p = parse(_two_regions(peak=1.0, tps=10))
    p = replace(
        p,
        demand=(replace(p.demand[0], **demand),),
        candidates=(replace(p.candidates[0], **region),),
        **settings,
    )
    with pytest.raises(PlanInvalid) as err:
        evaluate(p, p.candidates)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
