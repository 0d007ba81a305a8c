"""Plan inputs: defaults apply, and each mistake is one line saying where and what."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import PlanInvalid
from gateway.plan.inputs import HOURS_PER_MONTH, TARGET_UTILISATION, parse


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "demand_defaults": {"input_tokens": 100, "output_tokens": 200},
        "demand": [{"country": "BR", "requests_per_day": 1000}, {"continent": "af",
                                                                 "requests_per_day": 10}],
        "region_defaults": {"tokens_per_s": 500, "egress_usd_per_tb": 90},
        "regions": [{"id": "sa-east", "usd_per_hour": 1.5}],
    }  # fmt: skip
    doc.update(changes)
    return doc


def test_defaults_and_points() -> None:
    p = parse(_doc())
    assert p.target_utilisation == TARGET_UTILISATION and p.hours_per_month == HOURS_PER_MONTH
    br, af = p.demand
    assert br.continent == "SA" and br.output_tokens == 200 and br.peak_factor == 1.0
    assert af.label == "AF" and af.continent == "AF"
    assert p.candidates[0].tokens_per_s == 500 and p.candidates[0].storage_gb == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"regions": [{"id": "sa-east", "tokens_per_s": 5}]},
         "plan: regions[0] (sa-east) has no usd_per_hour"),
        ({"demand": [{"country": "BR", "requests_per_day": -5}]},
         "plan: demand[0] (BR): requests_per_day must be 0 or more, got -5"),
        ({"demand": [{"country": "XX", "requests_per_day": 5}]},
         "plan: demand[0] (XX): unknown country 'XX' (ISO 3166 alpha-2)"),
        ({"regions": [{"id": "mars-1", "usd_per_hour": 1}]},
         "plan: regions[0] (mars-1): unknown region 'mars-1'"),
        ({"demand": []}, "plan: no [[demand]] entries"),
        ({"settings": {"target_utilisation": 1.5}},
         "plan: settings: target_utilisation must be at most 1, got 1.5"),
        ({"objectives_p95_ms": {"XY": 10}}, "plan: objectives_p95_ms: unknown continent 'XY'"),
        ({"demand": [{"country": "BR", "requests_per_day": float("nan")}]},
         "plan: demand[0] (BR): requests_per_day must be a number, got nan"),
        ({"regions": [{"id": "sa-east", "usd_per_hour": float("inf")}]},
         "plan: regions[0] (sa-east): usd_per_hour must be a number, got inf"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanInvalid) as err:
        parse(_doc(**changes))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_region_west_or_south_is_given_by_negative_degrees() -> None:
    lima = {"id": "lima", "latitude": -12.05, "longitude": -77.04, "usd_per_hour": 2.0}
    (c,) = parse(_doc(regions=[lima])).candidates
    assert (c.lat, c.lon) == (-12.05, -77.04)
    with pytest.raises(PlanInvalid, match=r"^plan: regions\[0\] \(lima\): longitude must be "):
        parse(_doc(regions=[lima | {"longitude": -200}]))


def test_without_results_a_region_needs_its_own_tokens_per_s() -> None:
    with pytest.raises(PlanInvalid, match=r"^plan: regions\[0\] \(sa-east\) has no tokens_per_s$"):
        parse(_doc(region_defaults={"egress_usd_per_tb": 90}))
