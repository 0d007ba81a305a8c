"""GeoDNS's region orders are the router's: per country, per continent and for the unknown."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from gateway.config import Config
from gateway.dns.options import options
from gateway.dns.powerdns import zone_file
from gateway.dns.route53 import record_sets
from gateway.dns.tables import answered, compute, entries, health_url
from gateway.errors import ConfigError
from gateway.fleet.memory import MemoryStateStore
from gateway.routing.model import RequestFacts
from gateway.routing.policy import policy_from
from gateway.routing.router import route
from geodb.countries import data_rows
from geodb.location import Location
from tests.gateway.dns.configs import ADDRESSES, dns_config, region_tables

EU, US, AP = "eu-central", "us-east", "ap-southeast"


def one_upstream_per_region(
    extra: Mapping[str, dict[str, object]] | None = None,
) -> list[dict[str, object]]:
    return [
        {"id": f"{rid}-1", "region": rid, "url": f"http://127.0.0.1:{9000 + i}", "models": ["m"]}
        | (extra or {}).get(rid, {})
        for i, rid in enumerate(ADDRESSES)
    ]


def test_each_place_gets_its_nearest_region_first() -> None:
    cfg = dns_config()
    t = compute(cfg, entries(cfg))
    assert t.order_for("GB", "EU") == (EU, US, AP)
    assert t.order_for("SG", "AS") == (AP, EU, US)
    assert t.order_for("US", "NA") == (US, EU, AP)
    assert t.order_for("BR", "SA")[0] == US
    assert t.order_for("XX", "OC")[0] == AP  # a country geodb does not know: its continent
    assert t.order_for(None, None) == t.default == (EU, US, AP)  # the default: Frankfurt
    assert t.order_for("gb", "eu") == (EU, US, AP)  # codes in any case
    assert t.orders()[0] == t.default and len(set(t.orders())) == len(t.orders())


@pytest.mark.parametrize("drained", [(), (EU,)], ids=["none-drained", "eu-region-drained"])
def test_the_tables_lose_nothing_against_the_edge_router(drained: tuple[str, ...]) -> None:
    """Every country of geodb's table gets what a gateway at the edge (origin "client", no
    tolerance band) would route it to: the continent-plus-exceptions form is exact, and a
    region's drain (drained_regions) counts as the gateway counts it."""
    cfg = dns_config(
        upstreams=one_upstream_per_region(), drained_regions={rid: () for rid in drained}
    )
    t = compute(cfg, entries(cfg))
    store = MemoryStateStore(cfg)
    policy = dataclasses.replace(
        policy_from(cfg), origin="client", tolerance_ms=0.0, tolerance_ratio=0.0
    )
    rows = data_rows("countries.csv")
    assert len(rows) > 50
    for row in rows:
        loc = Location(
            float(row["latitude"]), float(row["longitude"]), row["country"], row["continent"]
        )
        decision = route(RequestFacts("m", loc), store.snapshot(0.0), policy, random.Random(0))
        want = tuple(c.upstream.region for c in decision.order)
        assert t.order_for(row["country"], row["continent"]) == want, row["country"]


def test_residency_rules_hold_in_dns() -> None:
    cfg = dns_config(
        residency=[
            {"name": "eu", "continents": ["EU"], "regions": [EU]},
            {"name": "sg", "countries": ["SG"], "regions": [AP, US]},
            {"name": "xk", "countries": ["XK"], "regions": [US]},  # not in geodb's table
        ]
    )
    t = compute(cfg, entries(cfg))
    assert t.order_for("GB", "EU") == (EU,)
    assert t.order_for("SG", "AS") == (AP, US)
    # Kosovo in Europe: the first rule that matches is Europe's, as in the router.
    assert t.order_for("XK", "EU") == (EU,)
    assert t.order_for("XK", "AS") == t.order_for("XK", "NA") == (US,)
    assert t.order_for("JP", "AS") == (AP, EU, US)  # no rule: all regions


def router_orders(cfg: Config, loc: Location) -> tuple[str, ...]:
    """What a gateway at the edge (origin "client", no tolerance band) routes ``loc`` to."""
    policy = dataclasses.replace(
        policy_from(cfg), origin="client", tolerance_ms=0.0, tolerance_ratio=0.0
    )
    snap = MemoryStateStore(cfg).snapshot(0.0)
    decision = route(RequestFacts("m", loc), snap, policy, random.Random(0))
    return tuple(c.upstream.region for c in decision.order)


