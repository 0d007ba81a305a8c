"""The fleet document's pure rules: what an operator may change, and how it is validated."""

from __future__ import annotations

import json
import re

import pytest

from gateway.config import Config
from gateway.errors import FleetConfigInvalid
from gateway.fleet.config_doc import (
    apply_doc,
    audit_entry,
    base_config,
    change_region,
    change_upstream,
    file_differences,
    routing_doc,
    stranded,
)
from tests.support import eu_config

CFG = eu_config()


def test_a_change_names_before_and_after_and_applies() -> None:
    doc, before, after = change_upstream(routing_doc(CFG), "a", {"weight": 2, "drained": True})
    assert before == {"weight": 1.0, "drained": False}
    assert after == {"weight": 2, "drained": True}
    new = apply_doc(CFG, doc)
    assert (new.upstreams[0].weight, new.upstreams[0].drained) == (2.0, True)
    assert new.server == CFG.server  # only the routing part is shared


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "change one or more of weight, bias_ms, drained; got nothing"),
        ({"url": "http://x"}, "got url"),
        ({"weight": "2"}, "weight must be a finite number"),
        ({"weight": True}, "weight must be a finite number"),
        ({"drained": 1}, "drained must be true or false"),
        # json.loads gives these for NaN, Infinity and 1e309: each would poison every score
        ({"bias_ms": json.loads("NaN")}, r"bias_ms must be a finite number \(got nan\)"),
        ({"weight": json.loads("Infinity")}, "weight must be a finite number"),
        ({"weight": json.loads("1e309")}, "weight must be a finite number"),
        ({"bias_ms": json.loads("-Infinity")}, "bias_ms must be a finite number"),
        ({"weight": -1}, r"weight must be between 0 and 1000 \(got -1\)"),
        ({"weight": 1000.5}, "weight must be between 0 and 1000"),
        ({"bias_ms": -10_001}, "bias_ms must be between -10000 and 10000"),
    ],
)
def test_bad_changes_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(FleetConfigInvalid, match=message):
        change_upstream(routing_doc(CFG), "a", changes)


def test_unknown_upstream_names_the_known_ones() -> None:
    with pytest.raises(FleetConfigInvalid, match="no upstream 'z'; known: a"):
        change_upstream(routing_doc(CFG), "z", {"weight": 1})


def test_the_bounds_are_the_config_files() -> None:
    doc, _, _ = change_upstream(routing_doc(CFG), "a", {"weight": 1000, "bias_ms": -10_000})
    assert apply_doc(CFG, doc).upstreams[0].weight == 1000


def test_an_invalid_document_says_where() -> None:
    doc = routing_doc(CFG)
    doc["upstreams"][0]["weight"] = -1  # as a document written by something else could be
    with pytest.raises(FleetConfigInvalid, match=r"upstreams\.0\.weight"):
        apply_doc(CFG, doc)


def test_audit_entry_and_base_config() -> None:
    entry = audit_entry("ops", "upstream a", {"weight": 1}, {"weight": 2}, 7)
    assert (entry["who"], entry["version"], json.loads(entry["after"])) == (
        "ops",
        "7",
        {"weight": 2},
    )
    assert base_config(routing_doc(CFG)).gateway.region == "eu"


def test_a_region_drains_all_its_upstreams_in_one_change() -> None:
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [
                {"id": "eu", "latitude": 50, "longitude": 8},
                {"id": "us", "latitude": 40, "longitude": -74},
                {"id": "ap", "latitude": 1, "longitude": 103},
            ],
            "upstreams": [
                {"id": f"{r}{i}", "region": r, "url": "http://127.0.0.1:1", "models": ["m"]}
                for r, i in (("eu", 1), ("eu", 2), ("us", 1))
            ],
        }
    )
    doc, before, after = change_region(routing_doc(cfg), "eu", {"drained": True})
    assert before == {"eu1": {"drained": False}, "eu2": {"drained": False}}
    assert after == {"eu1": {"drained": True}, "eu2": {"drained": True}}
    applied = apply_doc(cfg, doc)
    assert applied.drained_regions == {"eu": ()}  # none of them drained on its own
    assert {u.id: u.drained for u in applied.upstreams} == {"eu1": True, "eu2": True, "us1": False}
    for rid, changes, message in (
        ("nope", {"drained": True}, "no region 'nope'; known: eu, us, ap"),
        ("ap", {"drained": True}, "region 'ap' has no upstreams"),
        ("eu", {"weight": 2}, "a region change sets drained (true or false); got weight"),
        ("eu", {"drained": "yes"}, "drained must be true or false"),
    ):
        with pytest.raises(FleetConfigInvalid, match=re.escape(message)):
            change_region(routing_doc(cfg), rid, changes)
    # Undraining a region that is not drained changes nothing (the callers say so): it was a
    # refusal, so a script that undrains twice failed where one that drains twice did not.
    same, before, after = change_region(routing_doc(cfg), "us", {"drained": False})
    assert same == routing_doc(cfg) and before == after


