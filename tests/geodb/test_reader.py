from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

import pytest
from geoip2.models import City
from geoip2.types import IPAddress
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geodb.build import build_from_rows
from geodb.errors import DatabaseError
from geodb.location import Location, LocationSource
from geodb.reader import DefaultSource, GeoIPSource, Reload

DEFAULT = Location(50.11, 8.68, "DE", "EU")


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def city_db(path: Path, city: str = "Paris", lat: float = 48.86) -> Path:
    build_from_rows([("r", ["192.0.2.0/24", "FR", "EU", str(lat), "2.35", city])], path)
    return path


def country_db(path: Path) -> Path:
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    w.insert_network(
        IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "JP"}, "continent": {"code": "AS"}}
    )
    w.insert_network(
        IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "ZZ"}, "continent": {"code": "AF"}}
    )
    w.to_db_file(str(path))
    return path


def test_city_database(tmp_path: Path) -> None:
    src = GeoIPSource(city_db(tmp_path / "c.mmdb"), DEFAULT)
    loc = src.locate(ip("192.0.2.10"))
    assert (loc.city, loc.country, loc.continent, loc.latitude) == ("Paris", "FR", "EU", 48.86)
    assert loc.source is LocationSource.GEOIP


def test_a_6to4_address_is_its_ipv4_sites(tmp_path: Path) -> None:
    # MaxMind's files alias 2002::/16 to IPv4; one geodb.build wrote did not, so the same client
    # was GB with MaxMind's file and unplaced (no residency rule) with a built one.
    src = GeoIPSource(city_db(tmp_path / "c.mmdb"), DEFAULT)
    assert src.locate(ip("2002:c000:20a::1")).city == "Paris"  # 192.0.2.10's site
    assert src.locate(ip("2001:db8::1")).source is not LocationSource.GEOIP


def test_unknown_private_and_missing_go_to_default(tmp_path: Path) -> None:
    src = GeoIPSource(city_db(tmp_path / "c.mmdb"), DEFAULT)
    for addr in ("8.8.8.8", "10.1.2.3", "::1"):
        assert src.locate(ip(addr)) == DEFAULT
    assert src.locate(None) == DEFAULT
    assert DefaultSource(DEFAULT).locate(ip("192.0.2.1")) == DEFAULT


def test_country_database_uses_the_shipped_reference_points(tmp_path: Path) -> None:
    src = GeoIPSource(country_db(tmp_path / "k.mmdb"), DEFAULT)
    tokyo = src.locate(ip("198.51.100.5"))
    assert (tokyo.country, tokyo.latitude, tokyo.longitude) == ("JP", 35.68, 139.77)
    assert tokyo.accuracy_km == 500
    unknown_country = src.locate(ip("203.0.113.5"))  # not in the table: continent fallback
    assert (unknown_country.latitude, unknown_country.accuracy_km) == (-1.29, 2500)


def test_bad_files_are_refused_with_the_name(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        GeoIPSource(tmp_path / "nope.mmdb", DEFAULT)
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatabaseError, match=f"{junk}.*corrupt or truncated"):
        GeoIPSource(junk, DEFAULT)
    with pytest.raises(DatabaseError, match=f"{tmp_path} is a directory, not a .mmdb file"):
        GeoIPSource(tmp_path, DEFAULT)
    asn = tmp_path / "asn.mmdb"
    w = MMDBWriter(database_type="GeoLite2-ASN")
    w.insert_network(IPSet(["1.0.0.0/8"]), {"autonomous_system_number": 1})
    w.to_db_file(str(asn))
    with pytest.raises(DatabaseError, match="City or Country"):
        GeoIPSource(asn, DEFAULT)


def test_hot_reload_swaps_and_refuses_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = city_db(tmp_path / "c.mmdb")
    src = GeoIPSource(db, DEFAULT)
    assert src.maybe_reload() is Reload.UNCHANGED
    os.replace(city_db(tmp_path / "new.mmdb", "Lyon", 45.76), db)
    assert src.maybe_reload() is Reload.RELOADED
    assert src.locate(ip("192.0.2.1")).city == "Lyon"
    db.write_bytes(db.read_bytes()[:100])
    with caplog.at_level(logging.ERROR, logger="geodb"):
        assert src.maybe_reload() is Reload.REFUSED
        # The same broken file: no second attempt, no log, no second count.
        assert src.maybe_reload() is Reload.UNCHANGED
    assert [r.getMessage() for r in caplog.records if str(db) in r.getMessage()] and len(
        caplog.records
    ) == 1
    assert src.locate(ip("192.0.2.1")).city == "Lyon"
    # log.format = "ecs" writes these fields: the refusal is an event with its reason.
    refused = caplog.records[0].__dict__
    assert refused["event.action"] == "geoip-reload-refused" and refused["file.path"] == str(db)
    assert refused["event.reason"] and refused["event.kind"] == "event"
    db.unlink()
    assert src.maybe_reload() is Reload.UNCHANGED  # missing mid-replacement: keep serving
    assert src.locate(ip("192.0.2.1")).city == "Lyon"


