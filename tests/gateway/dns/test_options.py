"""The export's arguments: names made fully qualified, bad ones refused in words."""

from __future__ import annotations

import re

import pytest

from gateway.dns.options import OptionError, domain, next_serial, options


def test_names_are_fully_qualified_and_relative_to_the_zone() -> None:
    o = options("Example.COM", "api")
    assert (o.zone, o.name, o.fqdn, o.ns) == (
        "example.com.",
        "api",
        "api.example.com.",
        ("ns1.example.com.",),
    )
    assert options("example.com.", "api.example.com").name == "api"
    assert options("example.com", "@").fqdn == "example.com."
    assert options("example.com", "api", nameservers=("a.ns.example.net.",)).ns == (
        "a.ns.example.net.",
    )


def test_nameservers_are_relative_to_the_zone_as_the_name_is() -> None:
    """As a zone file reads them, and as --name: ns2 was ns2. at the root."""
    ns = ("ns2", "ns3.example.com", "NS4.example.com.", "a.ns.example.net.")
    assert options("example.com", "api", nameservers=ns).ns == (
        "ns2.example.com.",
        "ns3.example.com.",
        "ns4.example.com.",
        "a.ns.example.net.",
    )
    # A dotted name outside the zone without its final dot: a host (as an earlier release
    # read it) or a name under the zone (as a zone file reads it)? Refused, both ways said.
    for dotted in ("ns1.example.net", "ns.eu"):
        with pytest.raises(OptionError, match=f"nameserver '{dotted}' is ambiguous: end it"):
            options("example.com", "api", nameservers=(dotted,))


L63 = "a" * 63


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # An address as a name server: NS names a host (pdns took "192.0.2.53." as a name)
        ({"nameservers": ("192.0.2.53",)}, "nameserver '192.0.2.53' is an address"),
        ({"nameservers": ("2001:db8::53",)}, "nameserver '2001:db8::53' is an address"),
        # The same one twice, however written
        (
            {"nameservers": ("ns2", "ns2.example.com.")},
            "nameserver ns2.example.com. is given twice",
        ),
        # Over 255 bytes in full: pdns refused the whole zone ("name too long to append")
        ({"name": f"{L63}.{L63}.{L63}.{L63}"}, "is 257 bytes as DNS sends it, over the 255"),
        ({"name": f"{L63}.{L63}.{L63}.{'a' * 50}"}, "name aaa"),
        ({"zone": f"{L63}.{L63}.{L63}.{'a' * 60}"}, "shorten --name or --zone"),
        (  # the zone at its apex fits, its name server under it does not
            {"zone": f"{L63}.{L63}.{L63}.{'a' * 58}", "name": "@", "nameservers": ("ns12",)},
            "shorten --ns or --zone",
        ),
    ],
)
def test_names_dns_cannot_hold_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"zone": "example.com", "name": "api", **kwargs}
    with pytest.raises(OptionError, match=message):
        options(**args)  # type: ignore[arg-type]


def test_a_name_of_255_bytes_is_a_name() -> None:
    """The bound is inclusive: 253 characters and the final dot, 255 bytes on the wire."""
    zone = f"{L63}.{L63}.{L63}.{'a' * 49}"  # 241 characters
    o = options(zone, "a" * 11)  # 253 in all
    assert len(o.fqdn) == 254


@pytest.mark.parametrize(
    ("now", "previous", "serial"),
    [
        (1000, None, 1000),  # no zone before: the time
        (1000, 999, 1000),
        (1000, 1000, 1001),  # two exports in one second: one more, not the same
        (1000, 5000, 5001),  # a clock set back, or a YYYYMMDDnn serial: still one more
        (2**32 - 5, 2**32 - 1, 0),  # serial arithmetic: 0 follows 2^32 - 1 (RFC 1982)
        (1000, 2**32 - 1, 1000),  # and 1000 is newer than 2^32 - 1
    ],
)
def test_the_serial_grows_past_the_zone_replaced(
    now: int, previous: int | None, serial: int
) -> None:
    assert next_serial(now, previous) == serial


@pytest.mark.parametrize("name", ["example.com", "example.com.", "Example.COM", "@"])
def test_the_zone_itself_is_the_apex(name: str) -> None:
    """Not example.com.example.com.: the zone named as the name is its apex."""
    o = options("example.com", name)
    assert (o.name, o.fqdn) == ("@", "example.com.")


def test_names_under_the_zone() -> None:
    assert options("example.com", "api.eu").fqdn == "api.eu.example.com."  # relative
    assert options("example.com", "api.example.com.").name == "api"


