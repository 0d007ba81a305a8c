"""``geogate world``'s argument checks, each a one-line CLIError (the command's own tests in
test_world.py run them end to end)."""

from __future__ import annotations

import pytest

from gateway.cli.errors import CLIError
from gateway.cli.world_checks import (
    MAX_EVENT_S,
    MAX_REQUESTS,
    check_event_regions,
    check_event_s,
    check_requests,
)


@pytest.mark.parametrize("n", [0, -1, MAX_REQUESTS + 1, 10**9])
def test_requests_out_of_bounds_are_refused(n: int) -> None:
    with pytest.raises(CLIError, match=f"at most {MAX_REQUESTS:,}, got {n}$"):
        check_requests(n)


def test_requests_within_bounds_pass() -> None:
    for n in (1, 200, MAX_REQUESTS):
        check_requests(n)


@pytest.mark.parametrize("s", [0.0, -1.0, float("nan"), float("inf"), MAX_EVENT_S + 1])
def test_event_seconds_out_of_bounds_are_refused(s: float) -> None:
    with pytest.raises(CLIError, match="--event-s must be a positive number"):
        check_event_s(s)


def test_events_need_a_region_besides_the_origin() -> None:
    with pytest.raises(CLIError, match="no region other than the origin 'eu-central'") as e:
        check_event_regions(("drain", "fail"), ("eu-central",))
    assert "\n" not in str(e.value)
    check_event_regions((), ("eu-central",))  # the steady state alone needs no second region
    check_event_regions(("drain",), ("eu-central", "us-east"))