def count_reads(src: GeoIPSource) -> list[str]:
    """The addresses ``src`` reads from its file from now on, in order."""
    reads: list[str] = []
    real = src._db.reader.city

    def counting(ip_address: IPAddress) -> City:
        reads.append(str(ip_address))
        return real(ip_address)

    src._db.reader.city = counting  # type: ignore[method-assign]
    return reads


def test_lookups_are_cached_per_address_and_a_reload_drops_the_cache(tmp_path: Path) -> None:
    db = city_db(tmp_path / "c.mmdb")
    src = GeoIPSource(db, DEFAULT, cache_size=2)
    reads = count_reads(src)
    assert src.locate(ip("192.0.2.1")).city == "Paris"
    assert src.locate(ip("192.0.2.1")).city == "Paris"
    assert src.locate(ip("10.0.0.1")) == DEFAULT  # a miss is remembered too
    assert src.locate(ip("10.0.0.1")) == DEFAULT
    assert reads == ["192.0.2.1", "10.0.0.1"]
    src.locate(ip("192.0.2.2"))  # a third address: the least recently used one goes
    src.locate(ip("192.0.2.1"))
    assert reads == ["192.0.2.1", "10.0.0.1", "192.0.2.2", "192.0.2.1"]
    # A reload answers from the new file at once, for an address the old one had cached.
    os.replace(city_db(tmp_path / "new.mmdb", "Lyon", 45.76), db)
    assert src.maybe_reload() is Reload.RELOADED
    assert src.locate(ip("192.0.2.1")).city == "Lyon"


def test_a_corrupt_record_gets_the_default_logged_once_and_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The probe at open time reads a few addresses only: a bad record elsewhere loads.
    path = tmp_path / "bad.mmdb"
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    w.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"continent": "EU", "location": {"latitude": 51.0, "longitude": 9.0}},
    )
    w.to_db_file(str(path))
    src = GeoIPSource(path, DEFAULT)
    reads = count_reads(src)
    with caplog.at_level(logging.ERROR, logger="geodb"):
        for _ in range(2):
            assert src.locate(ip("198.51.100.1")) == DEFAULT  # geoip2 raises TypeError
            assert src.locate(ip("198.51.100.2")) == DEFAULT
    assert reads == ["198.51.100.1", "198.51.100.2"]  # the fallback is cached like a miss
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()


def test_a_city_record_without_country_places_it_as_a_country_record_does(
    tmp_path: Path,
) -> None:
    # MaxMind City records can have a location and a registered_country but no country.
    record = {"registered_country": {"iso_code": "DE"}}
    located = {**record, "location": {"latitude": 51.0, "longitude": 9.0, "accuracy_radius": 50}}
    paths = []
    for kind, rec in (("GeoIP2-City", located), ("GeoIP2-Country", record)):
        paths.append(tmp_path / f"{kind}.mmdb")
        w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=kind)
        w.insert_network(IPSet(["203.0.113.0/24"]), rec)
        w.to_db_file(str(paths[-1]))
    city = GeoIPSource(paths[0], DEFAULT).locate(ip("203.0.113.1"))
    country = GeoIPSource(paths[1], DEFAULT).locate(ip("203.0.113.1"))
    assert (city.country, city.continent) == (country.country, country.continent) == ("DE", "EU")
    assert (city.latitude, city.accuracy_km) == (51.0, 50)


def test_a_missing_file_is_warned_of_once_counted_refused_and_its_return_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = city_db(tmp_path / "c.mmdb")
    src = GeoIPSource(db, DEFAULT)
    db.unlink()
    with caplog.at_level(logging.INFO, logger="geodb"):
        # The first poll may fall between geoipupdate's unlink and rename: nothing yet.
        assert src.maybe_reload() is Reload.UNCHANGED
        assert not caplog.records
        assert src.maybe_reload() is Reload.REFUSED  # still gone: one warning, one count
        assert src.maybe_reload() is Reload.UNCHANGED
        assert src.maybe_reload() is Reload.UNCHANGED
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "does not exist" in caplog.records[0].getMessage()
        assert caplog.records[0].__dict__["event.action"] == "geoip-reload-refused"
        assert src.locate(ip("192.0.2.1")).city == "Paris"
        os.replace(city_db(tmp_path / "new.mmdb", "Lyon", 45.76), db)
        assert src.maybe_reload() is Reload.RELOADED
        back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
        assert len(back) == 1
        db.unlink()  # gone again: warned again
        assert src.maybe_reload() is Reload.UNCHANGED
        assert src.maybe_reload() is Reload.REFUSED
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 2


