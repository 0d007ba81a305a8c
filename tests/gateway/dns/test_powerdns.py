"""The PowerDNS zone, served by a real pdns_server on loopback: each client subnet (EDNS
client subnet, as a public resolver sends it) gets its best healthy region's address, and a
region whose /readyz fails drops out of the answers within the check interval."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.cli.procs import spawn, stop
from gateway.dns.options import options
from gateway.dns.powerdns import MAX_STRING, zone_file
from gateway.dns.tables import compute, entries
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
from tests.support import eventually

EU, US, AP = "eu-central", "us-east", "ap-southeast"
CHECK_INTERVAL_S = 1  # the export's --check-interval and pdns's lua-health-checks-interval
# The zones the server holds: every region IPv4-only; us-east alone IPv4-only; Europe's
# clients kept in eu-central, which is IPv4-only, and Kosovo's (XK: not in geodb's country
# table) in us-east, unless GeoIP puts them in Europe, whose rule comes first; eu-central with
# eight addresses and a long health URL.
V4, US_V4_ONLY, EU_RESIDENT = "api.example.com", "api.example.net", "api.example.org"
MANY = "api.example.info"
XK_RESIDENCY = [*EU_RESIDENCY, {"name": "xk", "countries": ["XK"], "regions": ["us-east"]}]
MANY_V4 = ["127.0.0.11", "127.0.0.21", "127.0.0.31", "127.0.0.41"]
MANY_V6 = [f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{n}" for n in (11, 21, 31, 41)]
# Client networks placed in cities by the test's GeoIP database (documentation ranges). The
# second Kosovo is in Asia: no GeoIP says so, but a country geodb cannot place may be anywhere.
LONDON, SINGAPORE, NEW_YORK = "203.0.113.7", "198.51.100.7", "192.0.2.7"
PRISTINA, XK_IN_ASIA = "203.0.113.135", "198.51.100.135"
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


def test_quotes_in_a_url_cannot_break_out_of_the_record() -> None:
    regions = region_tables({EU: "http://127.0.0.11:8080/a'b\"c\\d"})
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    text = zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    assert "'http://127.0.0.11:8080/a\\\\'b\\\"c\\\\\\\\d/readyz'" in text


def strings_of(text: str, rtype: str) -> list[str]:
    """The character-strings of the zone's LUA record of ``rtype``, as the server stores them
    (each ends in the space that joins it to the next)."""
    body = text.split(f"IN LUA {rtype} (\n")[1].split("\n)\n")[0]
    return [json.loads(line.strip()) for line in body.splitlines()]  # no escapes in these


def test_a_lua_record_past_what_one_record_holds_is_refused() -> None:
    """Past 65,535 bytes of record data PowerDNS served queries, but a zone transfer to a
    secondary failed ("attempt to write an oversized chunk"). Refused, naming the record."""
    regions = region_tables({EU: "http://127.0.0.11:8080/" + "z" * 2000})
    regions[0]["addresses"] = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    cfg = dns_config(regions=regions)
    found = entries(cfg)
    with pytest.raises(ConfigError) as info:
        zone_file(compute(cfg, found), found, options("example.com", "api"), "gw.toml")
    assert "the A record's Lua would be" in str(info.value)
    assert "over the 65535 one DNS record holds (a zone transfer fails)" in str(info.value)


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


class Health:
    """Each region's /readyz, on the region's own loopback address: 200 or 503 at will."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                address = self.server.server_address
                assert isinstance(address, tuple)  # an AF_INET server's: (host, port)
                region = next(r for r, a in ADDRESSES.items() if a == address[0])
                ok = region not in health.down
                body = b'{"ready": true}' if ok else b'{"ready": false}'
                self.send_response(200 if ok else 503)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        for region, addr in ADDRESSES.items():
            srv = http.server.ThreadingHTTPServer((addr, 0), Handler)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers[region] = srv

    def url(self, region: str) -> str:
        host, port = self.servers[region].server_address[:2]
        assert isinstance(host, str)  # bound to a text address above
        return f"http://{host}:{port}"

    def close(self) -> None:
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


def free_udp_and_tcp_port() -> int:
    """A loopback port free for both UDP and TCP: DNS listens on both."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


class PowerDNS:
    def __init__(self, tmp: Path, zones: dict[str, Path], mmdb: Path) -> None:
        self.port = free_udp_and_tcp_port()
        self.zones = zones
        (tmp / "named.conf").write_text(
            "".join(f'zone "{z}" {{ type master; file "{f}"; }};\n' for z, f in zones.items())
        )
        self.log = tmp / "pdns.log"
        self.proc = spawn(
            [
                "pdns_server",
                "--no-config",
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
                f"--socket-dir={tmp}",
                "--local-address=127.0.0.1",
                f"--local-port={self.port}",
                "--launch=bind,geoip",  # geoip: countryCode() for the LUA records
                f"--bind-config={tmp / 'named.conf'}",
                f"--geoip-database-files=mmdb:{mmdb}",
                "--enable-lua-records=yes",
                "--edns-subnet-processing=yes",
                f"--lua-health-checks-interval={CHECK_INTERVAL_S}",
                # Nothing leaves the machine: no security-status query, no resolver, no cache
                # that would hold an answer past a region's fall.
                "--security-poll-suffix=",
                "--resolver=no",
                "--cache-ttl=0",
                "--query-cache-ttl=0",
                "--negquery-cache-ttl=0",
            ],
            self.log,
        )

    def dig(self, subnet: str, name: str = V4, rtype: str = "A") -> tuple[str, list[str]]:
        """The status and the answers for a client in ``subnet``, as dig prints them."""
        p = subprocess.run(
            [
                "dig",
                "+noall",
                "+comments",
                "+answer",
                "+tries=1",
                "+time=2",
                f"+subnet={subnet}/32",
                "-p",
                str(self.port),
                "@127.0.0.1",
                name,
                rtype,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = re.search(r"status: (\w+)", p.stdout)
        rows = [line.split() for line in p.stdout.splitlines() if line and line[0] != ";"]
        found = sorted(r[4] for r in rows if len(r) == 5 and r[3] == rtype)
        return (status[1] if status else p.stdout.strip() or p.stderr.strip()), found

    def axfr_lua(self, zone: str) -> dict[int, list[str]]:
        """The zone's LUA records as a secondary receives them (dig AXFR): record type -> its
        character-strings. dig knows no LUA type: it prints the RDATA in hex (RFC 3597), the
        type (2 bytes) then each string, its length (1 byte) first."""
        p = subprocess.run(
            ["dig", "+noall", "+answer", "-p", str(self.port), "@127.0.0.1", zone, "AXFR"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        out: dict[int, list[str]] = {}
        for line in p.stdout.splitlines():
            if "TYPE65402" in line:
                data = bytes.fromhex("".join(line.split("\\#")[1].split()[1:]))
                strings, i = [], 2
                while i < len(data):
                    strings.append(data[i + 1 : i + 1 + data[i]].decode())
                    i += 1 + data[i]
                out[int.from_bytes(data[:2], "big")] = strings
        return out


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
            ]
        )
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
        assert pdns.dig(LONDON) == ("NOERROR", [ADDRESSES[EU]])  # others are unaffected
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
