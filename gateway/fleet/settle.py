"""Which of two fleet documents the fleet keeps: pure rules (``config_io.settle`` applies them
in Redis, under WATCH).

A version alone does not stand for a document once Redis loses data. Restored from an older
snapshot, a change made there (``geogate ctl --redis``) gets a version the gateways already
hold for another document; a gateway cut off while that happened holds a higher version of an
older change, and putting it back would undo the newer one. So a document goes with its
digest and the time of the change that made it (``changed_at``, Redis's clock), kept in the
config hash beside ``doc`` and ``version``: never inside the document, as a gateway of an
earlier release refuses keys it does not know there. Two different documents are settled on
the newer change, at a version above both, and the other one is named in one ERROR line
(``config-conflict``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.fleet.config_doc import DRAINED_REGIONS
from gateway.logs import utc_ms
from gateway.routing.policy import rule_name


def digest(doc: dict[str, Any]) -> str:
    """The document's identity, whatever the order of its keys."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """A fleet document as Redis holds it or a gateway routes on it. ``changed_at``: when the
    operator change that made it was made (unix seconds, Redis's clock); 0 for a file's seed,
    which no operator made; None when unknown (a gateway of an earlier release wrote it).
    ``stored_digest``: the digest Redis held beside it, as read: what a refresh compares to see
    a new document (not the document's own where an earlier release wrote the document)."""

    doc: dict[str, Any] | None
    version: int
    changed_at: float | None = None
    stored_digest: str | None = field(default=None, compare=False)
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", "" if self.doc is None else digest(self.doc))

    def at(self, version: int) -> Stored:
        """The same document and change at another version."""
        return Stored(self.doc, version, self.changed_at, self.digest)


def newer(a: Stored, b: Stored) -> bool:
    """Whether ``a`` is the newer change of two different documents: the later change where
    both times are known; else the higher version; else the greater digest (arbitrary, but
    every gateway picks the same one, so the fleet converges)."""
    if a.changed_at is not None and b.changed_at is not None and a.changed_at != b.changed_at:
        return a.changed_at > b.changed_at
    if a.version != b.version:
        return a.version > b.version
    return a.digest > b.digest


@dataclass(frozen=True)
class Settled:
    """What a gateway does about ``held``, Redis's document: ``write`` (None: nothing), and
    the different document it gives up for good, ``dropped`` (a conflict, logged)."""

    held: Stored
    write: Stored | None = None
    dropped: Stored | None = None
    seeds: bool = False  # two files' seeds at one version: ours kept, the one routed on

    @property
    def holds(self) -> Stored:
        """What Redis holds once settled: what the gateway adopts."""
        return self.write or self.held


def settle(mine: Stored, held: Stored) -> Settled:
    """The one document the fleet keeps of ``mine`` (version 0: never synced, the file's
    routing) and ``held``. Every write raises Redis's version, so a gateway of an earlier
    release, which adopts only a higher version, follows too:
      - none in Redis (the first gateway; Redis restarted empty): ours, at version 1 at least;
      - the same document: the higher version (ours put back if Redis's went back);
      - Redis's the newer change: adopted; written above our version if it is not above it
        already (a change made on an older copy Redis was restored to): ours dropped;
      - ours the newer change and the higher version: Redis went back to an older copy (a
        snapshot, a fresh gateway's seed): ours put back, nothing dropped; but where either
        change's time is unknown (an earlier release made it) and Redis's is no file's seed,
        Redis's may be a change made on an older copy: ours put back, Redis's dropped;
      - ours the newer change, Redis's version as high (a gateway cut off while the fleet
        moved on put its older change back, higher): ours above it, Redis's dropped;
      - both a config file's seed, at one version: Redis lost its data and a gateway started
        meanwhile seeded it from its own file before the running ones put theirs back. Ours,
        the document this gateway routed on, goes back above it (the newcomer then adopts the
        higher version): which one the fleet kept went by the digests' order, and a newcomer's
        file without a residency rule took the rule off every gateway."""
    if held.doc is None:
        return Settled(held, write=mine.at(max(mine.version, 1)))
    if mine.version == 0 or mine.digest == held.digest:
        if mine.version > held.version:
            known = mine.changed_at if mine.changed_at is not None else held.changed_at
            return Settled(held, write=Stored(mine.doc, mine.version, known, mine.digest))
        return Settled(held)
    if held.changed_at == 0.0 == mine.changed_at and held.version == mine.version:
        return Settled(held, write=mine.at(held.version + 1), dropped=held, seeds=True)
    if newer(held, mine):
        if held.version > mine.version:
            return Settled(held)
        return Settled(held, write=held.at(mine.version + 1), dropped=mine)
    if mine.version > held.version:
        # Redis's an older copy only where the times say so (or it is a file's seed): where
        # one is unknown, it may be a change made on an older copy, dropped and said.
        older = held.changed_at == 0.0 or None not in (held.changed_at, mine.changed_at)
        return Settled(held, write=mine, dropped=None if older else held)
    return Settled(held, write=mine.at(held.version + 1), dropped=held)


def when(changed_at: float | None) -> str:
    if changed_at is None:
        return "its change's time not recorded (an earlier release wrote it)"
    if not changed_at:
        return "a config file's seed"
    return f"changed {utc_ms(changed_at)}"  # to the millisecond: two changes a second apart


def conflict_reason(out: Settled, mine: Stored) -> str:
    """The ERROR line's words for a conflict settled: both documents, and what was lost."""
    kept, dropped = out.write, out.dropped
    assert kept is not None and dropped is not None
    ours = dropped is mine
    why = (
        "the one this gateway routed on (both are files' seeds: Redis lost its data and a "
        "gateway started meanwhile seeded it)"
        if out.seeds
        else "the newer change"
    )
    try:
        lost = differences(dropped.doc or {}, kept.doc or {}) or ["no routing difference"]
    except Exception as exc:  # a document no reader expected: the conflict is said all the same
        lost = [f"its differences not listed ({type(exc).__name__}: {exc})"]
    return (
        f"two documents: Redis's version {out.held.version} ({when(out.held.changed_at)}) and "
        f"this gateway's version {mine.version} ({when(mine.changed_at)}); kept {why}, "
        f"{'Redis' if ours else 'this gateway'}'s, as version {kept.version}; dropped "
        f"{'this gateway' if ours else 'Redis'}'s version {dropped.version}: {'; '.join(lost)}"
    )


def _keyed(items: object, name: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """A document's list by name, what is no item left out: the documents compared here may
    be ones a gateway refused."""
    if not isinstance(items, list):
        return {}
    return {name(i): i for i in items if isinstance(i, dict)}


def _id(item: dict[str, Any]) -> str:
    return str(item.get("id"))


def _names(items: object) -> list[str]:
    """A list's items (a dict's keys) as text; what is neither, none: the documents compared
    here may be ones a gateway refused."""
    return [str(i) for i in items] if isinstance(items, list | dict) else []


def _rule(rule: dict[str, Any]) -> str:
    # policy_from's name for it: the names the log and /routing-table use.
    return rule_name(
        str(rule.get("name") or ""),
        _names(rule.get("countries")),
        _names(rule.get("continents")),
        _names(rule.get("regions")),
    )


def differences(dropped: dict[str, Any], kept: dict[str, Any]) -> list[str]:
    """What the dropped document says that the kept one does not, by region, upstream and
    residency rule: ["upstream a: weight 2 (kept: 1)", "regions drained: eu (kept: none)"]."""
    out = []
    for kind, key, name in (
        ("region", "regions", _id),
        ("upstream", "upstreams", _id),
        ("residency rule", "residency", _rule),
    ):
        lost, have = _keyed(dropped.get(key), name), _keyed(kept.get(key), name)
        for n in sorted(lost.keys() | have.keys()):
            if n not in have:
                out.append(f"{kind} {n} (not kept)")
            elif n not in lost:
                out.append(f"{kind} {n} (kept, not in the dropped one)")
            else:
                a, b = lost[n], have[n]
                out += [
                    f"{kind} {n}: {k} {json.dumps(a.get(k))} (kept: {json.dumps(b.get(k))})"
                    for k in sorted(a.keys() | b.keys())
                    if a.get(k) != b.get(k)
                ]
    drained, kept_drained = dropped.get(DRAINED_REGIONS) or {}, kept.get(DRAINED_REGIONS) or {}
    if drained != kept_drained:
        out.append(f"regions drained: {_drained(drained)} (kept: {_drained(kept_drained)})")
    return out


def _drained(regions: object) -> str:
    """drained_regions' regions: its keys (a list's items, as a refused document may hold
    them), else the value as it is."""
    if isinstance(regions, dict | list):
        return ", ".join(sorted(_names(regions))) or "none"
    return json.dumps(regions)
