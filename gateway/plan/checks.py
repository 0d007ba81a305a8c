"""The plan input's values, checked one at a time: a number within its bounds, a coordinate,
a table. Every mistake is one line naming where it is and what is wrong, raised as
PlanInvalid."""

from __future__ import annotations

import math
from typing import Any

from gateway.errors import PlanInvalid

# The largest figure each number may be. Far past any real deployment, but small enough that
# every load, instance count and bill computed from them stays a finite float: without them
# requests_per_day = 1e308 ended in an OverflowError, hours_per_month = 1e307 in a bill of
# $inf, and peak_factor = 1e300 in instance counts 170 digits long, with exit status 0.
MOST = {
    "requests_per_day": 1e12,  # a trillion requests a day
    "input_tokens": 1e8,  # a hundred million tokens a request: past any context window
    "output_tokens": 1e8,
    "peak_factor": 1e3,  # the busiest hour over the day's average is 24 at most; minutes, more
    "usd_per_hour": 1e5,  # an instance's price
    "tokens_per_s": 1e9,  # one instance's output tokens/s
    "egress_usd_per_tb": 1e5,
    "storage_gb": 1e9,  # an exabyte
    "storage_usd_per_gb_month": 1e3,
    "target_utilisation": 1.0,
    "hours_per_month": 744.0,  # 31 days
    "bytes_per_output_token": 1e6,
    "input_token_weight": 1e3,
    "backend_ttft_ms": 3.6e6,  # an hour
}
OBJECTIVE_MOST_MS = 1e5  # a p95 RTT objective (the Earth's longest path is ~0.3 s)
# The smallest: an instance planned at 1e-320 of its capacity divided demand by zero.
LEAST = {"target_utilisation": 0.01}


def number(
    table: dict[str, Any],
    key: str,
    where: str,
    default: float | None = None,
    positive: bool = False,
    most: float | None = None,
) -> float:
    value = table.get(key, default)
    if value is None:
        raise PlanInvalid(f"plan: {where} has no {key}")
    # TOML reads nan and inf as floats; either would pass the sign test below and turn every
    # cost and count of the plan into nan or inf.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanInvalid(f"plan: {where}: {key} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        sign = "greater than 0" if positive else "0 or more"
        raise PlanInvalid(f"plan: {where}: {key} must be {sign}, got {value!r}")
    most = MOST.get(key) if most is None else most
    if most is not None and value > most:
        raise PlanInvalid(f"plan: {where}: {key} must be at most {most:,g}, got {value!r}")
    least = LEAST.get(key)
    if least is not None and value < least:
        raise PlanInvalid(f"plan: {where}: {key} must be at least {least:g}, got {value!r}")
    return float(value)


def coordinate(row: dict[str, Any], key: str, where: str, bound: float) -> float:
    """Degrees, west and south negative (the 0-or-more rule of the other numbers is wrong here)."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanInvalid(f"plan: {where}: {key} must be a number, got {value!r}")
    if not -bound <= value <= bound:
        raise PlanInvalid(
            f"plan: {where}: {key} must be between {-bound} and {bound}, got {value!r}"
        )
    return float(value)


def shape(value: object) -> str:
    """How a wrong value is named in a message: a table's repr can be long, and "a table" is
    what the file's author wrote, not what Python made of it."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def as_table(value: object, where: str) -> dict[str, Any]:
    """A section or row that must be a TOML table: ``settings = 5`` would otherwise end in an
    AttributeError far from the line at fault."""
    if not isinstance(value, dict):
        raise PlanInvalid(f"plan: {where} must be a table, got {shape(value)}")
    return value
