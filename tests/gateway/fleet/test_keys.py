from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

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
    # Parsed only, never connected: the sentinels' addresses are not contacted here.
    master = connect("redis+sentinel://:p%40ss@127.0.0.7:26379,[::1]:26380/mymaster/2", 1.0)
    pool = master.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("mymaster", 2)
    assert pool.connection_kwargs["password"] == "p@ss"  # percent-decoded
    hosts = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(h["host"], h["port"]) for h in hosts] == [("127.0.0.7", 26379), ("::1", 26380)]
    assert connect("redis+sentinel://h:1/m", 1.0).connection_pool.connection_kwargs["db"] == 0
    for bad, msg in [
        ("redis+sentinel://10.0.0.1:26379", "master-name"),
        ("redis+sentinel://nohost/m", "sentinel address"),
        ("http://x", "redis://"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            connect(bad, 1.0)
