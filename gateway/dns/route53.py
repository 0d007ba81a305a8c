"""The tables as Route 53 record sets (JSON for Terraform): geolocation records that alias a
failover chain per order, each link health-checked on its region's ``/readyz``.

Route 53 has no "first healthy of this list" record, so the order becomes a chain: link ``i``
is a PRIMARY failover record with region ``i``'s addresses and health check, and a SECONDARY
alias to link ``i + 1``; the last link is a plain record (when every region of the order is
down, a possibly-down region beats no answer). Geolocation records at the global name (one
per continent, one per country whose order differs from its continent's, and the default
``*``) alias the first link of their place's order, so residency, drains and biases decide in
DNS as they do in the gateway (see ``gateway.dns.tables``).

Each address family has its own records, a chain of the order's regions that have addresses
of it (``tables.answered``). AAAA answers a place only when the first region of its order has
IPv6: otherwise a dual-stack client would take another region's AAAA. A answers from the
first region with IPv4 (an IPv6-only first region): an IPv4-only client has no other way in.
Neither answers with a region outside a residency rule's.
A place left without a record of a family must get no
answer (NODATA) there, and Route 53 has no empty record: it answers a country without one with
its continent's, then with the default's. So the records above such a place are left out too,
and a continent left out for one of its countries gives each of its others a record of its
own: each of the others geodb's countries.csv lists. One it does not list has no record, so
on a continent left out it gets no answer of the family (its clients use the other family's,
their continent's order); and the default goes whenever anything is left out, so clients
Route 53 cannot place get none of the family either. Giving every ISO country its own record
would need each one's continent, which geodb does not have.

A and AAAA therefore send a place to the same region while its first region is up and has
IPv4, not in failover.
What a chain cannot say is "no answer while the next region is up": with the first
region down, a family skips the regions without its addresses (eu-central > us-east >
ap-southeast, us-east IPv4-only: AAAA goes on to ap-southeast while A answers us-east), still
a region of the order; PowerDNS answers no AAAA there (``gateway.dns.powerdns``).

A country a residency rule names that geodb cannot place (``tables.Tables.unplaced``: its
regions depend on its continent) is refused: Route 53 has one record per country.

The shapes are the Route 53 API's ``ResourceRecordSet`` and ``HealthCheckConfig`` with two
references Terraform resolves: ``HealthCheck`` names a key of ``health_checks`` (becomes
``health_check_id``), an ``AliasTarget`` is in the same hosted zone (its ``zone_id``), and
``GeogateRegion`` says whose addresses a record holds (to swap them for a load balancer alias).

A region exported as an alias (``tables.Entry.alias``, ``--alias-regions``: a ``url`` and no
``addresses``, as deploy/'s regions behind an ALB whose addresses change) has A links with
``GeogateRegion`` and neither ``TTL`` nor ``ResourceRecords``: the Terraform that reads the
export makes each an alias to that region's load balancer, which answers A only (an ALB's
default ``ip_address_type``, ``ipv4``, deploy/'s), so such a region has no AAAA: a place it
comes first for gets none (NODATA), as a region without IPv6 addresses does.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.dns.options import Options, fits
from gateway.dns.tables import Entry, Order, Tables, answered, family
from gateway.errors import ConfigError
from geodb.countries import data_rows

FAILURE_THRESHOLD = 3  # Route 53's default: three failed checks in a row mark a region down
INTERVALS = (10, 30)  # the only request intervals Route 53 offers (seconds)
FAMILIES = (("A", 4, "v4"), ("AAAA", 6, "v6"))
# geodb's countries and their continents: those a continent left out answers one by one.
CONTINENT_OF = {r["country"]: r["continent"] for r in data_rows("countries.csv")}
# What the Route 53 API takes (HealthCheckConfig, ResourceRecordSet): longer is refused.
MAX_RESOURCE_PATH = 255
MAX_FQDN = 255  # FullyQualifiedDomainName, in characters
MAX_SET_IDENTIFIER = 128
# Printable ASCII a path may hold as it is; anything else (é, a space) is percent-encoded.
PATH_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>\\^`{|}')


def health_check(
    url: str, interval_s: int, region: str = "", addresses: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The HealthCheckConfig of a region's /readyz; ConfigError for a URL the API would refuse
    (its path, or its host once written in ASCII, too long). ``addresses``: the region's; one
    with IPv6 alone is checked at its first, the URL's host name sent as Host (and SNI)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    where = f"region {region}: url" if region else "url"
    # The API takes a path of ASCII: a URL's other characters go percent-encoded, as a
    # client sends them.
    path = quote(parts.path, safe=PATH_SAFE) + (f"?{parts.query}" if parts.query else "")
    if len(path) > MAX_RESOURCE_PATH:
        raise ConfigError(
            f"{where}: its health check's path ({path[:40]}...) is {len(path)} characters, "
            f"over the {MAX_RESOURCE_PATH} a Route 53 health check takes (ResourcePath): "
            "give the region a shorter url"
        )
    check: dict[str, Any] = {
        "Type": "HTTPS" if https else "HTTP",
        "Port": parts.port or (443 if https else 80),
        "ResourcePath": path,
        "RequestInterval": next((i for i in INTERVALS if interval_s <= i), INTERVALS[-1]),
        "FailureThreshold": FAILURE_THRESHOLD,
    }
    try:
        check["IPAddress"] = str(ipaddress.ip_address(host))
    except ValueError:
        check["FullyQualifiedDomainName"] = _ascii_host(host, where)
        # By name, Route 53 checks an IPv4 address DNS gives for it: an IPv6-only region's
        # name has none, and its check never passed (its clients always sent elsewhere).
        if addresses and all(ipaddress.ip_address(a).version == 6 for a in addresses):
            check["IPAddress"] = addresses[0]
    if https:
        check["EnableSNI"] = "FullyQualifiedDomainName" in check
    return check


def unreachable_checks(checks: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The (region, address) of each health check at an address Route 53's checkers cannot
    reach, whose health check AWS refuses to create: a local, private, shared (100.64/10),
    documentation, reserved or multicast one (HealthCheckConfig's IPAddress: RFC 5735, 6598,
    5156). Said, not refused: an export of a loopback test config is still one to read."""
    out = []
    for region, check in checks.items():
        address = check.get("IPAddress")
        if address is not None:
            ip = ipaddress.ip_address(address)
            if not ip.is_global or ip.is_multicast:
                out.append((region, address))
    return out


