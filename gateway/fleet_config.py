"""The fleet's routing config in Redis: one versioned JSON document, changed atomically.

Only the routing part lives there (regions, upstreams with weights, biases and drain flags,
residency rules); timeouts, ports and the like stay per gateway in its file. A change bumps
the version in the same MULTI/EXEC that writes the document, appends the audit entry, and
publishes the version, so every gateway either sees the whole change or none of it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import WatchError

from gateway import defaults as d
from gateway.config import Config
from gateway.errors import BadRequest
from gateway.fleet_keys import Keys

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
        raise BadRequest(f"invalid fleet config: {where}: {first['msg']}") from None


def change_upstream(
    doc: dict[str, Any], uid: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Returns (new doc, before, after) where before/after hold only the changed fields."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown or not changes:
        raise BadRequest(
            f"change one or more of {', '.join(CHANGEABLE)}; "
            f"got {', '.join(sorted(unknown)) or 'nothing'}"
        )
    for key, kind in CHANGEABLE.items():
        if key in changes:
            v = changes[key]
            ok = (
                isinstance(v, bool)
                if kind is bool
                else (isinstance(v, int | float) and not isinstance(v, bool))
            )
            if not ok:
                raise BadRequest(f"{key} must be {'true or false' if kind is bool else 'a number'}")
    ups = doc.get("upstreams", [])
    target = next((u for u in ups if u["id"] == uid), None)
    if target is None:
        raise BadRequest(f"no upstream {uid!r}; known: {', '.join(u['id'] for u in ups)}")
    before = {k: target.get(k) for k in changes}
    new_ups = [{**u, **changes} if u["id"] == uid else u for u in ups]
    return {**doc, "upstreams": new_ups}, before, dict(changes)


async def load(r: Redis, keys: Keys) -> tuple[dict[str, Any] | None, int]:
    doc, version = await r.hmget(keys.config, ["doc", "version"])
    return (json.loads(doc) if doc else None), int(version or 0)


async def seed(r: Redis, keys: Keys, doc: dict[str, Any], version: int) -> bool:
    """Write ``doc`` only if Redis has none (first gateway, or Redis restarted empty)."""
    async with r.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(keys.config)
            if await pipe.exists(keys.config):
                return False
            pipe.multi()
            pipe.hset(keys.config, mapping={"doc": json.dumps(doc), "version": max(version, 1)})
            pipe.publish(keys.events, str(max(version, 1)))
            await pipe.execute()
            return True
        except WatchError:
            return False  # another gateway seeded it first: fine


async def update_upstream(
    r: Redis, keys: Keys, base: Config, uid: str, changes: dict[str, Any], who: str
) -> tuple[int, Config, dict[str, Any]]:
    """Change one upstream fleet-wide. Returns (new version, new config, audit entry)."""
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.config)
                raw, ver = await pipe.hmget(keys.config, ["doc", "version"])
                doc = json.loads(raw) if raw else routing_doc(base)
                new_doc, before, after = change_upstream(doc, uid, changes)
                new_config = apply_doc(base, new_doc)
                version = int(ver or 0) + 1
                entry = audit_entry(who, f"upstream {uid}", before, after, version)
                pipe.multi()
                pipe.hset(keys.config, mapping={"doc": json.dumps(new_doc), "version": version})
                fields: Any = entry  # redis-py's field typing is narrower than what it takes
                pipe.xadd(keys.audit, fields, maxlen=d.AUDIT_MAX_LEN, approximate=True)
                pipe.publish(keys.events, str(version))
                await pipe.execute()
                return version, new_config, entry
            except WatchError:
                continue  # someone changed the config between our read and write: redo


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


async def read_audit(r: Redis, keys: Keys, count: int) -> list[dict[str, str]]:
    """Newest first."""
    rows = await r.xrevrange(keys.audit, count=count) or []
    return [
        {"id": str(rid), **{str(k): str(v) for k, v in (fields or {}).items()}}
        for rid, fields in rows
    ]
