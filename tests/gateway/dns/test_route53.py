"""Route 53 record sets: every place aliases a failover chain of its order, every link but the
last is health-checked on its region's /readyz, and the shapes are Route 53's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.dns.options import OptionError, options
from gateway.dns.route53 import CONTINENT_OF, health_check, record_sets, unreachable_checks
from gateway.dns.tables import Order, compute, entries
from gateway.errors import ConfigError
from geodb.countries import data_rows
from tests.gateway.dns.configs import (
    ADDRESSES,
    EU_RESIDENCY,
    V6,
    dns_config,
    region_tables,
    stacks,
)

EU, US, AP = "eu-central", "us-east", "ap-southeast"
URLS = {EU: "https://eu-central.api.example.com", US: "https://us-east.api.example.com:8443"}


def export(residency: Sequence[dict[str, Any]] = (), **region_changes: Any) -> dict[str, Any]:
    return export_with(residency, region_changes)


def export_with(
    residency: Sequence[dict[str, Any]],
    region_changes: dict[str, Any],
    *,
    alias_regions: bool = False,
) -> dict[str, Any]:
    regions = region_tables(URLS)
    for r in regions:
        r.update(region_changes.get(r["id"].replace("-", "_"), {}))
    cfg = dns_config(regions=regions, residency=residency)
    found = entries(cfg, alias_regions=alias_regions)
    opt = options("example.com", "api", ttl=30, check_interval_s=5)
    return record_sets(compute(cfg, found), found, opt, "gw.toml")


def chain(doc: dict[str, Any], first: str, rtype: str = "A") -> list[str]:
    """Follow a failover chain from its first link: the regions in the order they answer."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in doc["record_sets"]:
        if s["Type"] == rtype:
            by_name.setdefault(s["Name"], []).append(s)
    out, name = [], first
    while True:
        links = by_name[name]
        primary = next(s for s in links if s.get("Failover", "PRIMARY") == "PRIMARY")
        out.append(primary["GeogateRegion"])
        addresses = ADDRESSES if rtype == "A" else V6
        if "ResourceRecords" not in primary:  # an alias region's: Terraform makes it an alias
            assert rtype == "A" and "TTL" not in primary and "AliasTarget" not in primary
        else:
            assert [v["Value"] for v in primary["ResourceRecords"]] == [
                addresses[primary["GeogateRegion"]]
            ]
            assert primary["TTL"] == 30
        secondary = [s for s in links if s.get("Failover") == "SECONDARY"]
        if not secondary:
            assert "Failover" not in primary and "HealthCheck" not in primary  # the last link
            return out
        assert primary["HealthCheck"] == primary["GeogateRegion"]
        assert primary["SetIdentifier"] != secondary[0]["SetIdentifier"]
        assert secondary[0]["AliasTarget"]["EvaluateTargetHealth"] is True
        name = secondary[0]["AliasTarget"]["DNSName"]


def geo_records(doc: dict[str, Any], rtype: str = "A") -> dict[str, dict[str, Any]]:
    """The geolocation records by place: "EU" (continent), "country-SA", "*" (default)."""
    out = {}
    for s in doc["record_sets"]:
        if s["Name"] == doc["name"] and s["Type"] == rtype:
            where = s["GeoLocation"]
            key = where.get("ContinentCode") or where["CountryCode"]
            out[key if "ContinentCode" in where or key == "*" else f"country-{key}"] = s
    return out


def answer(
    doc: dict[str, Any], rtype: str, country: str | None = None, continent: str | None = None
) -> list[str] | None:
    """What Route 53 answers a client there (both None: an address it cannot place) while every
    region is up: the regions of the chain it aliases, None for no record of the type (NODATA).
    Route 53 takes the record of the smallest place that has one, for the query's type."""
    geo = geo_records(doc, rtype)
    for key in [f"country-{country}", continent, "*"]:
        if key in geo:
            return chain(doc, geo[key]["AliasTarget"]["DNSName"], rtype)
    return None