def _ascii_host(host: str, where: str) -> str:
    """``host`` as DNS and the API name it: an internationalized name in IDNA (xn--)."""
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError as exc:  # a label too long, or characters IDNA has no form for
        raise ConfigError(
            f"{where}: its host {host!r} has no IDNA (xn--) form for Route 53's health check "
            f"({exc}): give the region's url in ASCII"
        ) from None
    if len(name) > MAX_FQDN:
        raise ConfigError(
            f"{where}: its host is {len(name)} characters as Route 53 takes it, over the "
            f"{MAX_FQDN} of a FullyQualifiedDomainName: give the region a shorter url"
        )
    return name


def _set_identifier(tag: str, region: str) -> str:
    """A link's identifier: ``tag-region``, but Route 53 takes at most 128 characters, and a
    region named "next" would be its chain's SECONDARY's (``tag-next``). Then the region's id
    is cut and a hash of it added after "~", which no region id holds: still one per region."""
    plain = f"{tag}-{region}"
    if len(plain) <= MAX_SET_IDENTIFIER and region != "next":
        return plain
    digest = hashlib.sha256(region.encode()).hexdigest()[:12]
    room = MAX_SET_IDENTIFIER - len(tag) - len(digest) - 2
    return f"{tag}-{region[:room]}~{digest}"


def _chain(
    name: str, rtype: str, order: Order, addrs: Mapping[str, tuple[str, ...]], ttl: int
) -> list[dict[str, Any]]:
    """The failover links of one order; the first link's name is ``name.format(1)``."""
    out: list[dict[str, Any]] = []
    # The longest link name, in full: a long --name or --zone may leave no room for "_o12-3-v4.".
    fits(name.format(len(order)), "Route 53's failover link", "shorten --name or --zone")
    for i, rid in enumerate(order, start=1):
        # A region without addresses is an alias region's: Terraform makes the link an alias.
        values = {"TTL": ttl, "ResourceRecords": [{"Value": a} for a in addrs[rid]]}
        values = values if addrs[rid] else {}
        link = {"Name": name.format(i), "Type": rtype, "GeogateRegion": rid, **values}
        if i == len(order):
            out.append(link)
            break
        tag = f"{name.format(i).split('.')[0].lstrip('_')}"
        out.append(
            {
                **link,
                "SetIdentifier": _set_identifier(tag, rid),
                "Failover": "PRIMARY",
                "HealthCheck": rid,
            }
        )
        out.append(
            {
                "Name": name.format(i),
                "Type": rtype,
                "SetIdentifier": f"{tag}-next",
                "Failover": "SECONDARY",
                "AliasTarget": {"DNSName": name.format(i + 1), "EvaluateTargetHealth": True},
            }
        )
    return out


def _geo(opt: Options, rtype: str, key: str, where: dict[str, str], target: str) -> dict[str, Any]:
    return {
        "Name": opt.fqdn,
        "Type": rtype,
        "SetIdentifier": f"geo-{key}",
        "GeoLocation": where,
        "AliasTarget": {"DNSName": target, "EvaluateTargetHealth": True},
    }


