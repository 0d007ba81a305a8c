"""Distance and the network-RTT model for paths nobody has measured yet.

The model is fit to published inter-region P50 RTTs (a major cloud's backbone): a fixed cost
for the last miles and routers plus a per-km term about 1.5x the speed-of-light-in-fibre floor,
because real fibre does not follow great circles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
RTT_FIXED_MS = 10.0  # fitted intercept
RTT_MS_PER_KM = 0.0153  # fitted slope
FIBRE_FLOOR_MS_PER_KM = 0.01  # light in glass, round trip: 2 / 200,000 km/s
# Pairs of points whose estimate is kept. A gateway asks about few points (its regions, and
# GeoIP's city-level client places), so the hot ones stay; a flood of distinct coordinates
# evicts the least recently used and cannot grow it: a few hundred bytes an entry at most.
EST_RTT_CACHE_SIZE = 8192


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance; accurate to ~0.5 %, far below the RTT model's own error."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _est_rtt_ms(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Estimated round-trip time between two points, never under the physical floor."""
    km = great_circle_km(lat1, lon1, lat2, lon2)
    return max(RTT_FIXED_MS + RTT_MS_PER_KM * km, FIBRE_FLOOR_MS_PER_KM * km)


# Memoised: the router and the steering hint ask for the same few pairs on every request, and
# a dict lookup costs less than the haversine's trigonometry. Pure, so a cached answer is the
# answer. The annotation keeps callers checked against the signature (lru_cache's own type
# takes any args).
est_rtt_ms: Callable[[float, float, float, float], float] = lru_cache(maxsize=EST_RTT_CACHE_SIZE)(
    _est_rtt_ms
)