def test_every_place_aliases_its_order_as_a_health_checked_chain() -> None:
    doc = export()
    json.dumps(doc)  # all JSON
    assert (doc["zone"], doc["name"], doc["ttl"]) == ("example.com.", "api.example.com.", 30)
    geo = geo_records(doc)
    assert {"*", "AF", "AN", "AS", "EU", "NA", "OC", "SA", "country-SA"} <= set(geo)
    for key, s in geo.items():
        want = "default" if key == "*" else key if "-" in key else f"continent-{key}"
        assert s["SetIdentifier"] == f"geo-{want}"
        assert s["AliasTarget"]["EvaluateTargetHealth"] is True and "TTL" not in s
    assert chain(doc, geo["EU"]["AliasTarget"]["DNSName"]) == [EU, US, AP]
    assert chain(doc, geo["AS"]["AliasTarget"]["DNSName"]) == [AP, EU, US]
    assert chain(doc, geo["NA"]["AliasTarget"]["DNSName"]) == [US, EU, AP]
    assert chain(doc, geo["*"]["AliasTarget"]["DNSName"]) == [EU, US, AP]
    assert chain(doc, geo["country-SA"]["AliasTarget"]["DNSName"]) == [EU, AP, US]  # Riyadh
    ids = [(s["Name"], s["Type"], s.get("SetIdentifier")) for s in doc["record_sets"]]
    assert len(ids) == len(set(ids))  # Route 53 refuses duplicates
    assert not any(s["Type"] == "AAAA" for s in doc["record_sets"])  # no IPv6 addresses


def test_each_region_has_a_health_check_on_its_readyz() -> None:
    checks = export()["health_checks"]
    assert set(checks) == {EU, US, AP}
    assert checks[EU] == {
        "Type": "HTTPS",
        "FullyQualifiedDomainName": "eu-central.api.example.com",
        "Port": 443,
        "ResourcePath": "/readyz",
        "RequestInterval": 10,
        "FailureThreshold": 3,
        "EnableSNI": True,
    }
    assert checks[US]["Port"] == 8443
    assert checks[AP] == {
        "Type": "HTTP",
        "IPAddress": "127.0.0.13",
        "Port": 8080,
        "ResourcePath": "/readyz",
        "RequestInterval": 10,
        "FailureThreshold": 3,
    }
    assert health_check("http://127.0.0.1/readyz", 11)["RequestInterval"] == 30
    assert health_check("http://127.0.0.1/readyz", 60)["RequestInterval"] == 30


def test_ipv6_addresses_get_aaaa_chains_of_their_own() -> None:
    doc = export((), **{r.replace("-", "_"): {"addresses": a} for r, a in stacks().items()})
    assert set(geo_records(doc, "AAAA")) == set(geo_records(doc, "A"))
    assert answer(doc, "AAAA", "GB", "EU") == [EU, US, AP]
    assert answer(doc, "AAAA", "ZA", "AF") == [AP, EU, US]
    assert answer(doc, "AAAA") == [EU, US, AP]


