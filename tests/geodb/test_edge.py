"""The edge's signed client header: believed only when signed with a known key, in time, for
this host; every other header is ignored with the reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from geodb.edge import EdgeResult, sign, verify
from geodb.location import LocationSource

SECRET = "s" * 32
KEYS = {"k1": SECRET}
NOW = 1_767_225_600.0
AUD = ("eu.api.example.com",)


def fields(**changes: str) -> list[tuple[str, str]]:
    base = {
        "kid": "k1",
        "ts": str(int(NOW)),
        "aud": "eu.api.example.com",
        "ip": "203.0.113.7",
        "lat": "51.5072",
        "lon": "-0.1276",
        "country": "gb",
        "continent": "EU",
        "city": "São Paulo; or =not",
        "colo": "LHR",
    }
    base.update(changes)
    return [(k, v) for k, v in base.items() if v]


def check(value: str, keys: dict[str, str] = KEYS, now: float = NOW) -> EdgeResult:
    return verify(value, keys, AUD, now, 30.0).result


def test_a_signed_header_gives_the_client_and_its_location() -> None:
    v = verify(sign(SECRET, fields()), KEYS, AUD, NOW + 29, 30.0)
    assert v.result is EdgeResult.OK and v.client is not None
    assert v.client.ip == ipaddress.ip_address("203.0.113.7")
    loc = v.client.location
    assert (loc.latitude, loc.longitude, loc.country, loc.continent) == (
        51.5072,
        -0.1276,
        "GB",
        "EU",
    )
    assert loc.city == "São Paulo; or =not"  # percent-encoded on the wire, decoded here
    assert loc.source is LocationSource.EDGE
    assert (v.client.key_id, v.client.colo) == ("k1", "LHR")


def test_ipv6_and_the_optional_fields_left_out() -> None:
    value = sign(SECRET, fields(ip="2001:db8::7", country="", continent="", city="", colo=""))
    v = verify(value, KEYS, AUD, NOW, 30.0)
    assert v.client is not None and v.client.ip.version == 6
    assert (v.client.location.country, v.client.location.city, v.client.colo) == (None, None, None)


def test_audience_is_compared_without_case() -> None:
    assert check(sign(SECRET, fields(aud="EU.api.Example.com"))) is EdgeResult.OK


def test_keys_rotate_by_id() -> None:
    old, new = "o" * 32, "n" * 32
    both = {"k1": old, "k2": new}
    assert check(sign(old, fields(kid="k1")), both) is EdgeResult.OK
    assert check(sign(new, fields(kid="k2")), both) is EdgeResult.OK
    assert check(sign(old, fields(kid="k1")), {"k2": new}) is EdgeResult.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("change", "result"),
    [
        (lambda v: v.replace("ip=203.0.113.7", "ip=203.0.113.8"), EdgeResult.BAD_SIGNATURE),
        (lambda v: v.replace("lat=51.5072", "lat=1.3521"), EdgeResult.BAD_SIGNATURE),
        (lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"), EdgeResult.BAD_SIGNATURE),
        (lambda v: v.rsplit(";sig=", 1)[0], EdgeResult.MALFORMED),  # unsigned
        (lambda v: v.replace("v1;", "v2;", 1), EdgeResult.MALFORMED),
        (lambda v: "", EdgeResult.MALFORMED),
        (lambda v: v.replace(";colo=LHR", ";colo=LHR;colo=CDG"), EdgeResult.MALFORMED),
    ],
    ids=["ip", "location", "signature", "unsigned", "version", "empty", "duplicate"],
)
def test_tampered_or_unsigned_headers_are_not_believed(
    change: Callable[[str], str], result: EdgeResult
) -> None:
    assert check(change(sign(SECRET, fields()))) is result


def test_signed_with_another_secret() -> None:
    assert check(sign("x" * 32, fields())) is EdgeResult.BAD_SIGNATURE


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_outside_the_clock_skew_window_it_is_expired(skew: float) -> None:
    assert check(sign(SECRET, fields()), now=NOW + skew) is EdgeResult.EXPIRED
    assert check(sign(SECRET, fields()), now=NOW + skew / abs(skew) * 30) is EdgeResult.OK


def test_replayed_at_another_host_it_is_the_wrong_audience() -> None:
    value = sign(SECRET, fields(aud="us.api.example.com"))
    assert check(value) is EdgeResult.WRONG_AUDIENCE
    assert verify(value, KEYS, (), NOW, 30.0).result is EdgeResult.WRONG_AUDIENCE


def test_without_keys_nothing_is_believed() -> None:
    assert check(sign(SECRET, fields()), keys={}) is EdgeResult.NO_KEYS


@pytest.mark.parametrize(
    "bad", [{"ip": "not-an-ip"}, {"lat": "91"}, {"lon": "nan"}, {"ts": "soon"}]
)
def test_signed_but_unreadable_values_are_malformed(bad: dict[str, str]) -> None:
    assert check(sign(SECRET, fields(**bad))) is EdgeResult.MALFORMED


def test_sign_refuses_values_that_would_break_the_format() -> None:
    with pytest.raises(ValueError, match="colo"):
        sign(SECRET, fields(colo="L;HR"))


def test_the_signed_ip_is_normalised_and_a_scoped_one_is_malformed() -> None:
    v = verify(sign(SECRET, fields(ip="::ffff:203.0.113.7")), KEYS, AUD, NOW, 30.0)
    assert v.client is not None and v.client.ip == ipaddress.ip_address("203.0.113.7")
    assert check(sign(SECRET, fields(ip="fe80::1%eth0"))) is EdgeResult.MALFORMED


def test_a_country_without_continent_gets_the_countrys() -> None:
    v = verify(sign(SECRET, fields(country="jp", continent="")), KEYS, AUD, NOW, 30.0)
    assert v.client is not None
    assert (v.client.location.country, v.client.location.continent) == ("JP", "AS")


@pytest.mark.parametrize("code", ["T1", "XX", "A1", "ZZ"])
def test_a_country_code_that_is_none_is_dropped_not_believed(code: str) -> None:
    # Cloudflare says T1 for Tor and XX for unknown: taken as a country it matched no
    # residency rule, so the client was confined to nothing.
    v = verify(sign(SECRET, fields(country=code, continent=code)), KEYS, AUD, NOW, 30.0)
    assert v.client is not None
    assert (v.client.location.country, v.client.location.continent) == (None, None)
    v = verify(sign(SECRET, fields(country="xk", continent="EU")), KEYS, AUD, NOW, 30.0)
    assert v.client is not None and v.client.location.country == "XK"  # MaxMind's, not ISO's
