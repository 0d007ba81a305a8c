"""The Redis key schema of one deployment, and connecting to Redis.

Every key carries the same hash tag, ``{geogate:<deployment>}``, so on Redis Cluster they all
live in one slot and MULTI/EXEC over them works:

  {geogate:D}:config           hash: doc (JSON: regions, upstreams, residency), version (int)
  {geogate:D}:events           pub/sub channel: the new version after each config change
  {geogate:D}:obs:<observer>   string (JSON), TTL: one worker's view of every upstream, its
                               gateway named inside ("<gateway id>/<worker pid>": a gateway's
                               workers are one vote, gateway.fleet.redis_store._merge)
  {geogate:D}:observers        sorted set: observer -> unix time of its last observation
  {geogate:D}:audit            stream: who, what, before, after, when of operator changes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from gateway import checks
from gateway.checks import redact_url
from gateway.errors import ConfigError


@dataclass(frozen=True)
class Keys:
    deployment: str

    @property
    def tag(self) -> str:
        return f"{{geogate:{self.deployment}}}"

    @property
    def config(self) -> str:
        return f"{self.tag}:config"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def observers(self) -> str:
        return f"{self.tag}:observers"

    @property
    def audit(self) -> str:
        return f"{self.tag}:audit"

    def obs(self, gateway_id: str) -> str:
        return f"{self.tag}:obs:{gateway_id}"


def connect(url: str, timeout_s: float) -> Redis:
    """``redis://`` and ``rediss://`` as redis-py parses them; Sentinel as
    ``redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]``."""
    opts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
    }
    if url.startswith(("redis://", "rediss://", "unix://")):
        return Redis.from_url(url, **opts)
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for hp in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = hp.rpartition(":")
            if not host or not checks.is_decimal(port, 5):
                raise ConfigError(f"config error: redis.url: bad sentinel address {hp!r}")
            hosts.append((host.strip("[]"), int(port)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError("config error: redis.url: a sentinel URL needs /master-name")
        db = int(path[1]) if len(path) > 1 and checks.is_decimal(path[1]) else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, **opts)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(path[0], db=db, password=password, **opts)
        return master
    raise ConfigError(
        f"config error: redis.url {redact_url(url)!r}: use redis://, rediss:// or redis+sentinel://"
    )
