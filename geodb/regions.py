"""Well-known cloud regions and where they are (see data/regions.csv): one table for the
demo, the tests and the benchmarks, instead of coordinates written out in each."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from geodb.countries import data_rows


@dataclass(frozen=True, slots=True)
class KnownRegion:
    id: str
    name: str
    latitude: float
    longitude: float


@cache
def known_regions() -> dict[str, KnownRegion]:
    return {
        r["id"]: KnownRegion(r["id"], r["name"], float(r["latitude"]), float(r["longitude"]))
        for r in data_rows("regions.csv")
    }


def known_region(region_id: str) -> KnownRegion:
    try:
        return known_regions()[region_id]
    except KeyError:
        known = ", ".join(known_regions())
        raise KeyError(f"no known region {region_id!r}; known: {known}") from None
