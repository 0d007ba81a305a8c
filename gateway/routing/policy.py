"""The operator's routing rules as the router takes them: origin, residency, tolerance, panic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Config
from gateway.routing.model import Origin
from geodb.countries import continent_of
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


def shadowed(rules: Sequence[Residency]) -> list[str]:
    """What each rule names that an earlier rule already takes (the first rule that matches a
    client applies, so a country listed after its continent's rule never decides), in words:
    a rule written for one country after a continent-wide one silently keeps those clients
    where the continent's rule says, which may be somewhere else."""
    said = []
    for i, rule in enumerate(rules):
        # An earlier rule that keeps the same regions takes nothing away: not said.
        earlier = [r for r in rules[:i] if r.regions != rule.regions]
        for country in sorted(rule.countries):
            continent = continent_of(country)
            first = next((r for r in earlier if _takes_country(r, country, continent)), None)
            if first is not None:
                said.append(_shadow(country, rule, first))
        for continent in sorted(rule.continents):
            first = next((r for r in earlier if continent in r.continents), None)
            if first is not None:
                said.append(_shadow(continent, rule, first))
    return said


def _takes_country(rule: Residency, country: str, continent: str | None) -> bool:
    return country in rule.countries or (continent is not None and continent in rule.continents)


def _shadow(name: str, rule: Residency, first: Residency) -> str:
    return f"{name} in residency rule {rule.name!r} is matched first by {first.name!r}"
