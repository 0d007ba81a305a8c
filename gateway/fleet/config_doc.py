"""The fleet's routing document and its pure rules: what it holds, how an operator's change is
validated and applied, and the audit entry that records it. No I/O: ``config_io`` stores it.

Only the routing part is shared (regions, upstreams with weights, biases and drain flags,
residency rules, the regions drained as a whole); timeouts, ports and the like stay per
gateway in its file.

A region's drain is written as a gateway of the release before ``drained_regions`` wrote it,
every upstream of the region drained, so one of those gateways in a fleet that rolls routes
around the region too; ``drained_regions`` (a top-level key, which that release ignores) adds
which of them were drained on their own, so undraining the region leaves those drained.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from gateway.config import Config
from gateway.defaults import MAX_BIAS_MS, MAX_WEIGHT
from gateway.errors import FleetConfigInvalid
from gateway.routing.policy import rule_name

DRAINED_REGIONS = "drained_regions"
ROUTING_KEYS = ("regions", "upstreams", "residency", DRAINED_REGIONS)
CHANGEABLE = {"weight": float, "bias_ms": float, "drained": bool}


def routing_doc(config: Config) -> dict[str, Any]:
    # Every upstream of a drained region is drained in the config itself (Config's
    # _drained_regions_hold_their_upstreams): the one drain the release before sees.
    dump = config.model_dump(mode="json")
    # drained_regions only while a region is drained: a document without one is then, byte for
    # byte, what a gateway of the release before the key writes and reads.
    return {k: dump[k] for k in ROUTING_KEYS if k != DRAINED_REGIONS or dump[k]}


def apply_doc(config: Config, doc: dict[str, Any]) -> Config:
    """``config`` with the routing part replaced by ``doc``, validated as a whole."""
    data = config.model_dump(mode="json")
    data.update({k: doc[k] for k in ROUTING_KEYS if k in doc})
    # A document without the key has no region drained (routing_doc leaves it out then): the
    # file's drained_regions, if it set any, is not the fleet's.
    data[DRAINED_REGIONS] = doc.get(DRAINED_REGIONS, {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> FleetConfigInvalid:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")  # a check across keys names its own
    return FleetConfigInvalid(
        f"invalid fleet config: {where}: {msg}" if where else f"invalid fleet config: {msg}"
    )


# The numbers' bounds: the same as the config file's (config.Upstream), so file and API agree.
BOUNDS = {"weight": (0.0, MAX_WEIGHT), "bias_ms": (-MAX_BIAS_MS, MAX_BIAS_MS)}


def _check_value(key: str, kind: type, v: Any) -> None:
    if kind is bool:
        if not isinstance(v, bool):
            raise FleetConfigInvalid(f"{key} must be true or false")
        return
    low, high = BOUNDS[key]
    # json.loads reads NaN, Infinity and 1e309 as floats: refused here, or one bad PATCH makes
    # every score NaN and the config unprintable as JSON.
    # An int is finite whatever its size (isfinite raised OverflowError on one past a float's
    # range: a traceback and a plain-text 500 for a PATCH of weight 1e400 written out).
    number = isinstance(v, int | float) and not isinstance(v, bool)
    if not number or (isinstance(v, float) and not math.isfinite(v)):
        raise FleetConfigInvalid(f"{key} must be a finite number (got {_shown(v)})")
    if not low <= v <= high:
        raise FleetConfigInvalid(f"{key} must be between {low:g} and {high:g} (got {_shown(v)})")


def _shown(v: Any) -> str:
    """``v`` for a message: an int of hundreds of digits is not written out (and one of
    thousands cannot be: Python's int-to-text limit)."""
    if isinstance(v, int) and v.bit_length() > SHOWN_INT_BITS:
        return f"a number of about {v.bit_length() * math.log10(2):.0f} digits"
    return repr(v)[:SHOWN_CHARS]


SHOWN_INT_BITS = 100  # about 30 decimal digits
SHOWN_CHARS = 80


def change_upstream(
    doc: dict[str, Any], uid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Returns (new doc, before, after) where before/after hold only the changed fields, its
    drain as routing sees it: an upstream of a drained region is drained in both (whether it
    was drained on its own, which its drain or undrain changes, is in drained_regions)."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown or not changes:
        raise FleetConfigInvalid(
            f"change one or more of {', '.join(CHANGEABLE)}; "
            f"got {', '.join(sorted(unknown)) or 'nothing'}"
        )
    for key, kind in CHANGEABLE.items():
        if key in changes:
            _check_value(key, kind, changes[key])
    ups = doc.get("upstreams", [])
    target = next((u for u in ups if u["id"] == uid), None)
    if target is None:
        raise FleetConfigInvalid(f"no upstream {uid!r}; known: {', '.join(u['id'] for u in ups)}")
    drained_regions = _drained_regions(doc)
    held = target["region"] in drained_regions
    before = {k: target.get(k) for k in changes}
    after = dict(changes)
    if held and "drained" in changes:
        # Its region's drain holds its flag true (as the release before drained_regions reads
        # it); its own drain or undrain is whether it stays drained when the region is undrained.
        # The audit says both: "drained" as routed, and its own ("drained": true -> true alone
        # read as nothing done).
        own = drained_regions[target["region"]]
        before["own_drain"] = uid in own
        if changes["drained"] and uid not in own:
            own.append(uid)
        elif not changes["drained"] and uid in own:
            own.remove(uid)
        before["drained"] = after["drained"] = True
        after["own_drain"] = uid in own
    new_ups = [{**u, **routed(after)} if u["id"] == uid else u for u in ups]
    return _with_drained_regions({**doc, "upstreams": new_ups}, drained_regions), before, after


def routed(after: dict[str, Any]) -> dict[str, Any]:
    """A change's fields as an upstream holds them: ``own_drain`` is the audit's alone."""
    return {k: v for k, v in after.items() if k != "own_drain"}


def is_unchanged(entry: Mapping[str, str]) -> bool:
    """Whether a change's answer is ``unchanged``'s: nothing was written."""
    return entry.get("changed") == "false"


def unchanged(who: str, what: str, before: dict[str, Any], version: int) -> dict[str, str]:
    """The answer to a change that changes nothing (a drain of a drained upstream, a weight
    it has): no new version, no audit entry, said as such (``changed``: "false"); it bumped
    the version and audited "{"weight": 1.0} -> {"weight": 1.0}", which scripts that drain
    idempotently filled the trail with."""
    return {**audit_entry(who, what, before, before, version), "changed": "false"}


def stranded(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a change from document ``before`` to ``after`` leaves with no undrained upstream:
    each model some upstream takes now and none would, everywhere or within a residency
    rule's regions. The document's view (drains alone, no health, no traffic), for where no
    gateway answers the impact query: ``ctl --redis`` drained a model's last upstream without
    a word (gateway.http.dashboard.impact.stranded says the same of live snapshots)."""

    def takes(doc: dict[str, Any], model: str, regions: tuple[str, ...] | None = None) -> bool:
        return any(
            model in u.get("models", ())
            and not u.get("drained")
            and (regions is None or u.get("region") in regions)
            for u in doc.get("upstreams", [])
        )

    out: list[str] = []
    for model in sorted({m for u in before.get("upstreams", []) for m in u.get("models", ())}):
        if takes(before, model) and not takes(after, model):
            out.append(f"model {model}")
            continue
        for rule in before.get("residency", []):
            regions = tuple(rule.get("regions", ()))
            if takes(before, model, regions) and not takes(after, model, regions):
                out.append(f"model {model} for clients under residency rule {_rule_name(rule)}")
    return out


def _drained_regions(doc: dict[str, Any]) -> dict[str, list[str]]:
    """A copy of ``doc``'s drained_regions, to change."""
    return {rid: list(own) for rid, own in doc.get(DRAINED_REGIONS, {}).items()}


def _with_drained_regions(doc: dict[str, Any], drained: dict[str, list[str]]) -> dict[str, Any]:
    # Left out when empty, as routing_doc writes it.
    out = {k: v for k, v in doc.items() if k != DRAINED_REGIONS}
    return {**out, DRAINED_REGIONS: drained} if drained else out


def _not_drained(rid: str, members: list[dict[str, Any]]) -> str:
    """Why region ``rid``, not drained as a region but every member drained, cannot be
    undrained, and what would."""
    ids = [u["id"] for u in members]
    them = (
        f"its upstream {ids[0]} is drained on its own"
        if len(ids) == 1
        else f"its upstreams {', '.join(ids)} are drained on their own"
    )
    # Undrained whole, it could undrain one an operator drained on purpose: nothing tells
    # those apart from the region's in a drain written before drained_regions.
    return (
        f"region {rid} is not drained as a region: {them} (a region drained before this "
        f"version included); undrain each: {', '.join(f'ctl undrain {i}' for i in ids)}"
    )


def change_region(
    doc: dict[str, Any], rid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Drain or undrain region ``rid`` in one change: one version, one audit entry naming the
    region, so no gateway ever routes on a half-drained region. Draining sets every member's
    flag and lists the region in drained_regions with the members already drained (on their
    own); undraining clears the flags of the others, so an upstream an operator drained on its
    own stays drained. Before and after hold each member's effective drain (its own or its
    region's): {"a1": {"drained": false}, ...}."""
    if set(changes) != {"drained"}:
        got = ", ".join(sorted(set(changes) - {"drained"})) or "nothing"
        raise FleetConfigInvalid(f"a region change sets drained (true or false); got {got}")
    _check_value("drained", bool, changes["drained"])
    drain: bool = changes["drained"]
    regions = doc.get("regions", [])
    if not any(r["id"] == rid for r in regions):
        raise FleetConfigInvalid(f"no region {rid!r}; known: {', '.join(r['id'] for r in regions)}")
    ups = doc.get("upstreams", [])
    members = [u for u in ups if u["region"] == rid]
    if not members:
        raise FleetConfigInvalid(f"region {rid!r} has no upstreams to drain or undrain")
    drained_regions = _drained_regions(doc)
    was = rid in drained_regions
    before = {u["id"]: {"drained": was or bool(u.get("drained", False))} for u in members}
    if drain:
        # Drained again: its list stays (each member's flag is already the region's).
        drained_regions.setdefault(rid, [u["id"] for u in members if u.get("drained", False)])
        out = {u["id"] for u in members}
    elif not was:
        if all(u.get("drained", False) for u in members):
            raise FleetConfigInvalid(_not_drained(rid, members))
        return doc, before, before  # not drained: nothing to undrain (callers say so)
    else:
        out = set(drained_regions.pop(rid))  # those drained on their own stay out
    new_ups = [{**u, "drained": u["id"] in out} if u["region"] == rid else u for u in ups]
    after = {u["id"]: {"drained": u["drained"]} for u in new_ups if u["region"] == rid}
    new_doc = _with_drained_regions({**doc, "upstreams": new_ups}, drained_regions)
    return new_doc, before, after


# What operators change at run time (CHANGEABLE; a region's drain is drained_regions, which is
# not compared): a fleet's document parts from its seed file there by design, so those
# differences are not the file's.
OPERATED = tuple(CHANGEABLE)


def _keyed(
    items: list[dict[str, Any]], name: Callable[[dict[str, Any]], str]
) -> dict[str, dict[str, Any]]:
    return {name(i): {k: v for k, v in i.items() if k not in OPERATED} for i in items}


def _id(item: dict[str, Any]) -> str:
    return str(item["id"])


def _rule_name(rule: dict[str, Any]) -> str:
    # policy_from's name for it: the warning and /routing-table use the same names.
    return rule_name(
        rule.get("name", ""),
        rule.get("countries", ()),
        rule.get("continents", ()),
        rule.get("regions", ()),
    )


def file_differences(file_doc: dict[str, Any], fleet_doc: dict[str, Any]) -> list[str]:
    """How a gateway's file (its routing part) differs from the fleet's document, both as
    ``routing_doc`` writes them, leaving out what operators change (weights, biases, drains):
    e.g. ["upstreams only in the file: c", "residency rules that differ: eu-only"]."""
    out = []
    for kind, field, name in (
        ("regions", "regions", _id),
        ("upstreams", "upstreams", _id),
        ("residency rules", "residency", _rule_name),
    ):
        mine = _keyed(file_doc.get(field, []), name)
        fleet = _keyed(fleet_doc.get(field, []), name)
        for what, ids in (
            ("only in the file", mine.keys() - fleet.keys()),
            ("only in Redis", fleet.keys() - mine.keys()),
            ("that differ", {i for i in mine.keys() & fleet.keys() if mine[i] != fleet[i]}),
        ):
            if ids:
                out.append(f"{kind} {what}: {', '.join(sorted(ids))}")
    return out


def audit_entry(
    who: str, what: str, before: dict[str, Any], after: dict[str, Any], version: int
) -> dict[str, str]:
    return {
        "who": who,
        "what": what,
        "before": json.dumps(before),
        "after": json.dumps(after),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": str(version),
    }


def base_config(doc: dict[str, Any]) -> Config:
    """A Config around a fleet document, for validation where there is no gateway file
    (``geogate ctl``): FleetConfigInvalid, saying where, for one a gateway would refuse."""
    regions = doc.get("regions")
    first = regions[0] if isinstance(regions, list) and regions else None
    region = first.get("id") if isinstance(first, dict) else None
    try:
        return Config.model_validate({"gateway": {"region": region or "none"}, **doc})
    except ValidationError as exc:
        raise _invalid(exc) from None
