"""The PowerDNS zone, served by a real pdns_server on loopback: each client subnet (EDNS
client subnet, as a public resolver sends it) gets its best healthy region's address, and a
region whose /readyz fails drops out of the answers within the check interval."""

from __future__ import annotations

import functools
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.cli.procs import stop
from gateway.dns.options import options
from gateway.dns.powerdns import MAX_MESSAGE, MAX_STRING, zone_file
from gateway.dns.tables import Tables, compute, entries
from gateway.errors import ConfigError
from geodb.build import build_from_rows
from tests.gateway.dns.configs import (
    ADDRESSES,
    EU_RESIDENCY,
    V6,
    dns_config,
    region_tables,
    stacks,
    toml,
)
from tests.gateway.dns.pdns import CHECK_INTERVAL_S, Health, PowerDNS, strings_of
from tests.support import eventually

EU, US, AP = "eu-central", "us-east", "ap-southeast"
# The zones the server holds: every region IPv4-only; us-east alone IPv4-only; Europe's
# clients kept in eu-central, which is IPv4-only, and Kosovo's (XK: not in geodb's country
# table) in us-east, unless GeoIP puts them in Europe, whose rule comes first; eu-central with
# eight addresses and a long health URL; eu-central IPv6-only; the largest zone the export
# writes (the most addresses in eu-central).
V4, US_V4_ONLY, EU_RESIDENT = "api.example.com", "api.example.net", "api.example.org"
MANY, EU_V6_ONLY, LARGEST = "api.example.info", "api.example.edu", "api.example.biz"
XK_RESIDENCY = [*EU_RESIDENCY, {"name": "xk", "countries": ["XK"], "regions": ["us-east"]}]
MANY_V4 = ["127.0.0.11", "127.0.0.21", "127.0.0.31", "127.0.0.41"]
MANY_V6 = [f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{n}" for n in (11, 21, 31, 41)]
# Client networks placed in cities by the test's GeoIP database (documentation ranges). The
# second Kosovo is in Asia: no GeoIP says so, but a country geodb cannot place may be anywhere.
LONDON, SINGAPORE, NEW_YORK = "203.0.113.7", "198.51.100.7", "192.0.2.7"
PRISTINA, XK_IN_ASIA = "203.0.113.135", "198.51.100.135"
NS1_ADDRESS = "127.0.0.53"  # ns1.example.com's, given to the export (--ns ns1=ADDRESS)
CITIES = [
    ("203.0.113.0/25", "GB", "EU", "51.51", "-0.13", "London"),
    ("203.0.113.128/25", "XK", "EU", "42.66", "21.16", "Pristina"),
    ("198.51.100.0/25", "SG", "AS", "1.29", "103.85", "Singapore"),
    ("198.51.100.128/25", "XK", "AS", "1.29", "103.85", "Kosovo in Asia"),
    ("192.0.2.0/24", "US", "NA", "40.71", "-74.01", "New York"),
]


def test_the_zone_has_soa_ns_and_a_lua_record_per_family() -> None:
    regions = region_tables()
    regions[1]["addresses"] = ["127.0.0.12", "::1"]
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    opt = options("example.com", "api", ttl=30, check_interval_s=7, serial=42)
    text = zone_file(compute(cfg, found), found, opt, "gw.toml")
    assert "@ IN SOA ns1.example.com. hostmaster.example.com. 42 " in text
    assert "@ IN NS ns1.example.com." in text
    assert not re.search(r"^ns1\S* IN (A|AAAA) ", text, re.M)  # none given for ns1: none written
    glued = options("example.com", "api", nameservers=("ns1=192.0.2.53,2001:db8::53",))
    with_glue = zone_file(compute(cfg, found), found, glued, "gw.toml")
    assert "ns1.example.com. IN A 192.0.2.53\nns1.example.com. IN AAAA 2001:db8::53\n" in with_glue
    assert "api 30 IN LUA A (" in text and "api 30 IN LUA AAAA (" in text
    assert "interval='7'" in text and "lua-health-checks-interval seconds (set it to 7)" in text
    strings = [line.strip() for line in text.splitlines() if line.startswith('  "')]
    assert strings and all(len(s) - 2 <= MAX_STRING for s in strings)  # quotes aside
    a, aaaa = text.split("LUA A (")[1].split("\n)\n")[0], text.split("LUA AAAA (")[1]
    # Both choose a region by all its addresses (the same one), then keep their family's.
    urls = "local h={'http://127.0.0.11:8080/readyz','http://127.0.0.12:8080/readyz',"
    us = "{['127.0.0.12']=h[2],['::1']=h[2]}"
    assert urls in a and us in a and urls in aaaa and us in aaaa
    assert "if not x:find(':',1,true)" in a and "if x:find(':',1,true)" in aaaa
    # The legend an operator reviews: each order and who gets it.
    assert ";   ap-southeast > eu-central > us-east: continents AS" in text


def test_quotes_in_a_url_are_refused_not_written_into_the_record() -> None:
    """They were escaped for the zone file, and PowerDNS 4.7 ran the Lua with the escapes
    still in it: a quote ended the string, and every client got SERVFAIL (a one-off run of a
    zone like this one against pdns_server)."""
    regions = region_tables({EU: "http://127.0.0.11:8080/a'b\"c\\d"})
    with pytest.raises(ConfigError, match="which a DNS health check cannot carry") as info:
        entries(dns_config(regions=regions))
    assert all(repr(c) in str(info.value) for c in "'\"\\"), info.value


def test_a_lua_record_past_what_one_message_holds_is_refused() -> None:
    regions = region_tables({EU: "http://127.0.0.11:8080/" + "z" * 2000})
    regions[0]["addresses"] = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    with pytest.raises(ConfigError) as info:
        zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    assert "LUA records of api.example.com.: A " in str(info.value)
    assert "over the 65023 a zone transfer's message holds" in str(info.value)


def zone_with(n: int, tables: Tables | None = None) -> str:
    """The zone of example.biz with ``n`` addresses of each family in eu-central."""
    regions = region_tables()
    v4 = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]
    regions[0]["addresses"] = v4 + [f"2001:db8::1:{i:x}" for i in range(n)]
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    return zone_file(tables or compute(cfg, found), found, options("example.biz", "api"), "gw")


