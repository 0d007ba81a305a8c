"""Route 53 record sets: every place aliases a failover chain of its order, every link but the
last is health-checked on its region's /readyz, and the shapes are Route 53's."""

from __future__ import annotations

import json
from typing import Any

from gateway.dns.options import options
from gateway.dns.route53 import health_check, record_sets
from gateway.dns.tables import compute, entries
from tests.gateway.dns.configs import ADDRESSES, dns_config, region_tables

EU, US, AP = "eu-central", "us-east", "ap-southeast"
URLS = {EU: "https://eu-central.api.example.com", US: "https://us-east.api.example.com:8443"}


def export(**region_changes: Any) -> dict[str, Any]:
    regions = region_tables(URLS)
    for r in regions:
        r.update(region_changes.get(r["id"].replace("-", "_"), {}))
    cfg = dns_config(regions=regions)
    found = entries(cfg)
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
        assert [v["Value"] for v in primary["ResourceRecords"]] == [
            ADDRESSES[primary["GeogateRegion"]]
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
    doc = export(us_east={"addresses": ["127.0.0.12", "::1"]})
    geo6 = geo_records(doc, "AAAA")
    assert set(geo6) == set(geo_records(doc, "A"))
    first = geo6["EU"]["AliasTarget"]["DNSName"]
    links = [s for s in doc["record_sets"] if s["Name"] == first and s["Type"] == "AAAA"]
    assert [v["Value"] for v in links[0]["ResourceRecords"]] == ["::1"]
