"""Pricing a placement's growths without evaluating them: the bill ``evaluate`` gives, to the
last digit, under loads that take several instances and failovers that set them; a region that
would serve nobody, even in a failover, is named as such."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

from gateway.plan.grow import Growths
from gateway.plan.inputs import parse
from gateway.plan.model import Table, evaluate

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "plan.toml"


def test_each_growth_bills_what_evaluate_bills() -> None:
    doc = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    doc["regions"] += [
        {"id": f"r{i}", "latitude": (37 * i) % 140 - 60, "longitude": (71 * i) % 360 - 180,
         "usd_per_hour": 1 + i / 100, "egress_usd_per_tb": 60 + i}
        for i in range(1, 26)
    ]  # fmt: skip
    for i, row in enumerate(doc["demand"]):
        row["requests_per_day"] *= 1 + i % 4  # up to 360,000 a day: several instances
    p = parse(doc)
    t = Table(p)
    rng = random.Random(11)
    priced = useless = several = 0
    for _ in range(60):
        cands = rng.sample(p.candidates, rng.randint(1, 8))
        growths = Growths(p, t, [c.id for c in cands])
        before = evaluate(p, cands, t)
        for c in (c for c in p.candidates if c not in cands):
            grown = evaluate(p, [*cands, c], t)
            rows = growths.rows(c.id)
            if not rows:  # serves nobody, even in a failover: no faster, dearer
                assert grown.rtt_p95_ms == before.rtt_p95_ms
                assert grown.lines[:-1] == before.lines
                assert grown.monthly_usd > before.monthly_usd
                useless += 1
                continue
            usd, taken = growths.bill(c.id, rows)
            assert usd == grown.monthly_usd
            serves = {label for label, rid in grown.assignment.items() if rid == c.id}
            assert {p.demand[i].label for i in taken} == serves
            priced += 1
            several += any(line.instances > 1 for line in grown.lines)
    assert priced > 1000 and useless > 5 and several > priced // 2, (priced, useless, several)