@functools.cache
def largest() -> int:
    """The most addresses of each family eu-central may have in zone_with: one more is refused."""
    tables = compute(dns_config(), entries(dns_config()))  # the orders: addresses change none
    fits, refused = 1, 2000
    while refused - fits > 1:
        mid = (fits + refused) // 2
        try:
            zone_with(mid, tables)
            fits = mid
        except ConfigError:
            refused = mid
    return fits


def test_the_records_of_one_name_must_fit_one_message_together() -> None:
    """PowerDNS sends the zone's records in one message of a transfer: each LUA record of
    under 65,535 bytes, both over it, and the transfer failed ("attempt to write an oversized
    chunk", 40 dual-stack regions). Refused, naming both; the served LARGEST zone, one
    address fewer, transfers whole (test_the_largest_zone_transfers_whole)."""
    with pytest.raises(ConfigError) as info:
        zone_with(largest() + 1)
    sizes = re.search(r"A (\d+) and AAAA (\d+)\)", str(info.value))
    assert sizes, info.value
    a, aaaa = int(sizes[1]), int(sizes[2])
    assert max(a, aaaa) < MAX_MESSAGE < a + aaaa + 1000  # each fits a record; both, no message


def test_a_config_file_name_cannot_write_a_record() -> None:
    """A comment ends at the line break: one in the config file's name was a record."""
    cfg = dns_config()
    found = entries(cfg)
    source = "inj/y\nevil 30 IN A 6.6.6.6\n;.toml\u2028x\udcff"
    text = zone_file(compute(cfg, found), found, options("example.com", "api"), source)
    assert "evil 30 IN A" not in text.split(";", 1)[0]
    assert not any(line.startswith("evil") for line in text.splitlines())
    assert "from inj/y\\nevil 30 IN A 6.6.6.6\\n;.toml\\u2028x\\udcff: do not edit" in text
    text.encode("utf-8")  # all of it can be written


