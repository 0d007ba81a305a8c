from __future__ import annotations

import ipaddress

from geodb.clientip import client_ip, is_trusted, parse_networks, stops_short

TRUSTED = parse_networks(["10.0.0.0/8", "::1/128"])


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def test_untrusted_peer_ignores_the_header() -> None:
    assert client_ip("203.0.113.7", ["1.2.3.4"], TRUSTED) == ip("203.0.113.7")


def test_trusted_chain_walked_from_the_right() -> None:
    # client 198.51.100.1 -> proxy 10.0.0.2 -> proxy 10.0.0.3 (peer)
    assert client_ip("10.0.0.3", ["6.6.6.6, 198.51.100.1, 10.0.0.2"], TRUSTED) == ip("198.51.100.1")
    assert client_ip("10.0.0.3", ["6.6.6.6", "198.51.100.1"], TRUSTED) == ip("198.51.100.1")


def test_all_trusted_gives_the_leftmost_and_garbage_stops_the_walk() -> None:
    assert client_ip("10.0.0.3", ["10.0.0.1"], TRUSTED) == ip("10.0.0.1")
    assert client_ip("10.0.0.3", ["198.51.100.1, not-an-ip"], TRUSTED) == ip("10.0.0.3")


def test_address_forms() -> None:
    assert client_ip("::ffff:203.0.113.9", [], TRUSTED) == ip("203.0.113.9")
    assert client_ip("::1", ["[2001:db8::1]:443"], TRUSTED) == ip("2001:db8::1")
    assert client_ip("10.0.0.3", ["198.51.100.1:5000"], TRUSTED) == ip("198.51.100.1")
    assert client_ip(None, ["1.2.3.4"], TRUSTED) is None
    assert is_trusted("10.9.9.9", TRUSTED) and not is_trusted("11.0.0.1", TRUSTED)


def test_parsed_addresses_are_remembered_and_answers_unchanged() -> None:
    from geodb.clientip import _parse

    _parse.cache_clear()
    for _ in range(3):
        assert client_ip("10.0.0.3", ["198.51.100.1:5000"], TRUSTED) == ip("198.51.100.1")
        assert client_ip("not-an-ip", [], TRUSTED) is None  # a failure is remembered too
    info = _parse.cache_info()
    assert info.misses == 3 and info.hits == 6  # each string parsed once
    assert info.maxsize is not None and info.maxsize > 0  # bounded: client strings are input


def test_one_normal_form_mapped_unmapped_and_scoped_refused() -> None:
    import pytest

    from geodb.clientip import normalise, parse_ip

    assert parse_ip("::ffff:203.0.113.9") == ip("203.0.113.9")
    assert normalise(ip("::ffff:198.51.100.1")) == ip("198.51.100.1")
    assert parse_ip("2001:db8::1") == ip("2001:db8::1")
    with pytest.raises(ValueError, match="scope"):
        parse_ip("fe80::1%eth0")
    # A trusted proxy's hop with a zone id is no client: the walk stops at the last good hop.
    assert client_ip("10.0.0.3", ["fe80::1%eth0"], TRUSTED) == ip("10.0.0.3")
    assert client_ip("10.0.0.3", ["[fe80::1%eth0]:443"], TRUSTED) == ip("10.0.0.3")
    assert client_ip("fe80::1%eth0", [], TRUSTED) is None


def test_a_trusted_network_in_ipv4_mapped_form_matches_ipv4_peers() -> None:
    # Peers are compared as IPv4 (normalise): written ::ffff:..., a network could never hold
    # one, and the operator's setting silently did nothing.
    nets = parse_networks(["::ffff:127.0.0.21/128", "::ffff:10.0.0.0/104", "::1"])
    assert [str(n) for n in nets] == ["127.0.0.21/32", "10.0.0.0/8", "::1/128"]
    assert str(client_ip("127.0.0.21", ["127.0.0.2"], nets)) == "127.0.0.2"
    assert str(client_ip("::ffff:10.1.2.3", ["127.0.0.3"], nets)) == "127.0.0.3"


def test_a_chain_that_stops_at_an_untrusted_proxy_stops_short() -> None:
    # An edge gateway (10.0.0.5) behind a trusted balancer (10.1.0.1), itself not trusted: the
    # client found is the edge gateway, not the first address the chain names.
    chain = ["203.0.113.9, 10.0.0.5"]
    lb = parse_networks(["10.1.0.0/16"])
    assert stops_short(client_ip("10.1.0.1", chain, lb), chain)
    both = parse_networks(["10.0.0.0/8"])
    assert not stops_short(client_ip("10.1.0.1", chain, both), chain)
    assert stops_short(client_ip("10.0.0.5", ["203.0.113.9"], ()), ["203.0.113.9"])  # the peer
    assert not stops_short(client_ip("10.0.0.5", [], ()), [])  # nothing named: nothing to miss