@pytest.mark.parametrize(
    "rules",
    [
        # Europe's rule first: Kosovo's own applies only off Europe.
        [{"continents": ["EU"], "regions": [EU]}, {"countries": ["XK"], "regions": [US]}],
        # Kosovo's first: the same everywhere.
        [{"countries": ["XK"], "regions": [US]}, {"continents": ["EU"], "regions": [EU]}],
        # Kosovo in two regions: the nearer first, continent by continent, as the gateway
        # places a client at its continent's hub.
        [{"countries": ["XK"], "regions": [EU, US]}],
    ],
)
def test_a_country_geodb_cannot_place_gets_the_routers_order_on_every_continent(
    rules: list[dict[str, object]],
) -> None:
    cfg = dns_config(upstreams=one_upstream_per_region(), residency=rules)
    t = compute(cfg, entries(cfg))
    for row in data_rows("continents.csv"):
        k, lat, lon = row["continent"], float(row["latitude"]), float(row["longitude"])
        want = router_orders(cfg, Location(lat, lon, "XK", k))
        assert t.order_for("XK", k) == want, k
    assert set(t.orders()) >= {t.order_for("XK", "AS"), t.order_for("XK", "EU")}


def test_a_drained_residency_region_keeps_its_clients() -> None:
    """eu-central drained, Europe's clients kept there: the gateway answers them 503, and DNS,
    which has no 503, answers eu-central (its gateway enforces the drain), never a region
    outside the rule. Everyone else moves off the drained region."""
    cfg = dns_config(
        residency=[{"name": "eu", "continents": ["EU"], "regions": [EU]}],
        drained_regions={EU: ()},
    )
    t = compute(cfg, entries(cfg))
    assert t.order_for("GB", "EU") == (EU,)
    assert t.order_for("XX", "EU") == (EU,)
    assert t.order_for("US", "NA") == (US, AP)
    assert t.order_for("ZA", "AF")[0] != EU and EU not in t.default
    two = dns_config(
        residency=[{"name": "eu", "continents": ["EU"], "regions": [EU, US]}],
        drained_regions={EU: ()},
    )
    # A region of the rule that is not drained takes them; the drained one stays out.
    assert compute(two, entries(two)).order_for("GB", "EU") == (US,)


def test_a_rule_whose_regions_have_no_addresses_is_refused_in_one_line() -> None:
    """DNS could answer its clients only outside the rule, or nothing: the operator chooses."""
    regions = region_tables()
    regions[0]["addresses"] = []  # eu-central: no entry
    cfg = dns_config(
        regions=regions, residency=[{"name": "eu", "continents": ["EU"], "regions": [EU]}]
    )
    with pytest.raises(ConfigError) as info:
        entries(cfg)
    assert str(info.value).startswith(
        "residency[0] (eu): none of its regions (eu-central) has addresses"
    )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        (["127.0.0.11", "127.0.0.11"], "addresses: '127.0.0.11' is listed twice"),
        (
            ["2001:db8::1", "2001:DB8:0::1"],
            "addresses: '2001:DB8:0::1' is listed twice (as '2001:db8::1')",
        ),
    ],
)
def test_an_address_listed_twice_is_refused(addresses: list[str], message: str) -> None:
    regions = region_tables()
    regions[0]["addresses"] = addresses
    with pytest.raises(ConfigError, match=re.escape(f"regions[0] (eu-central): {message}")):
        entries(dns_config(regions=regions))


def test_drained_and_biased_regions_move_down_or_out() -> None:
    ups = one_upstream_per_region({EU: {"drained": True}, AP: {"bias_ms": 5000.0}})
    cfg = dns_config(upstreams=ups)
    t = compute(cfg, entries(cfg))
    assert t.order_for("GB", "EU") == (US, AP)
    assert t.order_for("SG", "AS") == (US, AP)


def test_with_every_region_drained_dns_still_answers() -> None:
    ups = one_upstream_per_region({rid: {"drained": True} for rid in ADDRESSES})
    cfg = dns_config(upstreams=ups)
    t = compute(cfg, entries(cfg))
    assert t.order_for("SG", "AS") == (AP, EU, US)


def export(cfg: Config) -> tuple[str, dict[str, object]]:
    """What `geogate dns export` writes for ``cfg``: the PowerDNS zone and Route 53's sets."""
    found = entries(cfg)
    opt = options("example.com", "api")
    tables = compute(cfg, found)
    return zone_file(tables, found, opt, "gw.toml"), record_sets(tables, found, opt, "gw.toml")


def test_a_drained_region_exports_as_one_whose_upstreams_are_all_drained() -> None:
    """drained_regions holds every upstream of the region, whatever their own flags say (a
    file may list it alone; a fleet's change sets the flags too): the export is the one the
    same region gets with every upstream drained."""
    own: dict[str, dict[str, object]] = {EU: {"drained": True}}  # eu-central-1's, not -2's
    eu2: dict[str, object] = {
        "id": "eu-central-2",
        "region": EU,
        "url": "http://127.0.0.1:9100",
        "models": ["m"],
    }
    ups: list[dict[str, object]] = [*one_upstream_per_region(own), eu2]
    by_region = dns_config(upstreams=ups, drained_regions={EU: ["eu-central-1"]})
    every = [u | {"drained": True} if u["region"] == EU else u for u in ups]
    by_upstreams = dns_config(upstreams=every)
    assert export(by_region) == export(by_upstreams)
    assert export(by_region) != export(dns_config(upstreams=ups))  # the drain moves something
    t = compute(by_region, entries(by_region))
    assert t.order_for("GB", "EU") == (US, AP)


