"""The fleet's routing document and its pure rules: what it holds, how an operator's change is
validated and applied, and the audit entry that records it. No I/O: ``config_io`` stores it.

Only the routing part is shared (regions with their drain flags, upstreams with weights,
biases and drain flags, residency rules); timeouts, ports and the like stay per gateway in
its file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from gateway.config import Config
from gateway.defaults import MAX_BIAS_MS, MAX_WEIGHT
from gateway.errors import FleetConfigInvalid

ROUTING_KEYS = ("regions", "upstreams", "residency")
CHANGEABLE = {"weight": float, "bias_ms": float, "drained": bool}


def routing_doc(config: Config) -> dict[str, Any]:
    dump = config.model_dump(mode="json")
    # A region's drain flag only where it is set: a gateway of a version before it refuses
    # the key (extra="forbid"), so while a fleet rolls onto this one, a document with no
    # drained region stays one that every gateway applies.
    for r in dump["regions"]:
        if not r["drained"]:
            del r["drained"]
    return {k: dump[k] for k in ROUTING_KEYS}


def apply_doc(config: Config, doc: dict[str, Any]) -> Config:
    """``config`` with the routing part replaced by ``doc``, validated as a whole."""
    data = config.model_dump(mode="json")
    data.update({k: doc[k] for k in ROUTING_KEYS if k in doc})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FleetConfigInvalid(f"invalid fleet config: {where}: {first['msg']}") from None


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
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise FleetConfigInvalid(f"{key} must be a finite number (got {v!r})")
    if not low <= v <= high:
        raise FleetConfigInvalid(f"{key} must be between {low:g} and {high:g} (got {v!r})")


def change_upstream(
    doc: dict[str, Any], uid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Returns (new doc, before, after) where before/after hold only the changed fields."""
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
    before = {k: target.get(k) for k in changes}
    new_ups = [{**u, **changes} if u["id"] == uid else u for u in ups]
    return {**doc, "upstreams": new_ups}, before, dict(changes)


def effective_change(doc: dict[str, Any], uid: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to upstream ``uid`` as its routing sees them: undraining an upstream of a
    drained region leaves it drained (the region's drain holds it)."""
    if "drained" not in changes:
        return dict(changes)
    region = next((u["region"] for u in doc.get("upstreams", []) if u["id"] == uid), None)
    held = any(r.get("drained", False) for r in doc.get("regions", []) if r["id"] == region)
    return {**changes, "drained": bool(changes["drained"]) or held}


def _region_drain(region: dict[str, Any], drain: bool) -> dict[str, Any]:
    # Unset rather than false, as routing_doc writes it: readable by a gateway before the flag.
    if drain:
        return {**region, "drained": True}
    return {k: v for k, v in region.items() if k != "drained"}


def change_region(
    doc: dict[str, Any], rid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Drain or undrain region ``rid`` in one change: one version, one audit entry naming the
    region, so no gateway ever routes on a half-drained region. The flag is the region's own
    (regions[].drained): an upstream an operator drained on its own stays drained when its
    region is undrained. Before and after hold each member's effective drain (its own or its
    region's): {"a1": {"drained": false}, ...}."""
    if set(changes) != {"drained"}:
        got = ", ".join(sorted(set(changes) - {"drained"})) or "nothing"
        raise FleetConfigInvalid(f"a region change sets drained (true or false); got {got}")
    _check_value("drained", bool, changes["drained"])
    drain: bool = changes["drained"]
    regions = doc.get("regions", [])
    region = next((r for r in regions if r["id"] == rid), None)
    if region is None:
        raise FleetConfigInvalid(f"no region {rid!r}; known: {', '.join(r['id'] for r in regions)}")
    ups = doc.get("upstreams", [])
    members = [u for u in ups if u["region"] == rid]
    if not members:
        raise FleetConfigInvalid(f"region {rid!r} has no upstreams to drain or undrain")
    was = bool(region.get("drained", False))
    before = {u["id"]: {"drained": was or bool(u.get("drained", False))} for u in members}
    new_ups = ups
    if not drain and not was and all(d["drained"] for d in before.values()):
        # A region drained before regions had a flag of their own (every member's flag set,
        # as this change used to do): undrained as it was drained, or the operator's undrain
        # would leave the whole region out with nothing to say why.
        new_ups = [{**u, "drained": False} if u["region"] == rid else u for u in ups]
    after = {
        u["id"]: {"drained": drain or bool(u.get("drained", False))}
        for u in new_ups
        if u["region"] == rid
    }
    new_regions = [_region_drain(r, drain) if r["id"] == rid else r for r in regions]
    return {**doc, "regions": new_regions, "upstreams": new_ups}, before, after


# What operators change at run time (CHANGEABLE, a region's drain): a fleet's document parts
# from its seed file there by design, so those differences are not the file's.
OPERATED = ("weight", "bias_ms", "drained")


def _keyed(
    items: list[dict[str, Any]], name: Callable[[dict[str, Any]], str]
) -> dict[str, dict[str, Any]]:
    return {name(i): {k: v for k, v in i.items() if k not in OPERATED} for i in items}


def _id(item: dict[str, Any]) -> str:
    return str(item["id"])


def _rule_name(rule: dict[str, Any]) -> str:
    # As policy_from names a rule, so the warning and /routing-table use the same names.
    where = "+".join([*rule.get("countries", ()), *rule.get("continents", ())])
    return str(rule.get("name") or where + "->" + "+".join(rule.get("regions", ())))


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
    (``geogate ctl``)."""
    first = doc["regions"][0]["id"] if doc.get("regions") else "none"
    return Config.model_validate({"gateway": {"region": first}, **doc})
