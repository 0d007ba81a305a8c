"""Reference points for country- and continent-level locations (see data/countries.csv)."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

# Country codes GeoIP databases give that ISO 3166-1 has not assigned (MaxMind: Kosovo).
EXTRA_COUNTRIES = frozenset({"XK"})
# Their continents, as GeoIP gives them (GeoNames'), for what must know one without a GeoIP
# answer at hand (which residency rule would take the country first); no row: no point.
NO_ROW_CONTINENTS = {"XK": "EU"}
# Codes people write for a country whose ISO code is another (the EU's own usage).
NOT_ISO = {"UK": "GB", "EL": "GR"}
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


def continent_of(country: str) -> str | None:
    """The country's continent: its row's, or for a code with no row (XK) GeoIP's."""
    up = country.upper()
    return country_continent(up) or NO_ROW_CONTINENTS.get(up)


def place(country: str | None, continent: str | None) -> tuple[str | None, str | None]:
    """(country, continent) with the continent filled in from the country where it is missing:
    GeoIP records, edge headers and the configured default can name a country alone."""
    country = country.upper() if country else None
    if continent:
        return country, continent.upper()
    return country, country_continent(country) if country else None


def continent_point(continent: str) -> tuple[float, float] | None:
    return _continents().get(continent.upper())


def country_code(code: str) -> str:
    """An ISO 3166-1 alpha-2 code, as GeoIP gives a client's country, in upper case; else
    ValueError naming the code to use where one is known ("UK": GB, "Germany": DE): a rule
    or a database row naming "UK" would never match a client (GeoIP says GB)."""
    import pycountry  # here: about 50 ms to import, for a check that runs on config load only

    up = code.upper()
    # isascii: pycountry matches without regard to case, and "ÄÖ".upper() is no ISO code
    if up.isascii() and (up in EXTRA_COUNTRIES or pycountry.countries.get(alpha_2=up)):
        return up
    hint = NOT_ISO.get(up)
    if hint is None:
        try:  # a name or an alpha-3 code: say which alpha-2 code it has
            hint = pycountry.countries.lookup(code).alpha_2
        except LookupError:
            hint = None
    said = f"; use {hint}" if hint else " (such as DE, GB, US)"
    raise ValueError(f"not an ISO 3166-1 alpha-2 country code{said}")