def test_bounds_are_inclusive() -> None:
    o = options("example.com", "api", ttl=2147483647, check_interval_s=3600, check_timeout_s=60)
    assert (o.ttl, o.check_interval_s, o.check_timeout_s) == (2147483647, 3600, 60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zone": "exa mple.com", "name": "api"}, "zone 'exa mple.com' is not a domain name"),
        ({"zone": "example.com", "name": "-api"}, "name '-api' is not a domain name"),
        ({"zone": "", "name": "api"}, "zone '' is not a domain name"),
        ({"zone": "example.com", "name": "api", "ttl": 0}, "ttl 0 must be at least 1 s"),
        # The geo record on the nameserver's own name: NS would point at the geo answers
        ({"zone": "example.com", "name": "ns1"}, "name ns1.example.com. is a nameserver"),
        (
            {"zone": "example.com", "name": "api", "nameservers": ("api.example.com",)},
            r"name api.example.com. is a nameserver of the zone \(--ns\)",
        ),
        (
            {"zone": "example.com", "name": "api", "check_interval_s": 0},
            "check interval 0 must be at least 1 s",
        ),
        # RFC 2181's largest TTL; PowerDNS answers SERVFAIL for the whole zone over one above.
        (
            {"zone": "example.com", "name": "api", "ttl": 2147483648},
            "ttl 2147483648 must be at most 2147483647 s",
        ),
        (
            {"zone": "example.com", "name": "api", "ttl": 99999999999},
            "ttl 99999999999 must be at most 2147483647 s",
        ),
        (
            {"zone": "example.com", "name": "api", "check_interval_s": 5000},
            "check interval 5000 must be at most 3600 s",
        ),
        (
            {"zone": "example.com", "name": "api", "check_timeout_s": 2000},
            "check timeout 2000 must be at most 60 s",
        ),
        (
            {"zone": "example.com", "name": "api", "check_timeout_s": 0},
            "check timeout 0 must be at least 1 s",
        ),
        # Fully qualified and outside the zone: it would have become api.example.org.example.com.
        (
            {"zone": "example.com", "name": "api.example.org."},
            "name 'api.example.org.' is not in zone example.com.",
        ),
        (
            {"zone": "example.com", "name": "xexample.com."},
            "name 'xexample.com.' is not in zone example.com.",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options(**kwargs)  # type: ignore[arg-type]


def test_a_name_server_in_the_zone_takes_its_addresses() -> None:
    o = options(
        "example.com", "api", nameservers=("ns1=192.0.2.53,[2001:DB8::53]", "ns.example.net.")
    )
    assert o.ns == ("ns1.example.com.", "ns.example.net.")
    assert o.glue == (("ns1.example.com.", "192.0.2.53"), ("ns1.example.com.", "2001:db8::53"))
    assert o.unaddressed == ()  # ns.example.net.'s own zone gives its address
    # The default ns1, and one named without addresses, would have none in the zone.
    assert options("example.com", "api").unaddressed == ("ns1.example.com.",)
    assert options("example.com", "api", nameservers=("ns2", "ns3=192.0.2.3")).unaddressed == (
        "ns2.example.com.",
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("ns.example.net.=192.0.2.53", "nameserver ns.example.net. is not in zone example.com."),
        ("ns1=ns.example.net", "nameserver ns1.example.com.: 'ns.example.net' is not an IP"),
        ("ns1=", "nameserver ns1.example.com.: '' is not an IP address"),
        ("ns1=192.0.2.53,", "nameserver ns1.example.com.: '' is not an IP address"),
        ("ns1=::ffff:192.0.2.53", "give the IPv4 address '192.0.2.53'"),
        ("ns1=0.0.0.0", "'0.0.0.0' is no address a client could reach"),
        ("ns1=::", "'::' is no address a client could reach"),
        ("ns1=ff02::1", "'ff02::1' is a multicast address"),
        ("ns1=fe80::1", "'fe80::1' is a link-local address"),
        ("ns1=169.254.0.53", "'169.254.0.53' is a link-local address"),
        ("ns1=255.255.255.255", "'255.255.255.255' is the broadcast address"),
        ("ns1=240.0.0.1", "'240.0.0.1' is a reserved (240.0.0.0/4) address"),
        ("ns1=fe80::1%eth0", "'fe80::1%eth0' has a zone (%eth0): give the address alone"),
        ("ns1=192.0.2.53,192.0.2.053", "is not an IP address"),  # octal-looking: refused
        ("ns1=192.0.2.53,192.0.2.53", "address 192.0.2.53 is given twice"),
        ("=192.0.2.53", "nameserver '' is not a domain name"),
    ],
)
def test_a_name_servers_bad_address_is_refused(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        options("example.com", "api", nameservers=(given,))


def test_domain_labels() -> None:
    assert domain("_acme.example.com", "name") == "_acme.example.com."
    with pytest.raises(ValueError):
        domain("a..b", "name")
