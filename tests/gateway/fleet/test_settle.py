"""Which of two fleet documents the fleet keeps (the pure rules; against a real Redis in
test_redis_store): the newer change, at a version above both, every gateway picking the same."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.fleet import settle as settle_module
from gateway.fleet.settle import Settled, Stored, conflict_reason, differences, newer, settle


def doc(**weights: float) -> dict[str, Any]:
    return {
        "regions": [{"id": "eu"}],
        "upstreams": [{"id": u, "region": "eu", "weight": w} for u, w in weights.items()],
    }


A, B = doc(a=1), doc(a=2)


def test_the_digest_is_the_documents_whatever_its_keys_order() -> None:
    same = {"upstreams": A["upstreams"], "regions": A["regions"]}
    assert Stored(A, 1).digest == Stored(same, 9).digest != Stored(B, 1).digest
    assert Stored(None, 0).digest == ""


def test_newer_is_the_later_change_then_the_higher_version_then_the_digest() -> None:
    assert newer(Stored(A, 1, 20.0), Stored(B, 9, 10.0))  # the time, where both are known
    assert newer(Stored(A, 9, None), Stored(B, 1, 20.0))  # one unknown: the version
    assert newer(Stored(A, 2, 5.0), Stored(B, 1, 5.0))
    a, b = Stored(A, 3, None), Stored(B, 3, None)
    assert newer(a, b) != newer(b, a)  # a tie broken the same way by everyone


@pytest.mark.parametrize(
    ("mine", "held", "write", "dropped"),
    [
        # Nothing in Redis: ours, version 1 at least (a fresh gateway's file seeds it).
        (Stored(A, 0, 0.0), Stored(None, 0), Stored(A, 1, 0.0), None),
        (Stored(A, 5, 7.0), Stored(None, 0), Stored(A, 5, 7.0), None),
        # A fresh gateway takes whatever Redis holds.
        (Stored(A, 0, 0.0), Stored(B, 1, 0.0), None, None),
        # The same document: the higher version; ours put back if Redis went back.
        (Stored(A, 3, 7.0), Stored(A, 4, 7.0), None, None),
        (Stored(A, 4, 7.0), Stored(A, 2, None), Stored(A, 4, 7.0), None),
        # The fleet's next change: adopted, nothing dropped.
        (Stored(A, 3, 7.0), Stored(B, 4, 8.0), None, None),
        (Stored(A, 3, None), Stored(B, 4, 8.0), None, None),  # ours by an earlier release
        # Redis went back to an older copy (a snapshot, a file's seed): ours back.
        (Stored(A, 5, 7.0), Stored(B, 2, 3.0), Stored(A, 5, 7.0), None),
        (Stored(A, 5, 7.0), Stored(B, 1, 0.0), Stored(A, 5, 7.0), None),
        (Stored(A, 5, None), Stored(B, 1, 0.0), Stored(A, 5, None), None),
        # ...or, where a change's time is unknown (an earlier release's), a change made on an
        # older copy: ours back all the same, and Redis's dropped, said.
        (Stored(A, 5, 7.0), Stored(B, 2, None), Stored(A, 5, 7.0), "held"),
        (Stored(A, 5, None), Stored(B, 2, 3.0), Stored(A, 5, None), "held"),
        (Stored(A, 5, None), Stored(B, 2, None), Stored(A, 5, None), "held"),
        # A change on a restored Redis at the version we hold: the newer one, above both.
        (Stored(A, 3, 7.0), Stored(B, 3, 9.0), Stored(B, 4, 9.0), "mine"),
        (Stored(A, 3, 9.0), Stored(B, 3, 7.0), Stored(A, 4, 9.0), "held"),
        # Redis holds a lower version but a newer change (we were cut off): Redis's, above ours.
        (Stored(A, 5, 7.0), Stored(B, 2, 9.0), Stored(B, 6, 9.0), "mine"),
        # A higher version of an older change (a cut-off gateway put it back): ours above it.
        (Stored(A, 2, 9.0), Stored(B, 5, 7.0), Stored(A, 6, 9.0), "held"),
        # Two files' seeds at one version (Redis lost its data, a gateway started meanwhile
        # seeded its own file): the one this gateway routed on, above it, whatever the
        # digests' order; the newcomer adopts it, a higher version (the case above this one).
        (Stored(A, 1, 0.0), Stored(B, 1, 0.0), Stored(A, 2, 0.0), "held"),
        (Stored(B, 1, 0.0), Stored(A, 1, 0.0), Stored(B, 2, 0.0), "held"),
        (Stored(B, 1, 0.0), Stored(A, 2, 0.0), None, None),
    ],
)
def test_settle(mine: Stored, held: Stored, write: Stored | None, dropped: str | None) -> None:
    out = settle(mine, held)
    assert out.write == write
    if write is not None:
        assert out.write is not None and out.write.version > held.version
    assert out.dropped is {"mine": mine, "held": held, None: None}[dropped]
    assert out.holds == (write or held)


def test_two_gateways_settling_the_same_pair_keep_the_same_document() -> None:
    for x, y in [
        (Stored(A, 3, 7.0), Stored(B, 3, 9.0)),
        (Stored(A, 3, None), Stored(B, 3, None)),
        (Stored(A, 5, 7.0), Stored(B, 2, 9.0)),
    ]:
        one, other = settle(x, y).holds, settle(y, x).holds
        assert one.digest == other.digest


def test_a_conflict_names_both_documents_and_what_was_lost() -> None:
    mine, held = Stored(doc(a=1, b=3), 3, 1_700_000_000.0), Stored(doc(a=1, c=1), 3, None)
    out = settle(mine, held)
    assert out == Settled(held, write=Stored(mine.doc, 4, mine.changed_at), dropped=held)
    assert conflict_reason(out, mine) == (
        "two documents: Redis's version 3 (its change's time not recorded (an earlier release "
        "wrote it)) and this gateway's version 3 (changed 2023-11-14T22:13:20.000+00:00); kept "
        "the newer change, this gateway's, as version 4; dropped Redis's version 3: upstream b "
        "(kept, not in the dropped one); upstream c (not kept)"
    )


def test_differences_by_region_upstream_rule_and_drained_region() -> None:
    dropped = {
        **doc(a=2),
        "residency": [{"countries": ["DE"], "regions": ["eu"]}],
        "drained_regions": {"eu": []},
    }
    assert differences(dropped, doc(a=1)) == [
        "upstream a: weight 2 (kept: 1)",
        "residency rule DE->eu (not kept)",
        "regions drained: eu (kept: none)",
    ]
    # What is no list of items (a document a gateway refused) reads as none, not a traceback.
    assert differences({"regions": "junk", "upstreams": [7]}, doc(a=1)) == [
        "region eu (kept, not in the dropped one)",
        "upstream a (kept, not in the dropped one)",
    ]


def test_a_refused_documents_rules_and_drained_regions_are_compared_not_raised() -> None:
    """A document every gateway refuses (a rule's countries a number, drained_regions a list
    of mixed items) is compared all the same: its conflict's ERROR line is still said."""
    dropped = {
        **doc(a=1),
        "residency": [{"name": None, "countries": 5, "continents": "EU", "regions": ["eu"]}],
        "drained_regions": [1, "a"],
    }
    assert differences(dropped, doc(a=1)) == [
        "residency rule ->eu (not kept)",
        "regions drained: 1, a (kept: none)",
    ]
    assert differences({**doc(a=1), "drained_regions": 7}, doc(a=1)) == [
        "regions drained: 7 (kept: none)"
    ]


def test_two_seeds_say_which_was_kept_and_why() -> None:
    rule = {"name": "eu-stays-in-eu", "continents": ["EU"], "regions": ["eu"]}
    mine, held = Stored({**A, "residency": [rule]}, 1, 0.0), Stored(A, 1, 0.0)
    out = settle(mine, held)
    assert conflict_reason(out, mine) == (
        "two documents: Redis's version 1 (a config file's seed) and this gateway's version 1 "
        "(a config file's seed); kept the one this gateway routed on (both are files' seeds: "
        "Redis lost its data and a gateway started meanwhile seeded it), this gateway's, as "
        "version 2; dropped Redis's version 1: residency rule eu-stays-in-eu (kept, not in the "
        "dropped one)"
    )


def test_a_conflict_is_said_even_where_its_differences_cannot_be_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(dropped: dict[str, Any], kept: dict[str, Any]) -> list[str]:
        raise TypeError("not expected")

    monkeypatch.setattr(settle_module, "differences", broken)
    mine, held = Stored(A, 3, 9.0), Stored(B, 3, 7.0)
    reason = conflict_reason(settle(mine, held), mine)
    assert reason.endswith(
        "dropped Redis's version 3: its differences not listed (TypeError: not expected)"
    )
