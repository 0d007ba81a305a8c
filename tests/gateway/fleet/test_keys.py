from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.errors import ConfigError
from gateway.fleet.keys import Keys, connect, url_problem


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


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/0?db=x", "Invalid value for 'db' in connection URL"),
        ("redis://127.0.0.1:1?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis://127.0.0.1:1?ssl_cert_reqs=none", "?ssl_cert_reqs= is for rediss:// (TLS)"),
        ("rediss://127.0.0.1:1?ssl_cert_reqs=maybe", "Invalid SSL Certificate Requirements"),
        ("redis://127.0.0.1:1?sockettimeout=1", "?sockettimeout= is no option of redis-py's"),
        ("redis://127.0.0.1:1?protocol=9", "protocol must be either 2 or 3"),
        ("rediss://127.0.0.1:1?ssl_ca_certs=/no/such/ca.pem", "No such file or directory"),
        ("unix:///run/redis.sock?db=x", "Invalid value for 'db'"),
    ],
)
def test_what_redis_py_refuses_in_a_url_is_said_before_any_connection(
    url: str, message: str
) -> None:
    """The URL's query, read by redis-py itself: these passed the config check and then
    failed on the first connection (the sync task died; the admin API answered a traceback)."""
    with pytest.raises(ConfigError) as info:
        connect(url, 1.0)
    assert str(info.value).startswith(f"config error: redis.url {url!r}: ")
    assert message in str(info.value)


def test_what_redis_py_takes_passes(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    for url in [
        "redis://127.0.0.1:6379/2?socket_timeout=0.5",
        f"rediss://127.0.0.1:6380?ssl_cert_reqs=none&ssl_ca_certs={ca}",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://127.0.0.1:26379/m",
    ]:
        assert url_problem(url) is None, url
    assert url_problem("redis://:hunter2@h:1?db=x") == "Invalid value for 'db' in connection URL"
