"""The tables as Route 53 record sets (JSON for Terraform): geolocation records that alias a
failover chain per order, each link health-checked on its region's ``/readyz``.

Route 53 has no "first healthy of this list" record, so the order becomes a chain: link ``i``
is a PRIMARY failover record with region ``i``'s addresses and health check, and a SECONDARY
alias to link ``i + 1``; the last link is a plain record (when every region of the order is
down, a possibly-down region beats no answer). Geolocation records at the global name (one
per continent, one per country whose order differs from its continent's, and the default
``*``) alias the first link of their place's order, so residency, drains and biases decide in
DNS as they do in the gateway (see ``gateway.dns.tables``).

The shapes are the Route 53 API's ``ResourceRecordSet`` and ``HealthCheckConfig`` with two
references Terraform resolves: ``HealthCheck`` names a key of ``health_checks`` (becomes
``health_check_id``), an ``AliasTarget`` is in the same hosted zone (its ``zone_id``), and
``GeogateRegion`` says whose addresses a record holds (to swap them for a load balancer alias).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.dns.options import Options
from gateway.dns.tables import Entry, Order, Tables

FAILURE_THRESHOLD = 3  # Route 53's default: three failed checks in a row mark a region down
INTERVALS = (10, 30)  # the only request intervals Route 53 offers (seconds)
FAMILIES = (("A", 4, "v4"), ("AAAA", 6, "v6"))


def health_check(url: str, interval_s: int) -> dict[str, Any]:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    check: dict[str, Any] = {
        "Type": "HTTPS" if https else "HTTP",
        "Port": parts.port or (443 if https else 80),
        "ResourcePath": parts.path + (f"?{parts.query}" if parts.query else ""),
        "RequestInterval": next((i for i in INTERVALS if interval_s <= i), INTERVALS[-1]),
        "FailureThreshold": FAILURE_THRESHOLD,
    }
    try:
        check["IPAddress"] = str(ipaddress.ip_address(host))
    except ValueError:
        check["FullyQualifiedDomainName"] = host
    if https:
        check["EnableSNI"] = "IPAddress" not in check
    return check


def _chain(
    name: str, rtype: str, order: Order, addrs: Mapping[str, tuple[str, ...]], ttl: int
) -> list[dict[str, Any]]:
    """The failover links of one order; the first link's name is ``name.format(1)``."""
    out: list[dict[str, Any]] = []
    for i, rid in enumerate(order, start=1):
        values = {"TTL": ttl, "ResourceRecords": [{"Value": a} for a in addrs[rid]]}
        link = {"Name": name.format(i), "Type": rtype, "GeogateRegion": rid, **values}
        if i == len(order):
            out.append(link)
            break
        tag = f"{name.format(i).split('.')[0].lstrip('_')}"
        out.append(
            {**link, "SetIdentifier": f"{tag}-{rid}", "Failover": "PRIMARY", "HealthCheck": rid}
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


def _family_sets(
    tables: Tables, addrs: Mapping[str, tuple[str, ...]], opt: Options, rtype: str, tag: str
) -> list[dict[str, Any]]:
    firsts: dict[Order, str] = {}
    sets: list[dict[str, Any]] = []

    def first_link(order: Order) -> str:
        mine = tuple(r for r in order if r in addrs) or tuple(addrs)
        if mine not in firsts:
            name = f"_o{len(firsts) + 1}-{{}}-{tag}.{opt.fqdn}"
            firsts[mine] = name.format(1)
            sets.extend(_chain(name, rtype, mine, addrs, opt.ttl))
        return firsts[mine]

    geo = [_geo(opt, rtype, "default", {"CountryCode": "*"}, first_link(tables.default))]
    for code, order in sorted(tables.continents.items()):
        where = {"ContinentCode": code}
        geo.append(_geo(opt, rtype, f"continent-{code}", where, first_link(order)))
    for code, order in sorted(tables.countries.items()):
        # "country-SA" (Saudi Arabia) and "continent-SA" (South America): one code, two places.
        where = {"CountryCode": code}
        geo.append(_geo(opt, rtype, f"country-{code}", where, first_link(order)))
    return geo + sets


def record_sets(
    tables: Tables, entries: Mapping[str, Entry], opt: Options, source: str
) -> dict[str, Any]:
    sets: list[dict[str, Any]] = []
    for rtype, version, tag in FAMILIES:
        addrs = {
            rid: tuple(a for a in e.addresses if ipaddress.ip_address(a).version == version)
            for rid, e in entries.items()
        }
        addrs = {rid: a for rid, a in addrs.items() if a}
        if addrs:
            sets.extend(_family_sets(tables, addrs, opt, rtype, tag))
    return {
        "comment": (
            f"geogate dns export --format route53, from {source}: do not edit, export again. "
            "HealthCheck names a key of health_checks; AliasTarget is in the same hosted zone."
        ),
        "zone": opt.zone,
        "name": opt.fqdn,
        "ttl": opt.ttl,
        "health_checks": {
            rid: health_check(e.health_url, opt.check_interval_s) for rid, e in entries.items()
        },
        "record_sets": sets,
    }
