"""Everything one gateway process holds while it runs, built once at start-up, and the one
way a request is located and routed (used by the proxy, ``/explain`` and ``geodb lookup``)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.fleet.memory import MemoryStateStore
from gateway.fleet.redis_store import RedisStateStore
from gateway.fleet.store import StateStore
from gateway.metrics import Metrics
from gateway.routing.model import Decision, RequestFacts
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.router import route
from geodb.clientip import IPAddress, IPNetwork, client_ip, is_trusted, parse_networks
from geodb.errors import DatabaseError
from geodb.location import Location, LocationSource
from geodb.reader import DefaultSource, GeoIPSource, GeoSource

log = logging.getLogger("geogate")
access_log = logging.getLogger("geogate.access")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """One readable line per event on stderr (idempotent: worker processes call it too)."""
    root = logging.getLogger("geogate")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
    logging.getLogger("geodb").handlers = root.handlers
    logging.getLogger("geodb").setLevel(level)
    if not access_log.handlers:
        # The access line is a JSON object and nothing else, as log pipelines read it.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.propagate = False


def default_location(config: Config) -> Location:
    d = config.geoip.default
    return Location(
        d.latitude, d.longitude, d.country, d.continent, None, None, LocationSource.DEFAULT
    )


def open_geo(config: Config) -> GeoSource:
    if config.geoip.database is None:
        return DefaultSource(default_location(config))
    try:
        return GeoIPSource(config.geoip.database, default_location(config))
    except DatabaseError as exc:
        raise ConfigError(f"config error: geoip.database: {exc}") from None


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a request comes from and where it goes."""

    client: IPAddress | None  # the resolved client (peer, or trusted-proxy chain)
    peer_trusted: bool  # the socket peer is a trusted proxy
    location: Location
    decision: Decision


@dataclass
class Runtime:
    store: StateStore  # the one owner of the routing config: read config and policy there
    geo: GeoSource
    metrics: Metrics
    budget: RetryBudget
    trusted: tuple[IPNetwork, ...]
    rng: random.Random = field(default_factory=random.Random)
    session: aiohttp.ClientSession | None = None
    draining: bool = False

    @classmethod
    def build(cls, config: Config, store: StateStore, geo: GeoSource) -> Runtime:
        r = config.retry
        return cls(
            store=store,
            geo=geo,
            metrics=Metrics(),
            budget=RetryBudget(r.budget_ratio, r.budget_min_per_s, r.budget_window_s),
            trusted=parse_networks(config.gateway.trusted_proxies),
        )

    @property
    def config(self) -> Config:
        return self.store.config

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the upstream client session is not started")
        return self.session

    def locate_and_route(
        self, peer: str | None, forwarded_for: Sequence[str], model: str, now: float
    ) -> Routed:
        """The client behind ``peer`` (trusted proxies' X-Forwarded-For walked from the
        right), its location, and the routing decision for ``model``."""
        ip = client_ip(peer, forwarded_for, self.trusted)
        return self.route_ip(ip, peer is not None and is_trusted(peer, self.trusted), model, now)

    def route_ip(self, ip: IPAddress | None, peer_trusted: bool, model: str, now: float) -> Routed:
        loc = self.geo.locate(ip)
        decision = route(
            RequestFacts(model, loc), self.store.snapshot(now), self.store.policy, self.rng
        )
        return Routed(ip, peer_trusted, loc, decision)


def build_runtime(config: Config) -> Runtime:
    """Choose the store (Redis when configured) and open GeoIP: a bad file fails here, in one
    line, before any worker starts."""
    store: StateStore = RedisStateStore(config) if config.redis.url else MemoryStateStore(config)
    return Runtime.build(config, store, open_geo(config))
