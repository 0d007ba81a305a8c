"""The operator's routing rules as the router takes them: origin, residency, tolerance, panic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Config
from gateway.routing.model import Origin
from geodb.location import Location


@dataclass(frozen=True, slots=True)
class Residency:
    name: str
    countries: frozenset[str]
    continents: frozenset[str]
    regions: frozenset[str]

    def matches(self, loc: Location) -> bool:
        return (loc.country is not None and loc.country.upper() in self.countries) or (
            loc.continent is not None and loc.continent.upper() in self.continents
        )


@dataclass(frozen=True, slots=True)
class Policy:
    origin: Origin
    self_region: str
    residency: tuple[Residency, ...] = ()
    tolerance_ms: float = 15.0
    tolerance_ratio: float = 0.15
    panic_threshold: float = 0.5

    def rule_index(self, loc: Location) -> int | None:
        """The index of the first residency rule that applies to ``loc``; None: none does."""
        if not self.residency:  # the common case: no generator to build per request
            return None
        return next((i for i, r in enumerate(self.residency) if r.matches(loc)), None)


def rule_name(
    name: str, countries: Sequence[str], continents: Sequence[str], regions: Sequence[str]
) -> str:
    """A residency rule's name: its own, else made of what it matches and where it keeps."""
    return name or "+".join([*countries, *continents]) + "->" + "+".join(regions)


def policy_from(config: Config) -> Policy:
    rules = tuple(
        Residency(
            name=rule_name(r.name, r.countries, r.continents, r.regions),
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
