"""Which regions GeoDNS answers for a client in each country and continent, in failover order.

The router decides, as it does for a request at the edge (origin ``client``): each region with
entry addresses is one candidate, placed at the region; a country is its reference point
(geodb's countries.csv), a continent its hub, an unknown client the config's default location.
Residency rules, drained regions and operator biases count as they do in the gateway. What a
zone file cannot know is left to the DNS server: health (each region's ``/readyz``) and load.
A country geodb has no row for (one a residency rule names) is placed as the gateway places it
with a Country database: at its continent's hub, on each continent GeoIP may give it.
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
from gateway.routing.policy import Policy, policy_from, rule_name
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
    # No addresses of its own: Route 53 answers it by an alias to its load balancer, which
    # the Terraform reading the export fills in (``geogate dns export --alias-regions``).
    alias: bool = False


@dataclass(frozen=True, slots=True)
class Tables:
    default: Order  # a client nobody can place
    continents: Mapping[str, Order]  # GeoIP2 continent code -> order
    countries: Mapping[str, Order]  # only the countries whose order is not their continent's
    # A country geodb has no row for, whose order depends on the continent GeoIP gives it (a
    # rule that matches its continent before the one naming it): continent -> order, only
    # where that is not the continent's own order.
    unplaced: Mapping[str, Mapping[str, Order]] = dataclasses.field(default_factory=dict)

    def order_for(self, country: str | None, continent: str | None) -> Order:
        """The lookup the zone's LUA record does: country (on its continent, for one geodb
        cannot place), else continent, else default."""
        code, cont = (country or "").upper(), (continent or "").upper()
        found = self.unplaced.get(code, {}).get(cont) or self.countries.get(code)
        return found or self.continents.get(cont) or self.default

    def orders(self) -> list[Order]:
        """The distinct orders, default first: the zone names each once."""
        seen: dict[Order, None] = {self.default: None}
        per_continent = [o for m in self.unplaced.values() for o in m.values()]
        for o in [*self.continents.values(), *self.countries.values(), *per_continent]:
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


def answered(order: Order, addrs: Mapping[str, object], version: int) -> Order:
    """The regions of ``order`` that the address family of IP ``version`` (``addrs``: its
    regions) answers, best first.

    IPv4 (A): every region of the order with IPv4 addresses, so its first one is the nearest
    that has any. A client with IPv4 alone (most are) has no other way in: an empty A answer
    while a region of its order has IPv4 would be an outage for it (an IPv6-only region first).
    A dual-stack client still enters the first region: it prefers that one's AAAA answer.

    IPv6 (AAAA): none at all when the order's first region has no IPv6 address. A dual-stack
    client uses the AAAA answer first (Happy Eyeballs), so an AAAA naming another region than
    A would move it off its nearest region; with none (NODATA) it takes A, the first region.
    A client with IPv6 alone loses nothing: it reaches IPv4 through DNS64/NAT64, which makes
    an AAAA answer from the A one exactly when there is no AAAA (RFC 6147).

    Never a region outside the order: a residency rule's order holds only the regions it
    allows, so a rule whose regions have no address of a family gets no answer of it.
    """
    if version == 6 and order and order[0] not in addrs:
        return ()
    return tuple(r for r in order if r in addrs)


def health_url(region_url: str) -> str:
    """The region gateway's /readyz. ``region_url`` is one the config took: an http(s) URL
    with a host and a valid port, and no query (checks.public_url)."""
    return region_url.rstrip("/") + DNS_READY_PATH


def entries(config: Config, *, alias_regions: bool = False) -> dict[str, Entry]:
    """The regions with addresses, in config order; each needs its gateway's URL to check.
    With ``alias_regions`` (Route 53 only), a region with a URL and no addresses is one too,
    answered by an alias to its load balancer (``Entry.alias``)."""
    out: dict[str, Entry] = {}
    for i, r in enumerate(config.regions):
        where = f"regions[{i}] ({r.id})"
        if not r.addresses:
            if alias_regions and r.url:
                out[r.id] = Entry(r.id, (), _checkable(where, health_url(r.url)), alias=True)
            continue
        if not r.url:
            raise ConfigError(
                f"{where}: addresses without url: GeoDNS checks each region's health at its "
                f"url + {DNS_READY_PATH}; set url to the region gateway's public URL"
            )
        _each_address_once(where, r.addresses)
        out[r.id] = Entry(r.id, r.addresses, _checkable(where, health_url(r.url)))
    if not out and alias_regions:
        raise ConfigError(
            "no region has addresses or a url: set regions[].url (each region gateway's "
            "public URL, checked at /readyz) for the regions DNS may answer"
        )
    if not out:
        raise ConfigError(
            "no region has addresses: set regions[].addresses (the IPs of each region's "
            "entry, e.g. its load balancer) for the regions DNS may answer, or, for Route 53 "
            "with an alias to each region's load balancer (deploy/'s Terraform), export with "
            "--format route53 --alias-regions"
        )
    _each_rule_answered(config, out)
    return out


def _checkable(where: str, url: str) -> str:
    """A health URL the PowerDNS record's Lua can carry: a quote ended its string literal (a
    record that failed for every client), and a backslash reached the check doubled (another
    path). Percent-encoded they are plain characters, which the record carries as they are."""
    if bad := sorted({c for c in url if c in "'\"\\"}):
        raise ConfigError(
            f"{where}: url has {' and '.join(repr(c) for c in bad)}, which a DNS health check "
            "cannot carry; percent-encode it (%27, %22, %5C)"
        )
    return url


def _each_address_once(where: str, addresses: tuple[str, ...]) -> None:
    """An address listed twice (perhaps written two ways, 2001:db8::1 and 2001:DB8:0::1) would
    be answered twice; a typo'd copy is the usual cause, and another address was meant."""
    seen: dict[object, str] = {}
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if ip in seen:
            same = "" if seen[ip] == a else f" (as {seen[ip]!r})"
            raise ConfigError(f"{where}: addresses: {a!r} is listed twice{same}")
        seen[ip] = a


