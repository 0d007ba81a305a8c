"""DNS-discovered members of an upstream (pure)."""

from __future__ import annotations

from gateway.config import Upstream
from gateway.routing.members import default_port, expand, member_url


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


def test_ports() -> None:
    assert default_port("https://x") == 443 and default_port("http://x:81") == 81
    assert member_url("http://x/p", "127.0.0.1", 9) == "http://127.0.0.1:9/p"
