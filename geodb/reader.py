"""GeoIP2 City/Country databases with hot reload.

Files are read whole into memory (MODE_MEMORY) rather than mmap'ed: a database overwritten in
place under a live mmap makes the process die of SIGBUS, and an in-memory copy makes a reload
an atomic swap of one reference. A City file is ~70 MB; that is the price.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import geoip2.database
import geoip2.errors
import maxminddb
import maxminddb.errors

from geodb.countries import (
    CONTINENT_ACCURACY_KM,
    COUNTRY_ACCURACY_KM,
    continent_point,
    country_point,
)
from geodb.errors import DatabaseError
from geodb.location import Location, LocationSource
from geodb.record import Fields, checked_fields

log = logging.getLogger("geodb")


def _event(action: str, path: Path, reason: str | None = None) -> dict[str, object]:
    """ECS fields of a reload event (the gateway's log.format = "ecs"; text ignores them).
    geodb knows nothing of the gateway, so these are written out, in gateway.logs' shape."""
    fields: dict[str, object] = {
        "event.kind": "event",
        "event.action": action,
        "event.dataset": "geogate.events",
        "file.path": str(path),
    }
    if reason is not None:
        fields["event.reason"] = reason
    return fields


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses looked up once when a file is opened: a corrupt search tree or data section
# shows up here instead of on the request path.
_PROBE_ADDRESSES = ("1.1.1.1", "8.8.8.8", "81.2.69.160", "2001:4860:4860::8888", "127.0.0.1")
# What a lookup in a file whose data section is partly corrupt raises (the probe at open time
# reads only a few records): the address gets the default location instead of a 500.
_CORRUPT_RECORD = (
    maxminddb.errors.InvalidDatabaseError,
    KeyError,
    TypeError,
    ValueError,  # UnicodeDecodeError among them
)
# Addresses whose location a GeoIPSource remembers (least recently used out first). A lookup
# decodes a whole City record into geoip2 objects (~50 us, bench/results/profile.md); a client
# sends many requests from one address, so a hit saves nearly all of it. 16,384 entries are a
# few MB; a fleet of clients larger than that still gets a hit on its busiest addresses.
LOOKUP_CACHE_SIZE = 16384


class GeoSource(Protocol):
    def locate(self, ip: IPAddress | None) -> Location: ...


@dataclass(frozen=True, slots=True)
class _FileStamp:
    inode: int
    size: int
    mtime_ns: int


def _stamp(path: Path) -> _FileStamp:
    st = os.stat(path)
    return _FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Loaded:
    reader: geoip2.database.Reader
    kind: str  # "city" or "country"
    stamp: _FileStamp
    database_type: str
    ip_version: int  # 4: an IPv4-only file


def open_database(path: Path) -> _Loaded:
    """Open and check a database, or raise DatabaseError naming the file and the fault."""
    try:
        stamp = _stamp(path)
        reader = geoip2.database.Reader(str(path), mode=maxminddb.MODE_MEMORY)
    except FileNotFoundError as exc:
        raise DatabaseError(f"GeoIP database {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise DatabaseError(f"GeoIP database {path} is a directory, not a .mmdb file") from exc
    except (OSError, ValueError, maxminddb.errors.InvalidDatabaseError) as exc:
        raise DatabaseError(f"GeoIP database {path} is corrupt or truncated: {exc}") from exc
    db_type = reader.metadata().database_type
    if "City" in db_type:
        kind = "city"
    elif "Country" in db_type:
        kind = "country"
    else:
        reader.close()
        raise DatabaseError(
            f"GeoIP database {path} is of type {db_type!r}; use a City or Country database"
        )
    ip_version = reader.metadata().ip_version
    try:
        for addr in _PROBE_ADDRESSES:
            if ip_version == 4 and ":" in addr:
                continue  # an IPv6 address asked of an IPv4 file: a ValueError, no corruption
            with contextlib.suppress(geoip2.errors.AddressNotFoundError):
                reader.city(addr) if kind == "city" else reader.country(addr)
    except _CORRUPT_RECORD as exc:  # what a lookup on the request path would meet too
        reader.close()
        raise DatabaseError(f"GeoIP database {path} is corrupt: {exc}") from exc
    return _Loaded(reader, kind, stamp, db_type, ip_version)


class Reload(StrEnum):
    """What ``maybe_reload`` did; the values are the reload metric's labels."""

    UNCHANGED = "unchanged"
    RELOADED = "ok"
    REFUSED = "refused"  # the new file failed to open: the previous one keeps serving


class GeoIPSource:
    """Locates addresses with a GeoIP2 database; ``maybe_reload`` swaps in a replaced file."""

    def __init__(self, path: Path, default: Location, cache_size: int = LOOKUP_CACHE_SIZE) -> None:
        self.path = path
        self.default = default
        self.cache_size = cache_size
        self._db = open_database(path)
        self._cached = self._cache_for(self._db)
        self._refused: _FileStamp | None = None
        self._lookup_failed: _FileStamp | None = None  # the file a failed lookup was logged for
        self._bad_fields: _FileStamp | None = None  # the file a record's bad fields were logged for
        # The file could not be stat'ed at the last poll: "seen" once (geoipupdate renames a
        # new file into place, so a poll can fall in between), "warned" once logged.
        self._missing: str | None = None

    def _cache_for(self, db: _Loaded) -> Callable[[IPAddress], Location | None]:
        """The lookup cache of one loaded file: a reload builds a new one with the new file,
        so no answer of the old file outlives it (a request still on the old one when the swap
        happens writes into the old cache, which is dropped with it)."""
        return functools.lru_cache(maxsize=self.cache_size)(functools.partial(self._lookup, db))

    @property
    def database_type(self) -> str:
        return self._db.database_type

    def maybe_reload(self) -> Reload:
        """Reload if the file changed: ``RELOADED`` when a new database is now serving.

        A file that fails to open is refused with one log line and the previous database keeps
        serving; the same broken file is not retried (or logged) again until it changes.
        """
        try:
            stamp = _stamp(self.path)
        except (FileNotFoundError, PermissionError) as exc:
            return self._gone(exc)
        except OSError:
            return Reload.UNCHANGED  # keep serving what we have
        if self._missing is not None:
            if self._missing == "warned":
                log.info(
                    "GeoIP database %s is back",
                    self.path,
                    extra=_event("geoip-database-back", self.path),
                )
            self._missing = None
        if stamp in (self._db.stamp, self._refused):
            return Reload.UNCHANGED
        try:
            new = open_database(self.path)
        except DatabaseError as exc:
            self._refused = stamp
            log.error(
                "refused GeoIP reload, still serving the previous file: %s",
                exc,
                extra=_event("geoip-reload-refused", self.path, str(exc)),
            )
            return Reload.REFUSED
        old, self._db = self._db, new
        self._cached = self._cache_for(new)
        old.reader.close()
        log.info(
            "reloaded GeoIP database %s (%s)",
            self.path,
            new.database_type,
            extra=_event("geoip-reloaded", self.path),
        )
        return Reload.RELOADED

    def _gone(self, exc: OSError) -> Reload:
        """The file is missing or unreadable: the previous one keeps serving. Still so at the
        next poll: one warning, counted as refused; not again until it has come back."""
        if self._missing is None:
            self._missing = "seen"  # perhaps mid-replacement: look again at the next poll
            return Reload.UNCHANGED
        if self._missing == "warned":
            return Reload.UNCHANGED
        self._missing = "warned"
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else "is not readable"
        log.warning(
            "GeoIP database %s %s, still serving the previous file: %s",
            self.path,
            reason,
            exc,
            extra=_event("geoip-reload-refused", self.path, f"{self.path} {reason}"),
        )
        return Reload.REFUSED

    def locate(self, ip: IPAddress | None) -> Location:
        if ip is None:
            return self.default
        return self._cached(ip) or self.default

    def _lookup(self, db: _Loaded, ip: IPAddress) -> Location | None:
        """The file's answer; None: not in it, or its record is unreadable (cached too, so a
        miss is as cheap as a hit)."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:
            # A 6to4 address (2002:a.b.c.d::/48) is its IPv4 site's: MaxMind's files alias it
            # so, files that geodb.build wrote or an IPv4-only one have no such record.
            ip = ip.sixtofour
        if ip.version == 6 and db.ip_version == 4:
            return None  # an IPv4-only file has no IPv6 addresses
        try:
            rec = db.reader.city(ip) if db.kind == "city" else db.reader.country(ip)
        except geoip2.errors.AddressNotFoundError:
            return None
        except _CORRUPT_RECORD as exc:
            if self._lookup_failed != db.stamp:  # once per file, not per request
                self._lookup_failed = db.stamp
                log.error(
                    "GeoIP lookup of %s failed in %s (a corrupt record; such addresses get the "
                    "default location): %s: %s",
                    ip,
                    self.path,
                    type(exc).__name__,
                    exc,
                    extra=_event("geoip-lookup-failed", self.path, str(exc)),
                )
            return None
        fields, bad = checked_fields(rec)
        if bad and self._bad_fields != db.stamp:  # once per file, as a corrupt record is
            self._bad_fields = db.stamp
            reason = "; ".join(bad)
            log.warning(
                "GeoIP record of %s in %s has unusable fields, taken as absent (such records "
                "are placed by their country or continent, else get the default location): %s",
                ip,
                self.path,
                reason,
                extra=_event("geoip-record-unusable", self.path, reason),
            )
        return self._located(fields)

    def _located(self, f: Fields) -> Location:
        """A record with coordinates is where they say; without, its country's reference
        point, else its continent's, else the default location."""
        if f.point is not None:
            return Location(
                latitude=f.point[0],
                longitude=f.point[1],
                country=f.country,
                continent=f.continent,
                city=f.city,
                accuracy_km=f.accuracy_km or COUNTRY_ACCURACY_KM,
                source=LocationSource.GEOIP,
            )
        point = country_point(f.country) if f.country else None
        accuracy = COUNTRY_ACCURACY_KM
        if point is None and f.continent:
            point, accuracy = continent_point(f.continent), CONTINENT_ACCURACY_KM
        if point is None:
            return self.default
        return Location(
            latitude=point[0],
            longitude=point[1],
            country=f.country,
            continent=f.continent,
            accuracy_km=accuracy,
            source=LocationSource.GEOIP,
        )


class DefaultSource:
    """No database configured: every client is at the default location."""

    def __init__(self, default: Location) -> None:
        self.default = default

    def locate(self, ip: IPAddress | None) -> Location:
        return self.default
