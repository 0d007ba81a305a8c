from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.errors import ConfigError
from gateway.fleet.keys import Keys, connect


def test_every_key_shares_the_hash_tag() -> None:
    k = Keys("prod")
    keys = [k.config, k.events, k.observers, k.audit, k.obs("gw-1")]
    assert all(key.startswith("{geogate:prod}:") for key in keys)
    assert len(set(keys)) == len(keys)


def test_urls() -> None:
    assert isinstance(connect("redis://127.0.0.1:6379/0", 1.0), Redis)
    assert isinstance(connect("rediss://h:6380", 1.0), Redis)
    master = connect("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/2", 1.0)
    assert isinstance(master, Redis)
    for bad, msg in [
        ("redis+sentinel://10.0.0.1:26379", "master-name"),
        ("redis+sentinel://nohost/m", "sentinel address"),
        ("http://x", "redis://"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            connect(bad, 1.0)