def test_a_drained_region_without_upstreams_moves_out_of_the_answers() -> None:
    """A DNS config may name only regions and their entries: drained_regions is then the one
    way to drain one."""
    cfg = dns_config(drained_regions={EU: ()})
    t = compute(cfg, entries(cfg))
    assert t.order_for("GB", "EU") == t.default == (US, AP)
    every = dns_config(drained_regions={rid: () for rid in ADDRESSES})
    # Nothing left undrained: DNS still answers, each place its nearest (the fallback).
    assert compute(every, entries(every)).order_for("SG", "AS") == (AP, EU, US)


def test_only_regions_with_addresses_are_answered() -> None:
    regions = region_tables()
    regions[1]["addresses"] = []  # us-east: no entry of its own
    cfg = dns_config(regions=regions)
    assert list(entries(cfg)) == [EU, AP]
    assert compute(cfg, entries(cfg)).order_for("US", "NA") == (EU, AP)


def test_each_family_is_answered_by_the_regions_that_have_it() -> None:
    """IPv4: the order's regions with IPv4, so an IPv6-only first region sends IPv4 clients
    to the next (an empty A was an outage for them). IPv6: nothing when the first region has
    no IPv6 (its dual-stack clients take A, that region; IPv6-only ones get IPv4 by DNS64)."""
    order, v4, v6 = (EU, US, AP), {US: 1, AP: 1}, {EU: 1, AP: 1}
    assert answered(order, v4, 4) == (US, AP)  # was (): no A answer at all
    assert answered(order, v6, 6) == (EU, AP)
    assert answered((US, EU, AP), v6, 6) == ()  # us-east first and IPv4-only: NODATA
    assert answered((EU,), v4, 4) == ()  # a rule's only region, IPv6-only: none outside it


def test_an_entry_without_a_url_is_one_line() -> None:
    regions = region_tables()
    regions[0]["url"] = ""
    with pytest.raises(ConfigError) as info:
        entries(dns_config(regions=regions))
    assert "regions[0] (eu-central): addresses without url" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.11", "use http:// or https://"),
        ("http://", "needs a host"),
        ("not a url", "use http:// or https://"),
        # Route 53's health check reads the port: it was a traceback at export.
        ("https://eu.example.com:99999/x", "port must be a number from 1 to 65535"),
        ("https://eu.example.com/?x=1", "it has a query or fragment"),
    ],
)
def test_a_region_url_dns_could_not_check_is_refused_at_load(url: str, message: str) -> None:
    regions = region_tables({EU: url})
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        dns_config(regions=regions)
    assert info.value.errors()[0]["loc"] == ("regions", 0, "url")


def test_no_addresses_anywhere_says_what_to_set() -> None:
    regions = [{**r, "addresses": []} for r in region_tables()]
    with pytest.raises(ConfigError, match=r"no region has addresses: set regions\[\].addresses"):
        entries(dns_config(regions=regions))


def test_health_url_is_the_gateways_readyz() -> None:
    assert health_url("https://eu.api.example.com/") == "https://eu.api.example.com/readyz"
    assert health_url("http://127.0.0.11:8080") == "http://127.0.0.11:8080/readyz"


def test_alias_regions_are_the_regions_with_a_url_and_no_addresses() -> None:
    """Route 53 behind load balancers (--alias-regions): a region with a url and no addresses
    is answered by an alias to its load balancer; one with neither is still left out, and one
    with addresses keeps them. The order is the router's, as for addresses."""
    regions = region_tables()
    regions[0]["addresses"] = []  # eu-central: its load balancer's alias
    regions[1].update(url="", addresses=[])  # us-east: nothing DNS could check
    cfg = dns_config(regions=regions)
    found = entries(cfg, alias_regions=True)
    assert list(found) == [EU, AP]
    assert found[EU].alias and found[EU].addresses == ()
    assert found[EU].health_url == "http://127.0.0.11:8080/readyz"
    assert not found[AP].alias and found[AP].addresses == (ADDRESSES[AP],)
    assert compute(cfg, found).order_for("US", "NA") == (EU, AP)
    assert list(entries(cfg)) == [AP]  # without the option: addresses only


def test_no_addresses_anywhere_names_the_route53_way_out() -> None:
    regions = [{**r, "addresses": []} for r in region_tables()]
    with pytest.raises(ConfigError, match="export with --format route53 --alias-regions"):
        entries(dns_config(regions=regions))
    nothing = [{**r, "url": ""} for r in regions]
    with pytest.raises(ConfigError, match=r"no region has addresses or a url: set regions\[\].url"):
        entries(dns_config(regions=nothing), alias_regions=True)