def _places(
    tables: Tables, addrs: Mapping[str, tuple[str, ...]], version: int
) -> list[tuple[str, dict[str, str], Order]]:
    """The geolocation records of one family (IP ``version``; ``addrs``: its regions'
    addresses), as (identifier, GeoLocation, order); a place left out gets no answer of it."""

    def has(order: Order) -> bool:
        return bool(answered(order, addrs, version))

    unanswered = {c for c, o in tables.countries.items() if not has(o)}
    left_out = {k for k, o in tables.continents.items() if not has(o)}
    for code in unanswered:
        # A country geodb has no continent for (a residency rule's): Route 53 knows one.
        k = CONTINENT_OF.get(code)
        left_out |= {k} if k else set(tables.continents)
    out: list[tuple[str, dict[str, str], Order]] = []
    # The default answers whoever has no record: with a continent left out, that is a place
    # that must get no answer (a country left out, or the continent itself), so it goes too.
    if has(tables.default) and not left_out:
        out.append(("default", {"CountryCode": "*"}, tables.default))
    for code, order in sorted(tables.continents.items()):
        if code not in left_out:
            out.append((f"continent-{code}", {"ContinentCode": code}, order))
    countries = {c: o for c, o in tables.countries.items() if c not in unanswered}
    for code, k in CONTINENT_OF.items():
        if k in left_out and code not in tables.countries and has(tables.continents.get(k, ())):
            countries[code] = tables.continents[k]
    for code, order in sorted(countries.items()):
        # "country-SA" (Saudi Arabia) and "continent-SA" (South America): one code, two places.
        out.append((f"country-{code}", {"CountryCode": code}, order))
    return out


def _one_record_per_country(tables: Tables) -> None:
    """Route 53 has one record per country, whatever continent it puts the country on: a
    country geodb cannot place whose regions depend on its continent cannot be written."""
    for code, per in sorted(tables.unplaced.items()):
        by_order: dict[Order, list[str]] = {}
        for k in sorted(tables.continents):
            by_order.setdefault(per.get(k) or tables.continents[k], []).append(k)
        on = "; ".join(f"{' > '.join(o)} on {' '.join(ks)}" for o, ks in by_order.items())
        raise ConfigError(
            f"route53: country {code} is not in geodb's country table, and its regions depend "
            f"on the continent GeoIP gives it ({on}), which Route 53's one record per country "
            f"cannot follow: use --format powerdns, or order the residency rules so that "
            f"{code} gets the same regions on every continent"
        )


def _family_sets(
    tables: Tables,
    addrs: Mapping[str, tuple[str, ...]],
    opt: Options,
    family_of: tuple[str, int, str],
) -> list[dict[str, Any]]:
    rtype, version, tag = family_of
    firsts: dict[Order, str] = {}
    sets: list[dict[str, Any]] = []

    def first_link(order: Order) -> str:
        mine = answered(order, addrs, version)
        if mine not in firsts:
            name = f"_o{len(firsts) + 1}-{{}}-{tag}.{opt.fqdn}"
            firsts[mine] = name.format(1)
            sets.extend(_chain(name, rtype, mine, addrs, opt.ttl))
        return firsts[mine]

    geo = [
        _geo(opt, rtype, key, where, first_link(order))
        for key, where, order in _places(tables, addrs, version)
    ]
    return geo + sets


def record_sets(
    tables: Tables, entries: Mapping[str, Entry], opt: Options, source: str
) -> dict[str, Any]:
    _one_record_per_country(tables)
    aliases: dict[str, tuple[str, ...]] = {r: () for r, e in entries.items() if e.alias}
    sets: list[dict[str, Any]] = []
    for family_of in FAMILIES:
        addrs = family(entries, family_of[1])
        if family_of[0] == "A":  # an alias region's links: A, with no addresses of their own
            addrs = {**aliases, **addrs}
        if addrs:
            sets.extend(_family_sets(tables, addrs, opt, family_of))
    note = (
        " An A record with GeogateRegion and no ResourceRecords is an alias to that region's "
        "load balancer, for Terraform to fill in."
        if aliases
        else ""
    )
    return {
        "comment": (
            f"geogate dns export --format route53, from {source}: do not edit, export again. "
            "HealthCheck names a key of health_checks; AliasTarget is in the same hosted zone."
            + note
        ),
        "zone": opt.zone,
        "name": opt.fqdn,
        "ttl": opt.ttl,
        "health_checks": {
            rid: health_check(e.health_url, opt.check_interval_s, rid, e.addresses)
            for rid, e in entries.items()
        },
        "record_sets": sets,
    }
