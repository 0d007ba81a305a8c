"""Published inter-region RTTs that ship with geogate (data/aws-inter-region-rtt-2017.csv),
and how geogate's distance model compares with them.

The table is a second opinion for the distance model (distance.est_rtt_ms), which is what the
router and the planner use: it lets ``geogate world --published-rtt`` emulate the WAN from
published figures where a site and a region are both near a listed region, and lets a test say
how far the model is from them. Pure: no I/O beyond reading the packaged file.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources

from geodb.distance import est_rtt_ms, great_circle_km
from geodb.errors import GeoDBError

AWS_2017 = "aws-inter-region-rtt-2017.csv"
HEADER = ("from", "from_lat", "from_lon", "to", "to_lat", "to_lon", "rtt_ms")
# A place stands for a published region only within this distance: about London-Dublin
# (464 km) or New York-Ashburn (330 km), where the extra last miles are a few ms; further out
# the published figure would describe a different path, so the model is used instead.
MATCH_KM = 500.0
MAX_RTT_MS = 2000.0  # over twice the longest path on Earth: anything above is a typo


class RttTableError(GeoDBError):
    """A published-RTT file is malformed (one line: the file, the line, what is wrong)."""


@dataclass(frozen=True, slots=True)
class Site:
    region: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Match:
    """A published figure for a path: between which listed regions, and what it is."""

    rtt_ms: float
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class PairError:
    src: str
    dst: str
    published_ms: float
    model_ms: float

    @property
    def rel(self) -> float:
        """(model - published) / published: negative when the model is optimistic."""
        return (self.model_ms - self.published_ms) / self.published_ms


@dataclass(frozen=True)
class PublishedRtt:
    regions: dict[str, Site]
    directed: dict[tuple[str, str], float]  # (from, to) -> ms, as published

    def rtt_ms(self, a: str, b: str) -> float | None:
        """The pair's RTT: the mean of both directions where both are listed, else the one."""
        both = [v for v in (self.directed.get((a, b)), self.directed.get((b, a))) if v is not None]
        return sum(both) / len(both) if both else None

    def pairs(self) -> list[tuple[str, str, float]]:
        """Every listed pair once (in file order), both directions averaged."""
        seen: set[frozenset[str]] = set()
        out = []
        for (a, b), ms in self.directed.items():
            if frozenset((a, b)) not in seen:
                seen.add(frozenset((a, b)))
                back = self.directed.get((b, a))
                out.append((a, b, ms if back is None else (ms + back) / 2))
        return out

    def nearest(self, lat: float, lon: float, within_km: float = MATCH_KM) -> str | None:
        """The listed region closest to a point, if it is within ``within_km``."""
        best = min(
            self.regions.values(),
            key=lambda s: great_circle_km(lat, lon, s.latitude, s.longitude),
        )
        km = great_circle_km(lat, lon, best.latitude, best.longitude)
        return best.region if km <= within_km else None

    def lookup(self, lat1: float, lon1: float, lat2: float, lon2: float) -> Match | None:
        """The published RTT between two points, each mapped to its listed region within
        MATCH_KM; None when either maps to none, both map to the same one (the table says
        nothing about a path inside one metro) or the pair is not listed."""
        a, b = self.nearest(lat1, lon1), self.nearest(lat2, lon2)
        if a is None or b is None or a == b:
            return None
        ms = self.rtt_ms(a, b)
        return None if ms is None else Match(ms, a, b)


def parse(text: str, where: str) -> PublishedRtt:
    """``from,from_lat,from_lon,to,to_lat,to_lon,rtt_ms`` rows after ``#`` comment lines and
    that header; a bad row raises RttTableError naming the file and line."""
    regions: dict[str, Site] = {}
    directed: dict[tuple[str, str], float] = {}
    lines = [(n, s) for n, s in enumerate(text.splitlines(), 1) if s and not s.startswith("#")]
    if not lines or tuple(x.strip() for x in lines[0][1].split(",")) != HEADER:
        raise RttTableError(f"{where}: want the header {','.join(HEADER)}")
    for n, raw in lines[1:]:
        try:
            src, dst, ms = _row(next(csv.reader([raw])), regions)
        except ValueError as exc:
            raise RttTableError(f"{where}:{n}: {exc}, got {raw!r}") from None
        if (src, dst) in directed:
            raise RttTableError(f"{where}:{n}: {src} -> {dst} is listed twice")
        directed[(src, dst)] = ms
    if not directed:
        raise RttTableError(f"{where}: no rows")
    return PublishedRtt(regions, directed)


def _row(row: list[str], regions: dict[str, Site]) -> tuple[str, str, float]:
    if len(row) != len(HEADER):
        raise ValueError(f"want {len(HEADER)} fields")
    src, dst = row[0].strip(), row[3].strip()
    try:
        lat1, lon1, lat2, lon2, ms = (float(row[i]) for i in (1, 2, 4, 5, 6))
    except ValueError:
        raise ValueError("coordinates and rtt_ms must be numbers") from None
    if not src or not dst or src == dst:
        raise ValueError("from and to must be two different region ids")
    if not 0 < ms < MAX_RTT_MS:
        raise ValueError(f"rtt_ms must be between 0 and {MAX_RTT_MS:.0f}")
    for rid, lat, lon in ((src, lat1, lon1), (dst, lat2, lon2)):
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"{rid}: latitude or longitude out of range")
        known = regions.setdefault(rid, Site(rid, lat, lon))
        if (known.latitude, known.longitude) != (lat, lon):
            raise ValueError(f"{rid} has other coordinates on an earlier row")
    return src, dst, ms


@cache
def aws_2017() -> PublishedRtt:
    """The shipped table (see the file's header for its source and its gaps)."""
    text = resources.files("geodb").joinpath("data", AWS_2017).read_text(encoding="utf-8")
    return parse(text, AWS_2017)


def model_errors(table: PublishedRtt) -> list[PairError]:
    """The distance model's estimate against every listed pair (both directions averaged)."""
    out = []
    for a, b, ms in table.pairs():
        sa, sb = table.regions[a], table.regions[b]
        est = est_rtt_ms(sa.latitude, sa.longitude, sb.latitude, sb.longitude)
        out.append(PairError(a, b, ms, est))
    return out


def median_abs_rel(errors: list[PairError]) -> float:
    return statistics.median(abs(e.rel) for e in errors)