def test_an_ipv6_only_region_sends_ipv4_clients_to_the_next_with_ipv4() -> None:
    regions = region_tables()
    regions[0]["addresses"] = [V6[EU]]
    cfg = dns_config(regions=regions, residency=EU_RESIDENCY)
    found = entries(cfg)
    text = zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    assert " " not in strings_of(text, "A") + strings_of(text, "AAAA")  # no empty strings
    a, aaaa = "".join(strings_of(text, "A")), "".join(strings_of(text, "AAAA"))
    # The orders, by region number (eu-central 1): A's skip it, AAAA's keep it (first: NODATA
    # for the places whose first region has no IPv6 is the AAAA record's own filter).
    assert "{2,3}" in a and "{1," not in a.split("local o=")[1].split("local c=")[0]
    assert "{1,2,3}" in aaaa
    # Europe's rule keeps its clients in eu-central: no IPv4 region there, so no A answer.
    assert "{}" in a and "if #u==0 then return {} end" in a


def test_many_addresses_and_a_long_url_fit_in_dns_strings() -> None:
    """A zone transfer cuts a string over 255 bytes every 255 bytes, inside a token as likely
    as not: each health URL is named once, and a region's addresses go over several strings."""
    regions = region_tables({EU: "http://127.0.0.11:8080/" + "x" * 36})  # a 60-character URL
    regions[0]["addresses"] = [*MANY_V4, *MANY_V6]
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    assert len(found[EU].health_url) > 60
    text = zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    for rtype in ("A", "AAAA"):
        strings = strings_of(text, rtype)
        assert all(len(s.encode()) <= MAX_STRING for s in strings), strings
        script = "".join(strings)
        assert script.count(found[EU].health_url) == 1
        assert all(f"['{a}']=h[1]" in script for a in [*MANY_V4, *MANY_V6])
    # A URL longer than a string itself is cut into Lua literals joined by "..".
    regions[0]["url"] = "http://127.0.0.11:8080/" + "y" * 400
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    text = zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    strings = strings_of(text, "A")
    assert all(len(s.encode()) <= MAX_STRING for s in strings)
    script = "".join(strings)
    assert "y" * 400 not in script
    assert "y" * 400 + "/readyz" in re.sub(r"'\.\. ?'", "", script)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PowerDNS, Health]]:
    assert shutil.which("pdns_server") and shutil.which("dig"), (
        "needs pdns_server and dig: scripts/dev test installs pdns-server, pdns-backend-bind, "
        "pdns-backend-geoip and bind9-dnsutils"
    )
    tmp = tmp_path_factory.mktemp("pdns")
    health = Health()
    urls = {r: health.url(r) for r in ADDRESSES}
    long_url = {**urls, EU: urls[EU] + "/" + "x" * (59 - len(urls[EU]))}  # 60 characters
    zones = {}
    for fqdn, text in (
        (V4, toml(urls)),
        (US_V4_ONLY, toml(urls, stacks(US))),
        (EU_RESIDENT, toml(urls, stacks(EU), XK_RESIDENCY)),
        (MANY, toml(long_url, {**stacks(), EU: [*MANY_V4, *MANY_V6]})),
        (EU_V6_ONLY, toml(urls, {**stacks(), EU: [V6[EU]]})),
    ):
        zone = fqdn.split(".", 1)[1]
        cfg = tmp / f"{zone}.toml"
        cfg.write_text(text)
        zones[zone] = tmp / f"{zone}.zone"
        main(
            [
                "dns",
                "export",
                "--config",
                str(cfg),
                "--format",
                "powerdns",
                "--zone",
                zone,
                "--name",
                "api",
                "--ttl",
                "30",
                "--check-interval",
                str(CHECK_INTERVAL_S),
                "--out",
                str(zones[zone]),
                *(["--ns", f"ns1={NS1_ADDRESS}"] if fqdn == V4 else []),
            ]
        )
    zones["example.biz"] = tmp / "example.biz.zone"
    zones["example.biz"].write_text(zone_with(largest()))
    mmdb = tmp / "cities.mmdb"
    build_from_rows([("test", row) for row in CITIES], mmdb)
    pdns = PowerDNS(tmp, zones, mmdb)
    try:
        yield pdns, health
    finally:
        stop(pdns.proc)
        health.close()
        print(pdns.log.read_text()[-3000:])


