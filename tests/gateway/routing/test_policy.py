"""The operator's rules as the router takes them."""

from __future__ import annotations

from gateway.config import Config
from gateway.routing.policy import policy_from
from geodb.location import Location


def test_rules_are_named_and_match_country_or_continent() -> None:
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu", "origin": "client"},
            "router": {"tolerance_ms": 5},
            "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
            "residency": [
                {"countries": ["de"], "regions": ["eu"]},
                {"name": "eu-only", "continents": ["EU"], "regions": ["eu"]},
            ],
        }
    )
    p = policy_from(cfg)
    assert (p.origin, p.self_region, p.tolerance_ms) == ("client", "eu", 5)
    unnamed, named = p.residency
    assert (unnamed.name, named.name) == ("DE->eu", "eu-only")  # codes in upper case
    assert unnamed.matches(Location(0, 0, "DE", None))
    assert named.matches(Location(0, 0, "FR", "EU"))
    assert not named.matches(Location(0, 0, "US", "NA"))
    # The first rule that applies wins: Germany is in both.
    assert p.rule_index(Location(0, 0, "DE", "EU")) == 0
    assert p.rule_index(Location(0, 0, "FR", "EU")) == 1
    assert p.rule_index(Location(0, 0, "US", "NA")) is None