def stacks_but(ipv4_only: Sequence[str], ipv6_only: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every region dual-stack but ``ipv4_only`` and ``ipv6_only``."""
    return {r: [V6[r]] if r in ipv6_only else a for r, a in stacks(*ipv4_only).items()}


def export_stacks(
    *ipv4_only: str, residency: Sequence[dict[str, Any]] = (), ipv6_only: Sequence[str] = ()
) -> dict[str, Any]:
    """Every region dual-stack but ``ipv4_only`` and ``ipv6_only``."""
    addrs = stacks_but(ipv4_only, ipv6_only)
    return export(residency, **{r.replace("-", "_"): {"addresses": a} for r, a in addrs.items()})


def test_an_ipv6_only_region_leaves_no_ipv4_client_without_an_answer() -> None:
    """eu-central has IPv6 alone: Europe's A records were all left out (an IPv4 client there
    got nothing); they alias the next regions of its order with IPv4, and AAAA eu-central."""
    doc = export_stacks(ipv6_only=[EU])
    assert answer(doc, "A", "GB", "EU") == [US, AP]
    assert answer(doc, "AAAA", "GB", "EU") == [EU, US, AP]
    assert answer(doc, "A", "SA", "AS") == [AP, US]  # Riyadh: eu-central first
    assert answer(doc, "A") == [US, AP] and answer(doc, "AAAA") == [EU, US, AP]
    assert {"*", "EU", "AF", "AS", "NA"} <= set(geo_records(doc, "A"))


def test_a_dual_stack_client_gets_one_region_in_both_families() -> None:
    """us-east has no IPv6 entry: North America gets no AAAA (NODATA), so a dual-stack client
    connects to us-east over IPv4, not to Frankfurt over IPv6 (Happy Eyeballs prefers it)."""
    doc = export_stacks(US)
    assert answer(doc, "A", "US", "NA") == [US, EU, AP]
    assert answer(doc, "AAAA", "US", "NA") is None
    assert answer(doc, "AAAA", "GB", "EU") == [EU, AP]
    assert answer(doc, "AAAA", "SG", "AS") == [AP, EU]
    # No default AAAA record: North America would fall through to it.
    assert "*" not in geo_records(doc, "AAAA") and answer(doc, "AAAA") is None


def test_residency_holds_in_both_families() -> None:
    """Europe's clients are kept in eu-central, which has no IPv6 entry: no AAAA for them,
    never another region's IPv6 address."""
    doc = export_stacks(EU, residency=EU_RESIDENCY)
    assert answer(doc, "A", "GB", "EU") == [EU]
    assert answer(doc, "AAAA", "GB", "EU") is None
    assert answer(doc, "AAAA", "US", "NA") == [US, AP]


def test_a_country_without_ipv6_inside_a_continent_with_it() -> None:
    """Johannesburg's first region is ap-southeast, IPv4-only here, Africa's is eu-central: an
    AAAA record for Africa would answer South Africa too, so Africa's countries get their own."""
    doc = export_stacks(AP)
    assert answer(doc, "AAAA", "ZA", "AF") is None
    assert answer(doc, "A", "ZA", "AF") == [AP, EU, US]
    assert "AF" not in geo_records(doc, "AAAA")
    assert answer(doc, "AAAA", "NG", "AF") == [EU, US]  # Lagos: an exception already
    assert answer(doc, "AAAA", "KE", "AF") == [EU, US]  # Nairobi: Africa's order, its own record
    assert answer(doc, "A", "SN", "AF") == [EU, US, AP]  # Dakar: nearer New York than Singapore
    assert answer(doc, "AAAA", "SN", "AF") == [EU, US]
    # The limit: a country geodb does not list ("XX"; of GeoIP's codes only XK, in Europe) gets
    # no record of its own, and neither Africa nor the default may answer it: no AAAA (its IPv4
    # answer is Africa's order's).
    assert answer(doc, "AAAA", "XX", "AF") is None and answer(doc, "A", "XX", "AF") == [EU, AP, US]


def test_a_country_geodb_cannot_place_gets_one_record_when_its_continent_does_not_matter() -> None:
    """Kosovo's rule first: us-east wherever GeoIP puts it, one country record."""
    doc = export([{"countries": ["XK"], "regions": [US]}, *EU_RESIDENCY])
    assert answer(doc, "A", "XK", "EU") == answer(doc, "A", "XK", "AS") == [US]
    assert answer(doc, "A", "GB", "EU") == [EU]


def test_a_country_whose_regions_depend_on_its_continent_is_refused() -> None:
    """Europe's rule first: Kosovo in Europe gets eu-central, elsewhere us-east. Route 53 puts
    a country on one continent the export does not know (geodb does not list it), and has
    one record per country: it cannot be written, and the export says why in one line."""
    with pytest.raises(ConfigError) as info:
        export([*EU_RESIDENCY, {"countries": ["XK"], "regions": [US]}])
    message = str(info.value)
    assert message.startswith("route53: country XK is not in geodb's country table")
    assert "(us-east on AF AN AS NA OC SA; eu-central on EU)" in message
    assert "use --format powerdns" in message and "\n" not in message


