"""The location model: where a client is, how sure we are, and where the guess came from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LocationSource(StrEnum):
    EDGE = "edge"  # signed headers from the edge tier (Cloudflare request.cf)
    GEOIP = "geoip"  # a GeoIP database lookup
    DEFAULT = "default"  # unknown or private address: the configured default


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    country: str | None = None  # ISO 3166-1 alpha-2
    continent: str | None = None  # GeoIP2 continent code: AF AN AS EU NA OC SA
    city: str | None = None
    accuracy_km: float | None = None
    source: LocationSource = LocationSource.DEFAULT

    def as_dict(self) -> dict[str, float | str | None]:
        """JSON-ready, for explain output and ``geodb lookup --json``."""
        return {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "country": self.country,
            "continent": self.continent,
            "city": self.city,
            "accuracy_km": self.accuracy_km,
            "source": str(self.source),
        }

    def describe(self) -> str:
        place = ", ".join(p for p in (self.city, self.country) if p) or "unknown place"
        return f"{place} ({self.latitude:.2f}, {self.longitude:.2f}) source={self.source}"
