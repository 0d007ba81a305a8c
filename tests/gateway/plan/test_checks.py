"""The plan input's single values: numbers within their bounds (finite, signed, at most and at
least), coordinates, tables; each mistake one line naming where and what."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.errors import PlanInvalid
from gateway.plan.checks import MOST, as_table, coordinate, number, shape


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (None, {}, "plan: here has no x"),
        (True, {}, "plan: here: x must be a number, got True"),
        ("5", {}, "plan: here: x must be a number, got '5'"),
        (math.nan, {}, "plan: here: x must be a number, got nan"),
        (-math.inf, {}, "plan: here: x must be a number, got -inf"),
        (-1, {}, "plan: here: x must be 0 or more, got -1"),
        (0, {"positive": True}, "plan: here: x must be greater than 0, got 0"),
        (1e308, {"most": 10.0}, "plan: here: x must be at most 10, got 1e+308"),
    ],
)
def test_numbers_are_finite_signed_and_bounded(
    value: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanInvalid) as err:
        number({} if value is None else {"x": value}, "x", "here", **kwargs)
    assert str(err.value) == message


def test_each_key_has_its_own_bounds() -> None:
    assert number({"x": 1e300}, "x", "here") == 1e300  # a key with no bound of its own
    assert number({}, "hours_per_month", "settings", 730.0) == 730.0  # the default
    with pytest.raises(PlanInvalid, match="hours_per_month must be at most 744, got 745"):
        number({"hours_per_month": 745}, "hours_per_month", "settings")
    with pytest.raises(PlanInvalid, match=r"target_utilisation must be at least 0\.01, got 0\.001"):
        number({"target_utilisation": 0.001}, "target_utilisation", "settings")
    # every bound leaves the largest bill finite: a million instances at the dearest price
    assert math.isfinite(1e6 * MOST["usd_per_hour"] * MOST["hours_per_month"])


def test_coordinates_tables_and_shapes() -> None:
    assert coordinate({"lat": -12.5}, "lat", "here", 90) == -12.5
    for bad in (91, math.nan, "x"):
        with pytest.raises(PlanInvalid, match=r"^plan: here: lat must be"):
            coordinate({"lat": bad}, "lat", "here", 90)
    assert as_table({"a": 1}, "here") == {"a": 1}
    with pytest.raises(PlanInvalid, match=r"^plan: here must be a table, got an array$"):
        as_table([1], "here")
    assert (shape({}), shape([]), shape(5)) == ("a table", "an array", "5")
