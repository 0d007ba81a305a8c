"""The operator's rules as the router takes them."""

from __future__ import annotations

from gateway.config import Config
from gateway.routing.policy import Residency, policy_from, shadowed
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


def test_a_rule_an_earlier_one_takes_first_is_named() -> None:
    def rule(
        name: str, countries: tuple[str, ...] = (), continents: tuple[str, ...] = ()
    ) -> Residency:
        # Each keeps its clients in a region of its own: an earlier rule's is another.
        return Residency(name, frozenset(countries), frozenset(continents), frozenset({name}))

    eu, gb, af_country = (
        rule("eu-only", continents=("EU",)),
        rule("gb", ("GB",)),
        rule("af", ("AF",)),
    )
    assert shadowed([gb, eu]) == []  # the country's rule first: it decides for GB
    assert shadowed([eu, gb]) == ["GB in residency rule 'gb' is matched first by 'eu-only'"]
    assert shadowed([eu, rule("eu-2", continents=("EU", "AS"))]) == [
        "EU in residency rule 'eu-2' is matched first by 'eu-only'"
    ]
    # Afghanistan's code is Africa's: a country rule does not take a continent, nor the reverse.
    assert shadowed([af_country, rule("africa", continents=("AF",))]) == []
    assert shadowed([rule("africa", continents=("AF",)), af_country]) == []  # AF is in Asia
    again = Residency("gb-again", frozenset({"GB", "XK"}), frozenset(), frozenset({"gb"}))
    assert shadowed([gb, again]) == []  # the same regions: harmless
    kosovo = Residency("xk", frozenset({"XK"}), frozenset(), frozenset({"us"}))
    assert shadowed([eu, kosovo]) == ["XK in residency rule 'xk' is matched first by 'eu-only'"]
