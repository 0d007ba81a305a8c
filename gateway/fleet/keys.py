"""The Redis key schema of one deployment, and connecting to Redis.

Every key carries the same hash tag, ``{geogate:<deployment>}``, so on Redis Cluster they all
live in one slot and MULTI/EXEC over them works:

  {geogate:D}:config           hash: doc (JSON: regions, upstreams, residency), version (int),
                               digest (of doc) and changed_at (unix time of the change that
                               made it, Redis's clock): beside doc, never in it (fleet.settle)
  {geogate:D}:events           pub/sub channel: the new version after each config change
  {geogate:D}:obs:<observer>   string (JSON), TTL: one worker's view of every upstream, its
                               gateway and config_version named inside ("<gateway id>/<worker
                               pid>": a gateway's workers are one vote, fleet.observations)
  {geogate:D}:observers        sorted set: observer -> Redis's time of its last observation
  {geogate:D}:audit            stream: who, what, before, after, when of operator changes
  {geogate:D}:sessions-ended   sorted set: dashboard session id -> its expiry (unix time),
                               for each logout (fleet.sessions)
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from gateway import checks
from gateway.checks import redact_url
from gateway.errors import ConfigError

# Set by ``geogate gateway`` (gateway.server) to its own pid before its workers start: they
# are one gateway, so one observer with one vote, not one per worker.
ENV_GATEWAY_PID = "_GEOGATE_GATEWAY_PID"  # not GEOGATE_: that prefix is a config override


def default_gateway_id() -> str:
    """hostname-pid of the gateway: of the ``geogate gateway`` process that forked this worker,
    else of this process."""
    return f"{socket.gethostname()}-{os.environ.get(ENV_GATEWAY_PID) or os.getpid()}"


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

    @property
    def ended_sessions(self) -> str:
        return f"{self.tag}:sessions-ended"

    def obs(self, gateway_id: str) -> str:
        return f"{self.tag}:obs:{gateway_id}"


# redis-py's URL options that name a file: read only when a TLS connection is first made.
URL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def check_url(url: str) -> None:
    """A ConfigError unless redis-py takes ``url``'s options (``url_problem``): said at
    start-up (the gateway's preflight builds the store, before any worker), not on the first
    connection, where it killed the sync task and answered admin requests with a traceback."""
    if why := url_problem(url):
        raise ConfigError(f"config error: redis.url {redact_url(url)!r}: {why}")


def url_problem(url: str) -> str | None:
    """What redis-py refuses in ``url``'s options, read by its own parser and a connection
    built without I/O (what the first command builds): a bad ?db= or ?socket_timeout=, an
    option of rediss:// on redis://, a CA file not there. None: it takes them."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None  # Sentinel's is parsed by connect(); no redis-py URL
    try:
        pool = ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:  # "... got an unexpected keyword argument 'ssl_cert_reqs'"
        found = re.search(r"argument '([^']+)'", str(exc))
        name = found.group(1) if found else "?"
        if name.startswith("ssl_"):
            return f"?{name}= is for rediss:// (TLS) URLs only"
        return f"?{name}= is no option of redis-py's (a typo?)"
    except (ValueError, RedisError) as exc:  # "Invalid value for 'db' in connection URL."
        return str(exc).rstrip(".")
    for key in URL_FILES:
        path = pool.connection_kwargs.get(key)
        if isinstance(path, str) and (unread := checks.unreadable(Path(path))):
            return f"?{key}={path}: {unread}"
    return None


def connect(url: str, timeout_s: float) -> Redis:
    """``redis://`` and ``rediss://`` as redis-py parses them; Sentinel as
    ``redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]``."""
    opts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
    }
    if url.startswith(("redis://", "rediss://", "unix://")):
        check_url(url)
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
