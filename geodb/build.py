"""Build a City-format .mmdb from CSV rows ``network,country,continent,latitude,longitude[,city]``.

For private networks, overrides and test fixtures. The output reads with geoip2's ``city()``
exactly like a MaxMind City database.

Rows may overlap: the most specific network wins for the addresses it covers, whatever the
order of the rows (``10.1.0.0/16`` inside ``10.0.0.0/8`` answers for 10.1.x.x, the /8 for the
rest), as an override file is meant to read. The same network twice is refused: which of the
two was meant is not ours to guess. An IPv4 network is the same network as its IPv4-compatible
IPv6 form (``10.0.0.0/8`` and ``::a00:0/104``): that is where the database stores it.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geodb.countries import CONTINENT_NAMES, country_code
from geodb.errors import BuildError
from geodb.record import is_place_name

DATABASE_TYPE = "GeoLite2-City"  # geoip2 accepts city() lookups on this type
ROW_ACCURACY_KM = 50  # accuracy_radius written for every row: a city-level guess

Network = ipaddress.IPv6Network  # where a row's network sits in the database's IPv6 tree


def _tree_network(network: str, where: str) -> Network:
    """The row's network as the database stores it: IPv4 in the IPv4-compatible ``::/96``.
    Host bits are refused, not cleared: ``10.0.0.5/8`` is a typo for a /8 or for a /32."""
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise BuildError(f"{where}: {network!r} is not a network (CIDR)") from exc
    scope = getattr(net.network_address, "scope_id", None)
    if scope is not None:  # else compared with its unscoped interface: "host bits set"
        raise BuildError(
            f"{where}: {network} is a scoped address (%{scope}): a scope names a link on one "
            "host, not a network; scoped networks are not allowed"
        )
    if net.network_address != ipaddress.ip_interface(network).ip:
        raise BuildError(f"{where}: {network} has host bits set (the network is {net})")
    if isinstance(net, ipaddress.IPv4Network):
        return ipaddress.IPv6Network((int(net.network_address), net.prefixlen + 96))
    if net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        # An IPv4-mapped network (::ffff:10.0.0.0/104) is the IPv4 one: lookups read a mapped
        # address as IPv4, so kept where it was written no lookup reached it, unsaid.
        return ipaddress.IPv6Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen))
    return net


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _country(country: str, where: str) -> str:
    try:
        return country_code(country)
    except ValueError as exc:  # the same words as the gateway's config ("UK": use GB)
        raise BuildError(f"{where}: country {country!r} is {exc}") from None


def _record(row: Sequence[str], where: str) -> tuple[Network, dict[str, object]]:
    if len(row) not in (5, 6):
        raise BuildError(
            f"{where}: expected network,country,continent,latitude,longitude[,city], "
            f"got {len(row)} fields"
        )
    network, country, continent, lat_s, lon_s = (f.strip() for f in row[:5])
    net = _tree_network(network, where)
    country = _country(country, where)
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
        "country": {"iso_code": country, "names": {"en": country}},
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
    city = row[5].strip() if len(row) == 6 else ""
    # A NUL or an escape sequence would reach every log line and page that names the city;
    # a line or paragraph separator (U+2028, U+2029) would break those lines as a newline does.
    if not is_place_name(city):
        raise BuildError(f"{where}: city {city!r} holds a control character or line break")
    if city:
        record["city"] = {"names": {"en": city}}
    return net, record


def _line(where: str) -> str:
    """``line 2`` for ``nets.csv:2`` (the second row of a duplicate is in the same file); a
    row a caller labelled otherwise by its label."""
    _, sep, n = where.rpartition(":")
    return f"line {n}" if sep and n.isdigit() else f"row {where!r}"


def _records(rows: Iterable[tuple[str, Sequence[str]]]) -> list[tuple[Network, dict[str, object]]]:
    """Every row checked, duplicates refused, broadest network first: each later insert
    overwrites what it covers, so the most specific row ends up answering for its addresses."""
    seen: dict[Network, str] = {}
    out = []
    for where, row in rows:
        net, record = _record(row, where)
        if net in seen:
            raise BuildError(f"{where}: network {row[0].strip()} is already on {_line(seen[net])}")
        seen[net] = where
        out.append((net, record))
    out.sort(key=lambda x: x[0].prefixlen)  # stable: equal lengths cannot overlap anyway
    return out


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_target(out: Path, target: str) -> None:
    """Refuse a ``target`` that exists and is not a regular file: the rename would put the
    database in place of a device node (/dev/null, as root), a FIFO or a socket."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return  # a new file (or a dangling link's target): created by the rename
    except OSError as exc:
        raise BuildError(f"cannot write {out}: {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):  # else the rename fails only after the whole file is written
        raise BuildError(f"cannot write {out}: Is a directory")
    kind = next((k for test, k in _KINDS if test(mode)), "a special file")
    via = "" if target == os.path.abspath(out) else f" ({target})"  # a link: where it led
    raise BuildError(f"cannot write {out}: it is {kind}{via}, not a regular file")


def _write(writer: MMDBWriter, out: Path) -> None:
    # A symlink (current.mmdb -> releases/N.mmdb) is written through: the rename replaces its
    # target, as writing to the link would, and the link stays a link. realpath, not
    # resolve(): a symlink loop is then the open's ELOOP, one line, not a RuntimeError.
    target = os.path.realpath(out)
    _check_target(out, target)
    # Written in a directory of its own beside the target (mkdtemp: mode 0700, a fresh name):
    # nobody else can put a link where the writer opens its file by name, as a fixed or merely
    # exclusive OUT.tmp allowed between its creation and the write (root following a link to
    # /etc/passwd would write the database into it); the same filesystem, so the rename holds.
    try:
        folder = tempfile.mkdtemp(prefix=".geodb-build.", dir=os.path.dirname(target))
    except OSError as exc:
        raise BuildError(f"cannot write {out}: {exc.strerror}") from None
    tmp = os.path.join(folder, "db.mmdb")
    try:
        writer.to_db_file(tmp)
        with open(tmp, "rb") as f:  # the data on disk before the rename: no empty file
            os.fsync(f.fileno())  # in front of a hot-reloading gateway after a crash
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open would make it, not mkdtemp's 0700
        _check_target(out, target)  # again: writing a large file takes a while
        os.replace(tmp, target)  # atomic: a gateway hot-reloading `out` never sees half a file
    except OSError as exc:
        raise BuildError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_from_rows(rows: Iterable[tuple[str, Sequence[str]]], out: Path) -> int:
    """Write the database; ``rows`` yields (where, fields). Returns the number of networks."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description="geogate geodb build",
    )
    records = _records(rows)
    if not records:
        raise BuildError("no rows: nothing to build")
    for net, record in records:
        # The writer cannot insert a /0 (its tree has no bit to hang it on): two halves can,
        # one at a time (an IPSet would merge them back into the /0).
        for part in net.subnets() if net.prefixlen == 0 else [net]:
            writer.insert_network(IPSet([str(part)]), record)
    _write(writer, out)
    return len(records)


def build_from_csv(csv_path: Path, out: Path) -> int:
    try:
        # Bytes, decoded whole: the error's offset is then the file's. A BOM (spreadsheets
        # write one) is not part of the header.
        text = csv_path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise BuildError(f"cannot read {csv_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise BuildError(
            f"{csv_path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): "
            "save the file as UTF-8"
        ) from None
    return build_from_rows(_csv_rows(csv_path, text), out)


def _csv_rows(csv_path: Path, text: str) -> list[tuple[str, list[str]]]:
    """(``path:line``, fields) of each row. Lines end where the csv module ends them (\\n,
    \\r\\n, \\r), not at str.splitlines' U+2028 and kin, so a line number is the file's."""
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    try:
        for row in reader:
            where = f"{csv_path}:{start}"
            # A quoted field may span lines; a row is one line here: a line break in a city
            # is no place name, and one elsewhere is a quote left open.
            if any("\n" in f or "\r" in f for f in row):
                raise BuildError(
                    f"{where}: a line break inside a quoted field (is a quote left open?)"
                )
            start = reader.line_num + 1
            if not row or row[0].lstrip().startswith("#") or row[0].strip() == "network":
                continue
            rows.append((where, row))
    except csv.Error as exc:  # a field over the csv module's size limit
        raise BuildError(f"{csv_path}:{reader.line_num}: {exc}") from None
    return rows
