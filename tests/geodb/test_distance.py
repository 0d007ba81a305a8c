from __future__ import annotations

import csv
import io
import itertools
import random

import pytest

from geodb.distance import (
    EST_RTT_CACHE_SIZE,
    FIBRE_FLOOR_MS_PER_KM,
    _est_rtt_ms,
    est_rtt_ms,
    great_circle_km,
)

# A few published P50 inter-region RTTs (ms) with the regions' coordinates: the model must
# stay within 35 % of each — it is a prior for unmeasured paths, not a measurement.
PUBLISHED = """from_lat,from_lon,to_lat,to_lon,rtt_ms
37.37,-79.82,50.11,8.68,94
50.11,8.68,1.35,103.82,166
1.35,103.82,-33.87,151.21,95
37.37,-79.82,47.23,-119.85,73
1.35,103.82,35.68,139.77,72
"""


def test_great_circle_known_distance() -> None:
    assert great_circle_km(51.51, -0.13, 40.71, -74.01) == pytest.approx(5570, rel=0.01)
    assert great_circle_km(10, 10, 10, 10) == 0


@pytest.mark.parametrize("row", list(csv.DictReader(io.StringIO(PUBLISHED))))
def test_model_tracks_published_rtts(row: dict[str, str]) -> None:
    est = est_rtt_ms(
        float(row["from_lat"]), float(row["from_lon"]), float(row["to_lat"]), float(row["to_lon"])
    )
    assert est == pytest.approx(float(row["rtt_ms"]), rel=0.35)


@pytest.mark.parametrize("row", list(csv.DictReader(io.StringIO(PUBLISHED))))
def test_the_fibre_floor_is_below_every_measured_path(row: dict[str, str]) -> None:
    """The floor is physics (light in glass): no measured RTT may beat it. A floor constant
    set wrong (say 0.02 ms/km) fails here on the long paths."""
    km = great_circle_km(
        float(row["from_lat"]), float(row["from_lon"]), float(row["to_lat"]), float(row["to_lon"])
    )
    assert float(row["rtt_ms"]) >= FIBRE_FLOOR_MS_PER_KM * km


def test_short_paths_cost_the_fixed_term() -> None:
    # Same city: no distance, but a round trip through routers is never free.
    assert est_rtt_ms(50.11, 8.68, 50.11, 8.68) == pytest.approx(10.0)


def test_the_memoised_estimate_is_the_estimate() -> None:
    rng = random.Random(7)
    points = [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(50)]
    hits = est_rtt_ms.cache_info().hits  # type: ignore[attr-defined]  # shared with the suite
    for _ in range(3):  # misses, then hits
        for (a, b), (c, e) in itertools.pairwise(points):
            assert est_rtt_ms(a, b, c, e) == _est_rtt_ms(a, b, c, e)
    info = est_rtt_ms.cache_info()  # type: ignore[attr-defined]
    assert info.maxsize == EST_RTT_CACHE_SIZE  # bounded: a flood of places cannot grow it
    assert info.hits - hits >= 2 * 49  # the second and third passes came from the cache