def _fleet() -> Config:
    return Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [
                {"id": "eu", "latitude": 50, "longitude": 8},
                {"id": "us", "latitude": 40, "longitude": -74},
            ],
            "upstreams": [
                {"id": f"{r}{i}", "region": r, "url": "http://127.0.0.1:1", "models": ["m"]}
                for r, i in (("eu", 1), ("eu", 2), ("us", 1))
            ],
        }
    )


# The document as the release before drained_regions wrote it (its routing_doc): what a
# gateway of that release reads (only these keys; its models refuse any key they lack).
PREVIOUS_KEYS = ("regions", "upstreams", "residency")
PREVIOUS_REGION = {"id", "name", "latitude", "longitude", "url", "addresses"}


def test_a_region_drain_is_written_as_the_previous_release_wrote_it() -> None:
    """A gateway of the previous release, in a fleet that rolls, applies the document and
    routes around the drained region: every member drained=true, nothing new in regions[],
    and the one new key top-level (which it ignores)."""
    undrained = routing_doc(_fleet())
    assert tuple(undrained) == PREVIOUS_KEYS  # no region drained: no drained_regions key
    assert all(set(r) == PREVIOUS_REGION for r in undrained["regions"])
    doc, _, _ = change_upstream(undrained, "eu1", {"drained": True})  # maintenance
    doc, _, _ = change_region(doc, "eu", {"drained": True})
    assert all(set(r) == PREVIOUS_REGION for r in doc["regions"])
    assert {u["id"]: u["drained"] for u in doc["upstreams"]} == {
        "eu1": True,
        "eu2": True,
        "us1": False,
    }
    assert doc["drained_regions"] == {"eu": ["eu1"]}
    assert (doc["regions"], doc["residency"]) == (undrained["regions"], undrained["residency"])
    # Stored and read back (routing_doc of the applied config) it is the same document.
    assert routing_doc(apply_doc(_fleet(), doc)) == doc
    # Undrained, byte for byte the document without region drains (eu1 stays drained).
    doc, _, _ = change_region(doc, "eu", {"drained": False})
    expected, _, _ = change_upstream(undrained, "eu1", {"drained": True})
    assert json.dumps(doc) == json.dumps(expected)
    assert json.dumps(routing_doc(apply_doc(_fleet(), doc))) == json.dumps(expected)


def test_a_file_that_lists_a_drained_region_alone_is_written_with_its_upstreams_drained() -> None:
    cfg = Config.model_validate({**_fleet().model_dump(), "drained_regions": {"eu": ["eu1"]}})
    doc = routing_doc(cfg)  # what a gateway seeds the fleet with
    assert {u["id"]: u["drained"] for u in doc["upstreams"]} == {
        "eu1": True,
        "eu2": True,
        "us1": False,
    }
    doc, _, _ = change_region(doc, "eu", {"drained": False})
    assert {u["id"]: u["drained"] for u in doc["upstreams"]}["eu1"] is True  # listed: its own


def test_undraining_a_region_leaves_an_upstream_drained_on_its_own() -> None:
    doc = routing_doc(_fleet())
    doc, _, _ = change_upstream(doc, "eu1", {"drained": True})  # maintenance
    doc, before, after = change_region(doc, "eu", {"drained": True})
    assert before == {"eu1": {"drained": True}, "eu2": {"drained": False}}
    assert after == {"eu1": {"drained": True}, "eu2": {"drained": True}}
    again, before, after = change_region(doc, "eu", {"drained": True})  # idempotent
    assert again == doc and before == after == {"eu1": {"drained": True}, "eu2": {"drained": True}}
    doc, before, after = change_region(doc, "eu", {"drained": False})
    # The audit names every upstream of the region, each with its effective drain after.
    assert before == {"eu1": {"drained": True}, "eu2": {"drained": True}}
    assert after == {"eu1": {"drained": True}, "eu2": {"drained": False}}
    own = {u["id"]: u["drained"] for u in doc["upstreams"]}
    assert own == {"eu1": True, "eu2": False, "us1": False}
    assert "drained_regions" not in doc
    assert apply_doc(_fleet(), doc).drained_regions == {}


def test_a_region_drained_the_old_way_is_not_undrained_as_a_region() -> None:
    """Every member drained and no drained_regions entry (a drain of a release before it, or
    each upstream drained on its own): nothing says which were drained on purpose, so the
    region's undrain is refused with what to do instead, and nothing changes."""
    doc = routing_doc(_fleet())
    for uid in ("eu1", "eu2"):
        doc, _, _ = change_upstream(doc, uid, {"drained": True})
    with pytest.raises(FleetConfigInvalid) as refused:
        change_region(doc, "eu", {"drained": False})
    assert str(refused.value) == (
        "region eu is not drained as a region: its upstreams eu1, eu2 are drained on their own "
        "(a region drained before this version included); undrain each: ctl undrain eu1, "
        "ctl undrain eu2"
    )
    one = routing_doc(_fleet())
    one, _, _ = change_upstream(one, "us1", {"drained": True})
    with pytest.raises(FleetConfigInvalid, match=re.escape("its upstream us1 is drained on its")):
        change_region(one, "us", {"drained": False})


