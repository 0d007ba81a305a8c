"""Which regions GeoDNS answers for a client in each country and continent, in failover order.

The router decides, as it does for a request at the edge (origin ``client``): each region with
entry addresses is one candidate, placed at the region; a country is its reference point
(geodb's countries.csv), a continent its hub, an unknown client the config's default location.
Residency rules, drained regions and operator biases count as they do in the gateway. What a
zone file cannot know is left to the DNS server: health (each region's ``/readyz``) and load.
The tolerance band is 0 here: P2C spreads requests by in-flight counts, which a cached DNS
answer cannot see, so DNS names one region per place and the gateways spread the load.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Config
from gateway.defaults import DNS_READY_PATH
from gateway.errors import ConfigError
from gateway.routing.model import RegionPoint, RequestFacts, Snapshot, UpstreamView
from gateway.routing.policy import Policy, policy_from
from gateway.routing.router import route
from geodb.countries import data_rows
from geodb.location import Location

ANY_MODEL = "*"  # DNS cannot see the model: every region with an entry is a candidate
Order = tuple[str, ...]  # region ids, best first: the failover order


@dataclass(frozen=True, slots=True)
class Entry:
    """A region's entry as DNS sees it: the addresses to answer and how to check them."""

    region: str
    addresses: tuple[str, ...]
    health_url: str  # the region gateway's /readyz


@dataclass(frozen=True, slots=True)
class Tables:
    default: Order  # a client nobody can place
    continents: Mapping[str, Order]  # GeoIP2 continent code -> order
    countries: Mapping[str, Order]  # only the countries whose order is not their continent's

    def order_for(self, country: str | None, continent: str | None) -> Order:
        """The lookup the zone's LUA record does: country, else continent, else default."""
        found = self.countries.get((country or "").upper())
        return found or self.continents.get((continent or "").upper()) or self.default

    def orders(self) -> list[Order]:
        """The distinct orders, default first: the zone names each once."""
        seen: dict[Order, None] = {self.default: None}
        for o in [*self.continents.values(), *self.countries.values()]:
            seen.setdefault(o, None)
        return list(seen)


def family(entries: Mapping[str, Entry], version: int) -> dict[str, tuple[str, ...]]:
    """Region -> its addresses of one IP version (4: A, 6: AAAA), for the regions with any."""
    out = {}
    for rid, e in entries.items():
        addrs = tuple(a for a in e.addresses if ipaddress.ip_address(a).version == version)
        if addrs:
            out[rid] = addrs
    return out


def answered(order: Order, addrs: Mapping[str, object]) -> Order:
    """The regions of ``order`` that one address family (``addrs``: its regions) answers, best
    first; none at all when the order's first region has no address of the family.

    Both families must send a place to the same region: a dual-stack client uses the AAAA
    answer first (Happy Eyeballs), so an AAAA naming another region than A moves it there. A
    family whose first region has none of its addresses answers nothing (NODATA) and the
    client takes the other family's, that region's. And never a region outside the order:
    a residency rule's order holds only the regions it allows.
    """
    return tuple(r for r in order if r in addrs) if order and order[0] in addrs else ()


def health_url(region_url: str) -> str:
    """The region gateway's /readyz. ``region_url`` is one the config took: an http(s) URL
    with a host and a valid port, and no query (checks.region_url)."""
    return region_url.rstrip("/") + DNS_READY_PATH


def entries(config: Config) -> dict[str, Entry]:
    """The regions with addresses, in config order; each needs its gateway's URL to check."""
    out: dict[str, Entry] = {}
    for i, r in enumerate(config.regions):
        if not r.addresses:
            continue
        where = f"regions[{i}] ({r.id})"
        if not r.url:
            raise ConfigError(
                f"{where}: addresses without url: GeoDNS checks each region's health at its "
                f"url + {DNS_READY_PATH}; set url to the region gateway's public URL"
            )
        out[r.id] = Entry(r.id, r.addresses, health_url(r.url))
    if not out:
        raise ConfigError(
            "no region has addresses: set regions[].addresses (the IPs of each region's "
            "entry, e.g. its load balancer) for the regions DNS may answer"
        )
    return out


def _views(config: Config, regions: Mapping[str, Entry]) -> list[UpstreamView]:
    """One candidate per region: drained when the region is (drained_regions) or all its
    upstreams are, standby when all active ones are, biased by the least bias among them
    (the gateway there would pick that one)."""
    views = []
    for rid in regions:
        ups = [u for u in config.upstreams if u.region == rid]
        # A drained region's upstreams are all drained (Config sets their flags); the
        # region's own entry still drains one listed with no upstreams.
        held = rid in config.drained_regions
        active = [u for u in ups if not u.drained] or ups
        views.append(
            UpstreamView(
                id=rid,
                region=rid,
                models=frozenset({ANY_MODEL}),
                weight=max((u.weight for u in active), default=1.0),
                bias_ms=min((u.bias_ms for u in active), default=0.0),
                drained=held or (bool(ups) and all(u.drained for u in ups)),
            )
        )
    return views


class _Router:
    def __init__(self, config: Config, regions: Mapping[str, Entry]) -> None:
        points = {r.id: RegionPoint(r.id, r.latitude, r.longitude) for r in config.regions}
        views = _views(config, regions)
        self.snap = Snapshot(tuple(views), points)
        # Nothing may be left out of the fallback: a region that residency or a drain excludes
        # still beats no answer, and the regional gateway enforces residency itself.
        undrained = tuple(dataclasses.replace(v, drained=False) for v in views)
        self.open_snap = Snapshot(undrained, points)
        self.policy: Policy = dataclasses.replace(
            policy_from(config), origin="client", tolerance_ms=0.0, tolerance_ratio=0.0
        )

    def order(self, loc: Location) -> Order:
        facts = RequestFacts(ANY_MODEL, loc)
        decision = route(facts, self.snap, self.policy, random.Random(0))
        if not decision.order:
            open_policy = dataclasses.replace(self.policy, residency=())
            decision = route(facts, self.open_snap, open_policy, random.Random(0))
        return tuple(c.upstream.region for c in decision.order)


def compute(config: Config, regions: Mapping[str, Entry]) -> Tables:
    router = _Router(config, regions)
    d = config.geoip.default
    default = router.order(Location(d.latitude, d.longitude, d.country, d.continent))
    continents: dict[str, Order] = {}
    for row in data_rows("continents.csv"):
        code = row["continent"]
        lat, lon = float(row["latitude"]), float(row["longitude"])
        continents[code] = router.order(Location(lat, lon, continent=code))
    countries: dict[str, Order] = {}
    known: set[str] = set()
    for row in data_rows("countries.csv"):
        code, continent = row["country"], row["continent"]
        known.add(code)
        lat, lon = float(row["latitude"]), float(row["longitude"])
        order = router.order(Location(lat, lon, code, continent))
        if order != continents.get(continent):
            countries[code] = order
    # A residency rule may name a country geodb has no point for: place it at the default.
    for rule in config.residency:
        for code in (c.upper() for c in rule.countries):
            if code not in known:
                countries[code] = router.order(Location(d.latitude, d.longitude, code))
    return Tables(default, continents, countries)
