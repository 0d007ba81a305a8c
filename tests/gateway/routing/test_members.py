"""DNS-discovered members of an upstream (pure)."""

from __future__ import annotations

import itertools

import pytest

from gateway import defaults as d
from gateway.config import Upstream
from gateway.routing.members import default_port, expand, member_url, split_member, srv_shares


def test_discovery_upstreams_become_one_member_per_address() -> None:
    static = Upstream(id="s", region="eu", url="http://127.0.0.1:1", models=("m",))
    named = Upstream(
        id="d", region="eu", url="http://pool.local:8000/base", models=("m",), discovery="dns"
    )
    assert expand([static, named], {}) == (static,)  # unresolved: no members yet
    got = expand([static, named], {"d": [("127.0.0.3", 8000), ("::1", 8000)]})
    assert [u.id for u in got] == ["s", "d@127.0.0.3:8000", "d@::1:8000"]
    assert [u.url for u in got[1:]] == ["http://127.0.0.3:8000/base", "http://[::1]:8000/base"]
    assert all(u.discovery == "none" for u in got)


def test_srv_weights_become_shares_of_the_upstreams_weight() -> None:
    """RFC 2782's weights: a target in proportion to its weight, split over its addresses;
    the shares average 1, so the upstream's weight is kept; 0 is a very small share unless
    all are 0."""
    a, b, c = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)
    assert srv_shares([(3, [a]), (1, [b])]) == {a: 1.5, b: 0.5}
    # a target of weight 2 with two addresses: 1 each, as much as the weight-1 target's one
    assert srv_shares([(2, [a, b]), (1, [c])]) == {}  # equal shares: none
    assert srv_shares([(1, [a]), (1, [a]), (3, [b])]) == {a: 0.8, b: 1.2}  # named twice: both
    # weight 0 beside weighted ones: RFC 2782's "very small chance", not the router's standby
    assert srv_shares([(5, [a]), (0, [b])]) == {a: 2.0, b: d.SRV_ZERO_WEIGHT_SHARE}
    assert srv_shares([(0, [a]), (0, [b])]) == {}  # no weighting at all: equal
    # a DNS server that rotates its records does not change the shares, to the last bit
    records = [(7, [a, b, c]), (3, [b]), (5, [c, a]), (1, [a])]
    assert len({tuple(sorted(srv_shares(p).items())) for p in itertools.permutations(records)}) == 1
    named = Upstream(
        id="d", region="eu", url="http://pool.local", models=("m",), discovery="dns", weight=2
    )
    got = expand([named], {"d": [a, b, c]}, {"d": {a: 1.5, b: 0.5}})
    assert [(u.id, u.weight) for u in got] == [
        ("d@10.0.0.1:80", 3.0),
        ("d@10.0.0.2:80", 1.0),
        ("d@10.0.0.3:80", 2.0),  # no share given: its upstream's weight
    ]


def test_ports() -> None:
    assert default_port("https://x") == 443 and default_port("http://x:81") == 81
    assert member_url("http://x/p", "127.0.0.1", 9) == "http://127.0.0.1:9/p"


def test_a_member_keeps_its_upstreams_credentials_and_an_https_one_its_name() -> None:
    """A member is dialled at its address; an https one still names its upstream's host (the
    certificate's name, the Host header), and any member keeps the upstream's user:password."""
    https = member_url("https://user:pw@llm.internal/v1", "10.0.0.5", 443)
    assert https == "https://user:pw@llm.internal|10.0.0.5:443/v1"
    assert split_member(https + "/health") == (
        "https://user:pw@llm.internal/v1/health",
        ("10.0.0.5", 443),
    )
    six = member_url("https://llm.internal:8443", "fd00::5", 8443)
    assert split_member(six) == ("https://llm.internal:8443", ("fd00::5", 8443))
    assert member_url("http://u:p@x:8000/p", "10.0.0.5", 8000) == "http://u:p@10.0.0.5:8000/p"


def test_a_url_that_is_no_members_is_dialled_at_its_own_host() -> None:
    for url in ("http://127.0.0.3:8000/base", "https://u:p|w@llm.internal", "https://h/a|b"):
        assert split_member(url) == (url, None)
    with pytest.raises(ValueError, match="not a member's address"):
        split_member("https://llm.internal|10.0.0.5")


def test_a_v6_members_url_is_split_without_urlsplit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Newer CPythons' urlsplit refuses text before a "[" in the host ("No data is allowed
    # before a bracket"), which "name|[fd00::5]:443" has: splitting must not depend on it.
    import urllib.parse

    from gateway.routing import members as members_module

    real = urllib.parse.urlsplit

    def strict(url: str, *args: object, **kw: object) -> urllib.parse.SplitResult:
        netloc = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
        if "[" in netloc and not netloc.startswith("["):
            raise ValueError("No data is allowed before a bracket")
        return real(url)

    monkeypatch.setattr(members_module, "urlsplit", strict)
    url = member_url("https://llm.internal:8443/v1", "fd00::5", 8443)
    assert split_member(url + "/health") == (
        "https://llm.internal:8443/v1/health",
        ("fd00::5", 8443),
    )