def family(order: Order, has: Sequence[str], rtype: str) -> list[str] | None:
    """What a place of ``order`` should get in a family ``has`` regions have addresses of: those
    regions of its order; for AAAA none at all when its first region has none (the A answer
    is the one to use), for A none only when none of them has IPv4."""
    mine = [r for r in order if r in has]
    return mine if mine and (rtype == "A" or order[0] in has) else None


@pytest.mark.parametrize(
    ("ipv4_only", "ipv6_only", "residency"),
    [
        ((), (), ()),
        ((US,), (), ()),
        ((EU,), (), EU_RESIDENCY),
        ((AP,), (), ()),
        ((EU, AP), (), ()),
        ((), (EU,), ()),
        ((US,), (EU,), ()),
        ((), (EU,), EU_RESIDENCY),  # Europe's rule: no region with IPv4, no A there
        ((AP,), (US,), ()),
    ],
)
def test_every_country_gets_its_order_in_each_family(
    ipv4_only: tuple[str, ...], ipv6_only: tuple[str, ...], residency: Sequence[dict[str, Any]]
) -> None:
    doc = export_stacks(*ipv4_only, residency=residency, ipv6_only=ipv6_only)
    regions = region_tables(URLS)
    for r in regions:
        r["addresses"] = stacks_but(ipv4_only, ipv6_only)[r["id"]]
    cfg = dns_config(regions=regions, residency=residency)
    t = compute(cfg, entries(cfg))
    has = {
        "A": [r for r in ADDRESSES if r not in ipv6_only],
        "AAAA": [r for r in ADDRESSES if r not in ipv4_only],
    }
    for row in data_rows("countries.csv"):
        c, k = row["country"], row["continent"]
        for rtype in ("A", "AAAA"):
            want = family(t.order_for(c, k), has[rtype], rtype)
            assert answer(doc, rtype, c, k) == want, (c, rtype)
    for rtype in ("A", "AAAA"):
        default = family(t.default, has[rtype], rtype)
        geo = geo_records(doc, rtype)
        # A country geodb does not list ("XX") has no record: its continent's answers it, and
        # on a continent left out nothing does (NODATA: the other family's answer is used),
        # never another order's answer.
        for k in t.continents:
            want = family(t.order_for("XX", k), has[rtype], rtype) if k in geo else None
            assert answer(doc, rtype, "XX", k) == want, (k, rtype)
        # An address Route 53 cannot place: the default's answer, or none where anything is
        # left out (the default would answer that too).
        left_out = any(answer(doc, rtype, c, k) is None for c, k in CONTINENT_OF.items())
        want_default = None if left_out or set(t.continents) - set(geo) else default
        assert answer(doc, rtype) == want_default, rtype
    ids = [(s["Name"], s["Type"], s.get("SetIdentifier")) for s in doc["record_sets"]]
    assert len(ids) == len(set(ids))


def test_alias_regions_get_a_links_without_addresses() -> None:
    """--alias-regions: eu-central and us-east behind load balancers (a url, no addresses),
    ap-southeast dual-stack with addresses. Every place's A chain is its whole order; an alias
    region's links hold no addresses (the Terraform makes them aliases) and it has no AAAA,
    so a place it comes first for gets none, as a region without IPv6 addresses."""
    lb: dict[str, Any] = {"addresses": []}
    changes = {"eu_central": lb, "us_east": lb, "ap_southeast": {"addresses": stacks()[AP]}}
    doc = export_with((), changes, alias_regions=True)
    for s in doc["record_sets"]:
        if s.get("GeogateRegion") in (EU, US):
            assert s["Type"] == "A" and "ResourceRecords" not in s and "TTL" not in s, s
    assert answer(doc, "A", "GB", "EU") == [EU, US, AP]
    assert answer(doc, "A", "US", "NA") == [US, EU, AP]
    assert answer(doc, "A", "SG", "AS") == [AP, EU, US]
    assert answer(doc, "AAAA", "SG", "AS") == [AP]
    assert answer(doc, "AAAA", "GB", "EU") is None and answer(doc, "AAAA") is None
    assert set(doc["health_checks"]) == {EU, US, AP}
    assert "alias to that region's load balancer" in doc["comment"]
    # Without the option they are not answered, and the comment says nothing of aliases.
    plain = export(eu_central=lb, us_east=lb)
    assert answer(plain, "A", "GB", "EU") == [AP] and "load balancer" not in plain["comment"]