def answers(
    pdns: PowerDNS,
    subnet: str,
    want: list[str],
    timeout: float = 10.0,
    *,
    name: str = V4,
    rtype: str = "A",
) -> float:
    """Seconds until ``subnet`` is answered ``want`` (NOERROR; [] is NODATA: no record of the
    type); fails with what pdns said instead."""
    t0 = time.monotonic()
    seen: list[tuple[str, list[str]]] = []

    def check() -> bool:
        seen.append(pdns.dig(subnet, name, rtype))
        return seen[-1] == ("NOERROR", want)

    try:
        eventually(check, timeout, f"{subnet} {name} {rtype} -> {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers {seen[-3:]}; log: {pdns.log}") from None
    elapsed = time.monotonic() - t0
    said = " ".join(want) or "NODATA"
    print(f"dig +subnet={subnet}/32 {name} {rtype} -> {said} ({elapsed:.2f} s)")
    return elapsed


def test_each_client_gets_its_nearest_healthy_region(served: tuple[PowerDNS, Health]) -> None:
    pdns, _ = served
    # Until the first checks ran every region counts as down and all are answered: wait.
    answers(pdns, LONDON, [ADDRESSES[EU]])
    answers(pdns, SINGAPORE, [ADDRESSES[AP]])
    answers(pdns, NEW_YORK, [ADDRESSES[US]])


def test_the_zones_name_server_has_its_address_in_the_zone(
    served: tuple[PowerDNS, Health],
) -> None:
    pdns, _ = served
    assert pdns.dig(LONDON, "ns1.example.com") == ("NOERROR", [NS1_ADDRESS])
    # Exported without one (the export warned): to a resolver that asks, no such name.
    assert pdns.dig(LONDON, "ns1.example.net") == ("NXDOMAIN", [])


def test_a_region_whose_readyz_fails_drops_out_within_the_interval(
    served: tuple[PowerDNS, Health],
) -> None:
    pdns, health = served
    answers(pdns, SINGAPORE, [ADDRESSES[AP]])
    health.down.add(AP)
    try:
        # One interval to notice, the check's own time, and a margin for a loaded machine.
        moved = answers(pdns, SINGAPORE, [ADDRESSES[EU]], timeout=CHECK_INTERVAL_S + 4)
        assert moved <= CHECK_INTERVAL_S + 4
        assert pdns.dig(LONDON, V4) == ("NOERROR", [ADDRESSES[EU]])  # others are unaffected
    finally:
        health.down.discard(AP)
    answers(pdns, SINGAPORE, [ADDRESSES[AP]], timeout=CHECK_INTERVAL_S + 4)


def test_a_dual_stack_client_gets_one_region_in_both_families(
    served: tuple[PowerDNS, Health],
) -> None:
    """us-east has no IPv6 entry: New York gets no AAAA (NODATA), so a dual-stack client
    connects to us-east over IPv4, not to Frankfurt over IPv6 (Happy Eyeballs prefers it)."""
    pdns, _ = served
    for subnet, region in ((NEW_YORK, US), (LONDON, EU), (SINGAPORE, AP)):
        answers(pdns, subnet, [ADDRESSES[region]], name=US_V4_ONLY)
    answers(pdns, NEW_YORK, [], name=US_V4_ONLY, rtype="AAAA")
    answers(pdns, LONDON, [V6[EU]], name=US_V4_ONLY, rtype="AAAA")
    answers(pdns, SINGAPORE, [V6[AP]], name=US_V4_ONLY, rtype="AAAA")


def test_both_families_fail_over_to_the_same_region(served: tuple[PowerDNS, Health]) -> None:
    """London's order is eu-central > us-east > ap-southeast: with Frankfurt down, IPv4 goes
    to us-east and IPv6 has no answer (us-east has none), not ap-southeast's."""
    pdns, health = served
    answers(pdns, LONDON, [V6[EU]], name=US_V4_ONLY, rtype="AAAA")
    health.down.add(EU)
    try:
        answers(pdns, LONDON, [ADDRESSES[US]], CHECK_INTERVAL_S + 4, name=US_V4_ONLY)
        answers(pdns, LONDON, [], CHECK_INTERVAL_S + 4, name=US_V4_ONLY, rtype="AAAA")
        assert pdns.dig(SINGAPORE, US_V4_ONLY, "AAAA") == ("NOERROR", [V6[AP]])
    finally:
        health.down.discard(EU)
    answers(pdns, LONDON, [V6[EU]], CHECK_INTERVAL_S + 4, name=US_V4_ONLY, rtype="AAAA")


