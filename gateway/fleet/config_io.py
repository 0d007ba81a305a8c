"""The fleet's routing document in Redis: one versioned JSON document, changed atomically.

A change bumps the version in the same MULTI/EXEC that writes the document, appends the audit
entry, and publishes the version, so every gateway either sees the whole change or none of it.
The rules for what a valid change is live in ``config_doc``.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from gateway import defaults as d
from gateway.config import Config
from gateway.fleet.config_doc import apply_doc, audit_entry, change_upstream, routing_doc
from gateway.fleet.keys import Keys


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


async def read_audit(r: Redis, keys: Keys, count: int) -> list[dict[str, str]]:
    """Newest first."""
    rows = await r.xrevrange(keys.audit, count=count) or []
    return [
        {"id": str(rid), **{str(k): str(v) for k, v in (fields or {}).items()}}
        for rid, fields in rows
    ]
