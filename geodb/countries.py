"""Reference points for country- and continent-level locations (see data/countries.csv)."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

# How far off a country-level guess typically is: half the span of a mid-sized country.
COUNTRY_ACCURACY_KM = 500.0
CONTINENT_ACCURACY_KM = 2500.0
# GeoIP's continent codes (MaxMind's continent.code) and their English names.
CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


def data_rows(name: str) -> list[dict[str, str]]:
    """Rows of one of the package's CSV files (data/), comment lines skipped."""
    text = resources.files("geodb").joinpath("data", name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


@cache
def _countries() -> dict[str, tuple[str, float, float]]:
    return {
        r["country"]: (r["continent"], float(r["latitude"]), float(r["longitude"]))
        for r in data_rows("countries.csv")
    }


@cache
def _continents() -> dict[str, tuple[float, float]]:
    return {
        r["continent"]: (float(r["latitude"]), float(r["longitude"]))
        for r in data_rows("continents.csv")
    }


def country_point(country: str) -> tuple[float, float] | None:
    found = _countries().get(country.upper())
    return None if found is None else (found[1], found[2])


def country_continent(country: str) -> str | None:
    found = _countries().get(country.upper())
    return None if found is None else found[0]


def place(country: str | None, continent: str | None) -> tuple[str | None, str | None]:
    """(country, continent) with the continent filled in from the country where it is missing:
    GeoIP records, edge headers and the configured default can name a country alone."""
    country = country.upper() if country else None
    if continent:
        return country, continent.upper()
    return country, country_continent(country) if country else None


def continent_point(continent: str) -> tuple[float, float] | None:
    return _continents().get(continent.upper())