def one_record_db(path: Path, record: dict[str, object], kind: str = "GeoIP2-City") -> Path:
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=kind)
    w.insert_network(IPSet(["198.51.100.0/24"]), record)
    w.to_db_file(str(path))
    return path


@pytest.mark.parametrize(
    ("location", "bad"),
    [
        ({"latitude": float("nan"), "longitude": 1.0}, "latitude nan"),  # was JSON's NaN
        ({"latitude": 999.0, "longitude": 5000.0}, "latitude 999.0; longitude 5000.0"),
        ({"latitude": 51.5, "longitude": "abc"}, "longitude 'abc'"),  # describe() raised
        ({"latitude": 51.5, "longitude": float("inf")}, "longitude inf"),
        ({"latitude": True, "longitude": 2.5}, "latitude True"),  # a bool is an int
    ],
)
def test_unusable_coordinates_are_taken_as_absent_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, location: dict[str, object], bad: str
) -> None:
    """The record keeps its country: placed at the country's reference point, as a record
    without coordinates is, and still under the residency rules for GB and EU."""
    record = {"country": {"iso_code": "GB"}, "city": {"names": {"en": "London"}}}
    path = one_record_db(tmp_path / "c.mmdb", {**record, "location": location})
    src = GeoIPSource(path, DEFAULT)
    with caplog.at_level(logging.WARNING, logger="geodb"):
        for addr in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
            loc = src.locate(ip(addr))
            assert (loc.country, loc.continent, loc.city) == ("GB", "EU", None)
            assert (loc.latitude, loc.longitude, loc.accuracy_km) == (51.51, -0.13, 500)
            assert loc.source is LocationSource.GEOIP
            loc.describe()
            assert json.loads(json.dumps(loc.as_dict(), allow_nan=False))
    assert len(caplog.records) == 1, caplog.records  # once per file, as a corrupt record is
    said = caplog.records[0]
    assert str(path) in said.getMessage() and said.getMessage().endswith(bad)
    assert said.__dict__["event.action"] == "geoip-record-unusable"
    assert said.__dict__["event.reason"] == bad


def test_unusable_coordinates_without_a_country_get_the_default(tmp_path: Path) -> None:
    path = one_record_db(tmp_path / "c.mmdb", {"location": {"latitude": 999.0, "longitude": 1}})
    assert GeoIPSource(path, DEFAULT).locate(ip("198.51.100.1")) == DEFAULT


@pytest.mark.parametrize(
    ("record", "expected", "bad"),
    [
        (  # an AttributeError (iso_code.upper()) escaped to the request
            {"country": {"iso_code": 5}, "registered_country": {"iso_code": "JP"}},
            ("JP", "AS", 500.0),
            "country 5",
        ),
        (
            {"country": {"iso_code": "JP"}, "continent": {"code": 7}},
            ("JP", "AS", 500.0),
            "continent 7",
        ),
        (  # was country "JAPAN", which no residency rule names
            {"country": {"iso_code": "Japan"}, "continent": {"code": "AS"}},
            (None, "AS", 2500.0),
            "country 'Japan'",
        ),
    ],
)
def test_unusable_country_or_continent_is_taken_as_absent(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record: dict[str, object],
    expected: tuple[object, ...],
    bad: str,
) -> None:
    src = GeoIPSource(one_record_db(tmp_path / "k.mmdb", record, "GeoIP2-Country"), DEFAULT)
    with caplog.at_level(logging.WARNING, logger="geodb"):
        loc = src.locate(ip("198.51.100.1"))
    assert (loc.country, loc.continent, loc.accuracy_km) == expected
    assert [r.__dict__["event.reason"] for r in caplog.records] == [bad]


def test_an_unusable_city_name_is_dropped_and_the_coordinates_kept(tmp_path: Path) -> None:
    record = {
        "country": {"iso_code": "DE"},
        "city": {"names": {"en": 5}},  # describe() raised a TypeError
        "location": {"latitude": 52.52, "longitude": 13.4, "accuracy_radius": float("nan")},
    }
    loc = GeoIPSource(one_record_db(tmp_path / "c.mmdb", record), DEFAULT).locate(
        ip("198.51.100.1")
    )
    assert (loc.city, loc.latitude, loc.longitude, loc.accuracy_km) == (None, 52.52, 13.4, 500)
    assert "DE" in loc.describe()