def test_an_upstream_drained_and_undrained_inside_a_drained_region() -> None:
    """Its flag stays true (the region holds it, as the previous release reads it); its own
    drain is recorded in the region's list, and decides whether the region's undrain brings
    it back."""
    doc, _, _ = change_region(routing_doc(_fleet()), "eu", {"drained": True})
    doc, before, after = change_upstream(doc, "eu1", {"drained": True, "weight": 2})
    # "drained" as routed (true either way) and its own drain, which is what changed.
    assert (before, after) == (
        {"drained": True, "own_drain": False, "weight": 1.0},
        {"drained": True, "own_drain": True, "weight": 2},
    )
    assert doc["drained_regions"] == {"eu": ["eu1"]}
    again, _, _ = change_upstream(doc, "eu1", {"drained": True})
    assert again["drained_regions"] == {"eu": ["eu1"]}  # listed once
    undrained, before, after = change_upstream(doc, "eu1", {"drained": False})
    # Effective: still out; its own drain is gone.
    assert (before, after) == (
        {"drained": True, "own_drain": True},
        {"drained": True, "own_drain": False},
    )
    assert undrained["drained_regions"] == {"eu": []}
    assert all(u["drained"] for u in undrained["upstreams"] if u["region"] == "eu")
    # Out of a drained region an undrain is one.
    _, before, after = change_upstream(doc, "us1", {"drained": False})
    assert (before, after) == ({"drained": False}, {"drained": False})
    # The region's undrain: eu1 drained on its own stays out; undrained on its own, it is back.
    back, _, _ = change_region(doc, "eu", {"drained": False})
    assert {u["id"]: u["drained"] for u in back["upstreams"]}["eu1"] is True
    back, _, _ = change_region(undrained, "eu", {"drained": False})
    assert not any(u["drained"] for u in back["upstreams"])


@pytest.mark.parametrize(
    ("drained_regions", "message"),
    [
        (
            {"ap": []},
            "invalid fleet config: drained_regions: 'ap' is not among regions (eu, us)",
        ),
        (
            {"eu": ["us1"]},
            "invalid fleet config: drained_regions.eu: 'us1' is not an upstream of region eu "
            "(its upstreams: eu1, eu2)",
        ),
    ],
)
def test_drained_regions_name_regions_and_their_upstreams(
    drained_regions: dict[str, list[str]], message: str
) -> None:
    doc = {**routing_doc(_fleet()), "drained_regions": drained_regions}
    with pytest.raises(FleetConfigInvalid) as refused:
        apply_doc(_fleet(), doc)
    assert str(refused.value) == message  # one line


def test_a_file_differs_from_the_fleet_in_ids_and_rules_not_in_operator_changes() -> None:
    fleet = routing_doc(_fleet())
    fleet, _, _ = change_upstream(fleet, "eu1", {"weight": 3, "drained": True})
    fleet, _, _ = change_region(fleet, "us", {"drained": True})
    assert file_differences(routing_doc(_fleet()), fleet) == []  # only operators' changes
    data = _fleet().model_dump(mode="json")
    data["upstreams"] = [u for u in data["upstreams"] if u["id"] != "us1"]
    data["upstreams"].append({**data["upstreams"][0], "id": "eu3"})
    data["upstreams"][0]["url"] = "http://127.0.0.1:9"
    data["regions"].append({"id": "ap", "latitude": 1, "longitude": 103})
    data["residency"] = [
        {"name": "eu-only", "continents": ["EU"], "regions": ["eu"]},
        {"countries": ["SG"], "regions": ["ap"]},
    ]
    fleet["residency"] = [{"name": "eu-only", "continents": ["EU"], "regions": ["eu", "us"]}]
    mine = routing_doc(Config.model_validate(data))
    assert file_differences(mine, fleet) == [
        "regions only in the file: ap",
        "upstreams only in the file: eu3",
        "upstreams only in Redis: us1",
        "upstreams that differ: eu1",
        "residency rules only in the file: SG->ap",
        "residency rules that differ: eu-only",
    ]


def test_stranded_names_a_models_last_upstream_everywhere_and_under_a_residency_rule() -> None:
    # The fleet's document alone (ctl --redis): drains, no health, no traffic.
    def up(uid: str, region: str, drained: bool = False) -> dict[str, object]:
        return {"id": uid, "region": region, "models": ["m"], "drained": drained}

    before = {
        "upstreams": [up("e1", "eu"), up("u1", "us")],
        "residency": [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}],
    }
    eu_gone = {**before, "upstreams": [up("e1", "eu", True), up("u1", "us")]}
    assert stranded(before, eu_gone) == ["model m for clients under residency rule eu-only"]
    both = {**before, "upstreams": [up("e1", "eu", True), up("u1", "us", True)]}
    assert stranded(before, both) == ["model m"]
    assert stranded(before, {**before, "upstreams": [up("e1", "eu"), up("u1", "us", True)]}) == []
    assert stranded(both, both) == []  # nothing took it before: nothing is left by the change
