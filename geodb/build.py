"""Build a City-format .mmdb from CSV rows ``network,country,continent,latitude,longitude[,city]``.

For private networks, overrides and test fixtures. The output reads with geoip2's ``city()``
exactly like a MaxMind City database.
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geodb.countries import CONTINENT_NAMES
from geodb.errors import BuildError

DATABASE_TYPE = "GeoLite2-City"  # geoip2 accepts city() lookups on this type
ROW_ACCURACY_KM = 50  # accuracy_radius written for every row: a city-level guess


def _record(row: Sequence[str], where: str) -> tuple[str, dict[str, object]]:
    if len(row) not in (5, 6):
        raise BuildError(
            f"{where}: expected network,country,continent,latitude,longitude[,city], "
            f"got {len(row)} fields"
        )
    network, country, continent, lat_s, lon_s = (f.strip() for f in row[:5])
    try:
        ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise BuildError(f"{where}: {network!r} is not a network (CIDR)") from exc
    if len(country) != 2 or not country.isalpha():
        raise BuildError(f"{where}: country {country!r} is not an ISO 3166 alpha-2 code")
    if continent.upper() not in CONTINENT_NAMES:
        raise BuildError(
            f"{where}: continent {continent!r} is not one of {', '.join(CONTINENT_NAMES)}"
        )
    try:
        lat, lon = float(lat_s), float(lon_s)
    except ValueError as exc:
        raise BuildError(f"{where}: latitude/longitude must be numbers") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BuildError(f"{where}: latitude {lat} / longitude {lon} out of range")
    record: dict[str, object] = {
        "country": {"iso_code": country.upper(), "names": {"en": country.upper()}},
        "continent": {
            "code": continent.upper(),
            "names": {"en": CONTINENT_NAMES[continent.upper()]},
        },
        "location": {
            "latitude": lat,
            "longitude": lon,
            "accuracy_radius": ROW_ACCURACY_KM,
        },
    }
    if len(row) == 6 and row[5].strip():
        record["city"] = {"names": {"en": row[5].strip()}}
    return network, record


def build_from_rows(rows: Iterable[tuple[str, Sequence[str]]], out: Path) -> int:
    """Write the database; ``rows`` yields (where, fields). Returns the number of networks."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description="geogate geodb build",
    )
    count = 0
    for where, row in rows:
        network, record = _record(row, where)
        writer.insert_network(IPSet([network]), record)
        count += 1
    if count == 0:
        raise BuildError("no rows: nothing to build")
    tmp = out.with_name(out.name + ".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(out)  # atomic: a gateway hot-reloading `out` never sees half a file
    return count


def build_from_csv(csv_path: Path, out: Path) -> int:
    try:
        text = csv_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"cannot read {csv_path}: {exc.strerror}") from exc
    rows = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].lstrip().startswith("#") or row[0].strip() == "network":
            continue
        rows.append((f"{csv_path}:{lineno}", row))
    return build_from_rows(rows, out)
