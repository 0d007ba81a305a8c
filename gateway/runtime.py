"""Everything one gateway process holds while it runs, built once at start-up, and the one
way a request is located and routed (used by the proxy, ``/explain`` and ``geodb lookup``)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway import defaults as d
from gateway.client import Client
from gateway.config import Config
from gateway.config_ops import LogSection
from gateway.errors import ConfigError
from gateway.fleet.memory import MemoryStateStore
from gateway.fleet.redis_store import RedisStateStore
from gateway.fleet.store import StateStore
from gateway.logs import BatchingStreamHandler, RepeatLimit, formatters
from gateway.metrics import Metrics
from gateway.routing.memo import RankMemo
from gateway.routing.model import Decision, RequestFacts
from gateway.routing.retry_budget import RetryBudget
from gateway.routing.steering import preferred_region
from gateway.traffic import Traffic
from geodb.clientip import (
    IPAddress,
    IPNetwork,
    client_ip,
    is_trusted,
    parse_networks,
    stops_short,
)
from geodb.countries import continent_of, place
from geodb.edge import EdgeClient, verify
from geodb.errors import DatabaseError
from geodb.location import Location, LocationSource
from geodb.reader import DefaultSource, GeoIPSource, GeoSource

log = logging.getLogger("geogate")
access_log = logging.getLogger("geogate.access")


def setup_logging(section: LogSection | None = None) -> None:
    """One line per event on stderr, in ``section``'s format and level (the defaults before
    the config is read). Idempotent: called again once the config is read, and in workers."""
    section = section or LogSection()
    events, access = formatters(section.format)
    root = logging.getLogger("geogate")
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.propagate = False
    for handler in root.handlers:
        handler.setFormatter(events)
        for old in [f for f in handler.filters if isinstance(f, RepeatLimit)]:
            handler.removeFilter(old)  # called again: the config's limit replaces the default
        handler.addFilter(RepeatLimit(section.max_repeats, d.LOG_REPEAT_WINDOW_S))
    root.setLevel(section.level.upper())
    logging.getLogger("geodb").handlers = root.handlers
    logging.getLogger("geodb").setLevel(section.level.upper())
    # uvicorn's own lines (a failed accept, a lifespan error) in the gateway's format; its
    # start-up chatter (INFO) stays out, as the gateway logs its own. A malformed or HTTP/2
    # request is gateway.h1's line, logged through ``log``.
    server = logging.getLogger("uvicorn")
    server.handlers, server.propagate = root.handlers, False
    server.setLevel(max(logging.WARNING, root.level))
    if not access_log.handlers:
        access_log.addHandler(BatchingStreamHandler(d.ACCESS_LOG_MAX_LINES))
        access_log.propagate = False
    for handler in access_log.handlers:
        handler.setFormatter(access)
    # log.level is the events': the access log is on or off by server.access_log alone.
    access_log.setLevel(logging.INFO)


def default_location(config: Config) -> Location:
    d = config.geoip.default
    country, continent = place(d.country, d.continent)  # a country alone: its continent
    return Location(d.latitude, d.longitude, country, continent, None, None, LocationSource.DEFAULT)


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
    # A regional gateway's hint: the region this client should enter (routing.steering).
    preferred_region: str | None = None
    # The client as text, made once: the upstream's forwarding headers and the access line
    # both take it, and str() of an address is not free.
    client_text: str | None = field(init=False)

    def __post_init__(self) -> None:
        text = None if self.client is None else str(self.client)
        object.__setattr__(self, "client_text", text)  # frozen: set once, here


@dataclass
class Runtime:
    store: StateStore  # the one owner of the routing config: read config and policy there
    geo: GeoSource
    metrics: Metrics
    budget: RetryBudget
    trusted: tuple[IPNetwork, ...]
    rng: random.Random = field(default_factory=random.Random)
    session: Client | None = None
    draining: bool = False
    traffic: Traffic = field(default_factory=Traffic)  # what was served, for the dashboard
    # Rankings of the current snapshot, shared by requests with the same model, residency
    # rule and (origin client) place: only the choice within the band is made per request.
    ranks: RankMemo = field(default_factory=RankMemo)
    # Requests this worker has proxied (counted as they are routed): the load poller slows
    # down only over a round in which this did not move (gateway.watch.load_poller). /route,
    # /explain and the CLI's route do not count: they send nothing.
    proxied: int = 0
    hop_warned_at: float = -math.inf  # time.monotonic() of unlocated_hop's last warning
    # The worker's event loop and its thread, set as it starts (gateway.http.app's lifespan)
    # and cleared as it stops. Given to asyncio.current_task() on the request path: without
    # it each call asks for the running loop, which in CPython 3.11 is a getpid() system call
    # (two or three per request).
    loop: asyncio.AbstractEventLoop | None = None
    loop_thread: int = 0
    # This worker's index where the gateway has several (its /metrics label, set by the ops
    # listener): /routing-table, /explain and the dashboard answer from one worker and say
    # which. None with one worker.
    worker: str | None = None

    def current_task(self) -> asyncio.Task[Any] | None:
        """asyncio.current_task() of the calling thread. On the thread whose loop the lifespan
        set, that loop is given (no lookup); on any other thread, or with no loop set or none
        running there, the lookup as usual: another thread's loop may be in a task step of its
        own, which current_task(that loop) would return."""
        loop = self.loop
        if loop is not None and threading.get_ident() == self.loop_thread:
            task = asyncio.current_task(loop)
            if task is not None:
                return task
        return asyncio.current_task()

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

    def http(self) -> Client:
        if self.session is None:
            raise RuntimeError("the upstream client session is not started")
        return self.session

    def locate_and_route(
        self,
        peer: str | None,
        forwarded_for: Sequence[str],
        model: str,
        now: float,
        edge_header: str | None = None,
        host: str | None = None,
    ) -> Routed:
        """The client the edge vouched for in ``edge_header`` (the signed ``geogate-client``
        header; ``host`` is the Host the request was sent to), else the one behind ``peer``
        (trusted proxies' X-Forwarded-For walked from the right); its location, and the
        routing decision for ``model``."""
        # No trusted proxies (the default): nothing to look up, here or in client_ip.
        trusted = peer is not None and bool(self.trusted) and is_trusted(peer, self.trusted)
        edge = self.edge_client(edge_header, host) if edge_header is not None else None
        if edge is not None:
            loc = edge.location
            if loc.country is None or loc.continent is None:
                loc = self._filled(loc, edge.ip)
            return self.route(edge.ip, trusted, loc, model, now)
        ip = client_ip(peer, forwarded_for, self.trusted)
        return self.route_ip(ip, trusted, model, now)

    def _filled(self, loc: Location, ip: IPAddress) -> Location:
        """A signed location missing its country or continent (a Cloudflare location without
        one, or a code that is none: geodb.edge), completed so that a residency rule still
        applies: taken as signed, it confined the client to nothing. Neither: GeoIP's (or the
        default's) both. A continent alone: GeoIP's country only where GeoIP itself places the
        client on that continent; a country from anywhere else (the default's) put an EU
        client under a US rule. A country alone: its continent."""
        country, continent = loc.country, loc.continent
        if country is None and continent is None:
            found = self.geo.locate(ip)
            country, continent = found.country, found.continent
        elif country is None:
            found = self.geo.locate(ip)
            if found.source is LocationSource.GEOIP and found.continent == continent:
                country = found.country
        else:  # every country geodb.edge passes has one (XK's from NO_ROW_CONTINENTS)
            continent = continent_of(country)
        return replace(loc, country=country, continent=continent)

    def unlocated_hop(self, proxy: IPAddress | None, forwarded_for: Sequence[str]) -> None:
        """A request marked as another gateway's (geogate-hops), with no signed client header:
        where its X-Forwarded-For chain stopped at ``proxy`` (the client routing found), an
        address this gateway does not trust, short of the first one it names, and ``proxy``
        is an edge gateway, its clients are located as it, and their residency rule cannot
        apply here. Warned at most once per ``UNLOCATED_HOP_WARN_S``: a client can send the
        header itself, so a set of addresses warned of once each was theirs to fill. The
        chain is read only when a warning could follow, not on every hop's request."""
        now = time.monotonic()
        if not self.config.residency or now - self.hop_warned_at < d.UNLOCATED_HOP_WARN_S:
            return
        if not stops_short(proxy, forwarded_for):
            return
        self.hop_warned_at = now
        log.warning(
            "a request marked as sent by another gateway (geogate-hops) came from %s, which is "
            "not in gateway.trusted_proxies, with no signed client header: if %s is an edge "
            "gateway, its clients are located as it here and no residency rule applies to "
            "them; list it in gateway.trusted_proxies (a client may also send the header)",
            proxy,
            proxy,
        )

    def edge_client(self, value: str, host: str | None) -> EdgeClient | None:
        """The client in a signed edge header, or None when it is not to be believed: then
        the peer and GeoIP decide, as if it had not been sent. Counted by result either way."""
        cfg = self.config.edge
        # The audience is the host the Worker sent the request to: our own Host, unless the
        # operator names the hosts (a proxy in front of us that rewrites Host).
        audiences = cfg.audiences or ((host,) if host else ())
        verdict = verify(value, cfg.keys, audiences, time.time(), cfg.max_skew_s)
        m = self.metrics
        m.edge_location.labels(str(verdict.result)).inc()
        if verdict.client is None:
            log.debug("edge location header ignored (%s): %s", verdict.result, verdict.detail)
        return verdict.client

    def route_ip(self, ip: IPAddress | None, peer_trusted: bool, model: str, now: float) -> Routed:
        return self.route(ip, peer_trusted, self.geo.locate(ip), model, now)

    def route(
        self, ip: IPAddress | None, peer_trusted: bool, loc: Location, model: str, now: float
    ) -> Routed:
        """The decision for ``model`` from a client at ``loc``, however it was located."""
        snap, policy = self.store.snapshot(now), self.store.policy
        decision = self.ranks.route(RequestFacts(model, loc), snap, policy, self.rng)
        hint = preferred_region(loc, decision, snap, policy)
        return Routed(ip, peer_trusted, loc, decision, hint)


def build_runtime(config: Config) -> Runtime:
    """Choose the store (Redis when configured) and open GeoIP: a bad file fails here, in one
    line, before any worker starts."""
    store: StateStore = RedisStateStore(config) if config.redis.url else MemoryStateStore(config)
    return Runtime.build(config, store, open_geo(config))
