"""Everything one gateway process holds while it runs, built once at start-up."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import aiohttp

from gateway.config import Config
from gateway.metrics import Metrics
from gateway.retry_budget import RetryBudget
from gateway.router import Policy, Residency
from gateway.state import StateStore
from geodb.clientip import IPNetwork, parse_networks
from geodb.reader import GeoSource

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


def policy_from(config: Config) -> Policy:
    rules = tuple(
        Residency(
            name=r.name or "+".join([*r.countries, *r.continents]) + "->" + "+".join(r.regions),
            countries=frozenset(c.upper() for c in r.countries),
            continents=frozenset(c.upper() for c in r.continents),
            regions=frozenset(r.regions),
        )
        for r in config.residency
    )
    return Policy(
        origin=config.gateway.origin,
        self_region=config.gateway.region,
        residency=rules,
        tolerance_ms=config.router.tolerance_ms,
        tolerance_ratio=config.router.tolerance_ratio,
        panic_threshold=config.router.panic_threshold,
    )


@dataclass
class Runtime:
    config: Config
    store: StateStore
    geo: GeoSource
    metrics: Metrics
    policy: Policy
    budget: RetryBudget
    trusted: tuple[IPNetwork, ...]
    rng: random.Random = field(default_factory=random.Random)
    session: aiohttp.ClientSession | None = None
    draining: bool = False

    @classmethod
    def build(cls, config: Config, store: StateStore, geo: GeoSource) -> Runtime:
        r = config.retry
        rt = cls(
            config=config,
            store=store,
            geo=geo,
            metrics=Metrics(),
            policy=policy_from(config),
            budget=RetryBudget(r.budget_ratio, r.budget_min_per_s, r.budget_window_s),
            trusted=parse_networks(config.gateway.trusted_proxies),
        )
        store.on_config = rt.apply_config
        return rt

    def apply_config(self, config: Config) -> None:
        """A routing config change (fleet config, DNS discovery): one place applies it."""
        self.store.replace_config(config)
        self.config = config
        self.policy = policy_from(config)

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the upstream client session is not started")
        return self.session
