"""The export's arguments: names made fully qualified, bad ones refused in words."""

from __future__ import annotations

import pytest

from gateway.dns.options import domain, options


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
    assert options("example.com", "api", nameservers=("a.ns.example.net",)).ns == (
        "a.ns.example.net.",
    )


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


def test_domain_labels() -> None:
    assert domain("_acme.example.com", "name") == "_acme.example.com."
    with pytest.raises(ValueError):
        domain("a..b", "name")