def test_values_the_route53_api_would_refuse_are_made_to_fit_or_refused() -> None:
    """A 200-character region id made a SetIdentifier over Route 53's 128; a region named
    "next" one equal to its chain's SECONDARY's; a non-ASCII host went as it was."""
    long_id = "r" * 200
    doc = export(ap_southeast={"id": long_id}, us_east={"id": "next"})
    ids = [(s["Name"], s["Type"], s.get("SetIdentifier")) for s in doc["record_sets"]]
    assert len(ids) == len(set(ids)) and all(len(i[2] or "") <= 128 for i in ids)
    links = [s for s in doc["record_sets"] if s.get("GeogateRegion") == long_id]
    mine = {s["SetIdentifier"] for s in links if "SetIdentifier" in s}  # the last link: none
    assert mine and all(i.startswith("o") and f"-{'r' * 100}" in i and "~" in i for i in mine)
    check = health_check("https://b\u00fccher.example/x\u00e9/readyz", 10)
    assert check["FullyQualifiedDomainName"] == "xn--bcher-kva.example"
    assert check["ResourcePath"] == "/x%C3%A9/readyz"
    with pytest.raises(ConfigError) as info:  # the API's ResourcePath is at most 255
        export(eu_central={"url": "https://eu.example.com/" + "p" * 300})
    assert str(info.value).startswith("region eu-central: url: its health check's path (/ppp")
    assert "is 308 characters, over the 255" in str(info.value)


def test_a_chain_name_dns_cannot_hold_is_refused() -> None:
    """The name fits, "_o1-3-v4." before it does not: Route 53 would refuse the change."""
    cfg = dns_config()
    found = entries(cfg)
    opt = options("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".com", "d" * 50)
    with pytest.raises(OptionError, match=r"Route 53's failover link _o1-3-v4\.ddd.* is 257 bytes"):
        record_sets(compute(cfg, found), found, opt, "gw.toml")


def test_an_ipv6_only_region_is_checked_at_its_ipv6_address() -> None:
    """By name alone Route 53 checks an IPv4 address DNS gives for it: an IPv6-only region's
    name has none, and its check never passed (AWS's HealthCheckConfig, IPAddress)."""
    url = "https://eu-central.api.example.com/readyz"
    check = health_check(url, 10, "eu-central", ("2001:db8::10", "2001:db8::11"))
    assert check["IPAddress"] == "2001:db8::10"
    assert check["FullyQualifiedDomainName"] == "eu-central.api.example.com"  # its Host
    assert check["EnableSNI"] is True
    dual = health_check(url, 10, "eu-central", ("192.0.2.10", "2001:db8::10"))
    assert "IPAddress" not in dual and dual["EnableSNI"] is True  # by name, as before


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.13", True),  # loopback
        ("10.1.2.3", True),  # RFC 1918
        ("100.64.0.1", True),  # RFC 6598, shared
        ("169.254.0.1", True),  # link-local
        ("192.0.2.1", True),  # documentation (RFC 5737)
        ("240.0.0.1", True),  # reserved
        ("fd00::1", True),  # unique local
        ("2001:db8::10", True),  # documentation
        ("ff0e::1", True),  # multicast
        ("8.8.8.8", False),  # written, never sent to
        ("2606:4700::1111", False),
    ],
)
def test_a_check_at_an_address_aws_refuses_is_named(address: str, refused: bool) -> None:
    checks = {"r": {"IPAddress": address}, "by-name": {"FullyQualifiedDomainName": "a.example"}}
    assert unreachable_checks(checks) == ([("r", address)] if refused else [])
