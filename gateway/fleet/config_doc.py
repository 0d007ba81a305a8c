"""The fleet's routing document and its pure rules: what it holds, how an operator's change is
validated and applied, and the audit entry that records it. No I/O: ``config_io`` stores it.

Only the routing part is shared (regions, upstreams with weights, biases and drain flags,
residency rules); timeouts, ports and the like stay per gateway in its file.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from pydantic import ValidationError

from gateway.config import Config
from gateway.defaults import MAX_BIAS_MS, MAX_WEIGHT
from gateway.errors import FleetConfigInvalid

ROUTING_KEYS = ("regions", "upstreams", "residency")
CHANGEABLE = {"weight": float, "bias_ms": float, "drained": bool}


def routing_doc(config: Config) -> dict[str, Any]:
    dump = config.model_dump(mode="json")
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


def change_region(
    doc: dict[str, Any], rid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Drain or undrain every upstream of region ``rid`` in one change: one version, one audit
    entry naming the region, so no gateway ever routes on a half-drained region. Before and
    after hold each upstream's drain flag: {"a1": {"drained": false}, ...}."""
    if set(changes) != {"drained"}:
        got = ", ".join(sorted(set(changes) - {"drained"})) or "nothing"
        raise FleetConfigInvalid(f"a region change sets drained (true or false); got {got}")
    _check_value("drained", bool, changes["drained"])
    regions = [r["id"] for r in doc.get("regions", [])]
    if rid not in regions:
        raise FleetConfigInvalid(f"no region {rid!r}; known: {', '.join(regions)}")
    ups = doc.get("upstreams", [])
    members = [u for u in ups if u["region"] == rid]
    if not members:
        raise FleetConfigInvalid(f"region {rid!r} has no upstreams to drain or undrain")
    before = {u["id"]: {"drained": bool(u.get("drained", False))} for u in members}
    after = {u["id"]: dict(changes) for u in members}
    new_ups = [{**u, **changes} if u["region"] == rid else u for u in ups]
    return {**doc, "upstreams": new_ups}, before, after


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