def _each_rule_answered(config: Config, regions: Mapping[str, Entry]) -> None:
    """A residency rule none of whose regions has addresses is refused: DNS could only answer
    its clients with a region outside the rule (their traffic, TLS and all, would cross it
    before the gateway there refused it) or with nothing (an outage for all of them). Either
    is the operator's choice to make, not the export's to make silently."""
    for i, rule in enumerate(config.residency):
        if not any(r in regions for r in rule.regions):
            name = rule_name(rule.name, rule.countries, rule.continents, rule.regions)
            raise ConfigError(
                f"residency[{i}] ({name}): none of its regions ({', '.join(rule.regions)}) has "
                "addresses, so DNS could answer its clients only outside the rule: set "
                "regions[].addresses for one of them"
            )


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
        # The fallback when every region a place may use is drained: the gateway answers 503
        # there, and DNS has no 503 to give. A drained region still beats no answer (its
        # gateway still enforces the drain), so the drains go; the residency rules stay, as
        # the gateway keeps them "even when that means a 503": never a region outside them.
        undrained = tuple(dataclasses.replace(v, drained=False) for v in views)
        self.open_snap = Snapshot(undrained, points)
        self.policy: Policy = dataclasses.replace(
            policy_from(config), origin="client", tolerance_ms=0.0, tolerance_ratio=0.0
        )

    def order(self, loc: Location) -> Order:
        facts = RequestFacts(ANY_MODEL, loc)
        for snap in (self.snap, self.open_snap):
            decision = route(facts, snap, self.policy, random.Random(0))
            if decision.order:
                return tuple(c.upstream.region for c in decision.order)
        # Only a rule without a region with addresses leaves nothing (entries refuses one).
        raise ConfigError(
            f"residency rule {decision.residency}: none of its regions has addresses, so DNS "
            "could answer its clients only outside the rule: set regions[].addresses"
        )


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
    unplaced: dict[str, dict[str, Order]] = {}
    for code in sorted({c.upper() for rule in config.residency for c in rule.countries} - known):
        per = _on_each_continent(router, code)
        if len(set(per.values())) == 1:  # the same wherever GeoIP puts it: one entry
            order = next(iter(per.values()))
            if any(order != continents[k] for k in per):
                countries[code] = order
        else:
            unplaced[code] = {k: o for k, o in per.items() if o != continents[k]}
    return Tables(default, continents, countries, unplaced)


def _on_each_continent(router: _Router, code: str) -> dict[str, Order]:
    """The order of a country geodb has no row for (so no point and no continent), on each
    continent GeoIP may put it, at that continent's hub: where the gateway places such a
    client with a Country database, and where a rule matching the continent applies to it
    (XK, Kosovo: GeoIP says Europe, and a continents = ["EU"] rule before its own decides)."""
    out = {}
    for row in data_rows("continents.csv"):
        k, lat, lon = row["continent"], float(row["latitude"]), float(row["longitude"])
        out[k] = router.order(Location(lat, lon, code, k))
    return out
