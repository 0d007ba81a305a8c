"""Where is this client: client-IP extraction, GeoIP readers, the location and distance model.

geodb imports neither ``gateway`` nor ``backend``; the gateway depends on it, not the reverse.
"""

from __future__ import annotations

from geodb.clientip import client_ip
from geodb.distance import est_rtt_ms, great_circle_km
from geodb.errors import GeoDBError
from geodb.location import Location, LocationSource

__all__ = [
    "GeoDBError",
    "Location",
    "LocationSource",
    "client_ip",
    "est_rtt_ms",
    "great_circle_km",
]
