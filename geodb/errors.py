"""The one error root of geodb; the gateway maps it at its boundary."""

from __future__ import annotations


class GeoDBError(Exception):
    """Any geodb failure a caller can act on (bad database file, bad CSV row, ...)."""


class DatabaseError(GeoDBError):
    """A GeoIP database file cannot be used (missing, corrupt, truncated, wrong type)."""


class BuildError(GeoDBError):
    """An input row for ``geogate geodb build`` is invalid."""