def test_residency_holds_in_both_families(served: tuple[PowerDNS, Health]) -> None:
    """Europe's clients are kept in eu-central, which has no IPv6 entry: London gets its IPv4
    address and no AAAA, never another region's IPv6 address."""
    pdns, _ = served
    answers(pdns, LONDON, [ADDRESSES[EU]], name=EU_RESIDENT)
    answers(pdns, LONDON, [], name=EU_RESIDENT, rtype="AAAA")
    answers(pdns, NEW_YORK, [V6[US]], name=EU_RESIDENT, rtype="AAAA")
    answers(pdns, SINGAPORE, [V6[AP]], name=EU_RESIDENT, rtype="AAAA")


def test_a_country_geodb_cannot_place_follows_its_continent_rule(
    served: tuple[PowerDNS, Health],
) -> None:
    """Kosovo (XK) is not in geodb's country table. The gateway's router applies the first
    rule that matches: Europe's for a Kosovar client GeoIP puts in Europe, Kosovo's own
    anywhere else; the record looks the country up by continent and does the same."""
    pdns, _ = served
    answers(pdns, PRISTINA, [ADDRESSES[EU]], name=EU_RESIDENT)
    answers(pdns, XK_IN_ASIA, [ADDRESSES[US]], name=EU_RESIDENT)
    answers(pdns, SINGAPORE, [ADDRESSES[AP]], name=EU_RESIDENT)


def test_many_addresses_and_a_long_url_answer_and_transfer_whole(
    served: tuple[PowerDNS, Health], tmp_path: Path
) -> None:
    """Eight addresses and a 60-character health URL: every string of the record fits in
    255 bytes, so a zone transfer hands a secondary the same strings, and the server answers
    the region's addresses and fails over from it as for a short record."""
    pdns, health = served
    answers(pdns, LONDON, MANY_V4, name=MANY)
    answers(pdns, LONDON, MANY_V6, name=MANY, rtype="AAAA")
    zone = (pdns.zones["example.info"]).read_text()
    transferred = pdns.axfr_lua("example.info")
    assert transferred == {1: strings_of(zone, "A"), 28: strings_of(zone, "AAAA")}
    health.down.add(EU)
    try:
        answers(pdns, LONDON, [ADDRESSES[US]], CHECK_INTERVAL_S + 4, name=MANY)
    finally:
        health.down.discard(EU)
    answers(pdns, LONDON, MANY_V4, CHECK_INTERVAL_S + 4, name=MANY)


def test_an_ipv6_only_region_leaves_no_ipv4_client_without_an_answer(
    served: tuple[PowerDNS, Health],
) -> None:
    """eu-central has IPv6 alone: London's IPv4 clients get the next region of its order
    with IPv4 (us-east), where they got NOERROR and no address; its dual-stack and IPv6
    clients eu-central's IPv6 address (Happy Eyeballs prefers it)."""
    pdns, _ = served
    answers(pdns, LONDON, [ADDRESSES[US]], name=EU_V6_ONLY)
    answers(pdns, LONDON, [V6[EU]], name=EU_V6_ONLY, rtype="AAAA")
    answers(pdns, SINGAPORE, [ADDRESSES[AP]], name=EU_V6_ONLY)
    answers(pdns, SINGAPORE, [V6[AP]], name=EU_V6_ONLY, rtype="AAAA")


def test_the_largest_zone_transfers_whole(served: tuple[PowerDNS, Health]) -> None:
    """The most the export writes (one address more is refused) is what a secondary gets."""
    pdns, _ = served
    zone = pdns.zones["example.biz"].read_text()
    a, aaaa = strings_of(zone, "A"), strings_of(zone, "AAAA")
    assert sum(len(x) + 1 for x in a + aaaa) > 64000  # near the limit, both records large
    assert pdns.axfr_lua("example.biz") == {1: a, 28: aaaa}
