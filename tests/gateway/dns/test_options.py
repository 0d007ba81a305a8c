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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zone": "exa mple.com", "name": "api"}, "zone 'exa mple.com' is not a domain name"),
        ({"zone": "example.com", "name": "-api"}, "name '-api' is not a domain name"),
        ({"zone": "", "name": "api"}, "zone '' is not a domain name"),
        ({"zone": "example.com", "name": "api", "ttl": 0}, "ttl 0 must be at least 1 s"),
        (
            {"zone": "example.com", "name": "api", "check_interval_s": 0},
            "check interval 0 must be at least 1 s",
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
