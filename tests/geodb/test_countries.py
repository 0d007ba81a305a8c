"""The shipped country table (geodb/data/countries.csv): one row per ISO code, each with the
continent GeoIP gives the country, so that a continent residency rule, GeoDNS's per-country
order and the gateway's GeoIP agree on every client of that country."""

from __future__ import annotations

import pycountry

from geodb.countries import CONTINENT_NAMES, country_continent, place


def test_every_iso_code_has_a_row_on_one_of_geoips_continents() -> None:
    codes = {c.alpha_2 for c in pycountry.countries}
    assert {c: country_continent(c) in CONTINENT_NAMES for c in codes} == dict.fromkeys(codes, True)


def test_transcontinental_countries_are_on_geonames_continent_as_maxmind_gives_it() -> None:
    # GeoIP2's continents are GeoNames' (countryInfo.txt). Cyprus was AS here: DNS then ordered
    # Cypriot clients for Asia while the gateway applied an EU rule to them.
    got = {c: country_continent(c) for c in ("CY", "TR", "RU", "KZ", "EG", "GE", "AM", "AZ")}
    want = {"CY": "EU", "TR": "AS", "RU": "EU", "KZ": "AS", "EG": "AF"}
    assert got == {**want, "GE": "AS", "AM": "AS", "AZ": "AS"}


def test_place_fills_a_missing_continent_from_the_country() -> None:
    assert place("cy", None) == ("CY", "EU")
    assert place("XK", None) == ("XK", None)  # no ISO code, no row: GeoIP's continent decides
    assert place(None, "eu") == (None, "EU")
