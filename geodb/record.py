"""A GeoIP record's fields, checked before they become a Location.

geoip2 passes a file's values on as they are: a NaN latitude, a latitude of 999 or a longitude
written as a string would reach the router (NaN makes every distance a coin toss), the JSON
output (NaN is no JSON) and ``Location.describe`` (a string is no float: a traceback). A field
that is present but unusable is taken as absent, and named, for the reader to log.
"""

from __future__ import annotations

import math
import reprlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import geoip2.models

from geodb.countries import CONTINENT_NAMES, place

EARTH_CIRCUMFERENCE_KM = 40075.0  # an accuracy radius larger than this says nothing


@dataclass(frozen=True, slots=True)
class Fields:
    """What a record says, each field checked: None where absent or unusable."""

    country: str | None  # upper case; the registered country where the record has no country
    continent: str | None  # upper case; the country's where the record has none
    city: str | None  # only with coordinates: a city's name at its country's point misleads
    point: tuple[float, float] | None  # (latitude, longitude): both usable, or None
    accuracy_km: float | None


def _number(value: object, low: float, high: float) -> float | None:
    """A finite number within [low, high] (a bool is no number, though Python's int says so)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and low <= v <= high else None


def _text(value: object, ok: Callable[[str], bool]) -> str | None:
    return value if isinstance(value, str) and ok(value) else None


def _is_code(s: str) -> bool:  # ISO 3166-1 alpha-2's shape; XK, which GeoIP gives, included
    return len(s) == 2 and s.isascii() and s.isalpha()


def _is_continent(s: str) -> bool:
    return s.upper() in CONTINENT_NAMES


def is_place_name(s: str) -> bool:
    # A control character or a line break would reach every log line that names the city.
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in s)


def checked_fields(rec: geoip2.models.Country) -> tuple[Fields, list[str]]:
    """The fields of a City or Country record, and what was present but unusable, each as
    ``name value`` (``latitude nan``). A Country record has no coordinates or city."""
    bad: list[str] = []

    def keep(name: str, raw: object, value: object) -> None:
        if raw is not None and value is None:
            bad.append(f"{name} {reprlib.repr(raw)}")  # reprlib: a long value cut short

    # The country where the address is, else where its block is registered.
    country = _text(rec.country.iso_code, _is_code)
    keep("country", rec.country.iso_code, country)
    if country is None:
        country = _text(rec.registered_country.iso_code, _is_code)
        keep("registered_country", rec.registered_country.iso_code, country)
    continent = _text(rec.continent.code, _is_continent)
    keep("continent", rec.continent.code, continent)
    country, continent = place(country, continent)
    if not isinstance(rec, geoip2.models.City):
        return Fields(country, continent, None, None, None), bad
    loc = rec.location
    lat, lon = _number(loc.latitude, -90, 90), _number(loc.longitude, -180, 180)
    keep("latitude", loc.latitude, lat)
    keep("longitude", loc.longitude, lon)
    accuracy = _number(loc.accuracy_radius, 0, EARTH_CIRCUMFERENCE_KM)
    keep("accuracy_radius", loc.accuracy_radius, accuracy)
    city = _text(rec.city.name, is_place_name)
    keep("city", rec.city.name, city)
    point = (lat, lon) if lat is not None and lon is not None else None
    return Fields(country, continent, city if point else None, point, accuracy), bad
