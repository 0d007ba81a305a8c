"""The fleet's routing document in Redis: one versioned JSON document, changed atomically.

A change bumps the version in the same MULTI/EXEC that writes the document, appends the audit
entry, and publishes the version, so every gateway either sees the whole change or none of it.
The rules for what a valid change is live in ``config_doc``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from gateway import defaults as d
from gateway.config import Config
from gateway.fleet.config_doc import (
    apply_doc,
    audit_entry,
    change_region,
    change_upstream,
    routing_doc,
)
from gateway.fleet.keys import Keys

# A change to the fleet document: doc -> (new doc, before, after), pure (``config_doc``).
Change = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]


async def load(r: Redis, keys: Keys) -> tuple[dict[str, Any] | None, int]:
    doc, version = await r.hmget(keys.config, ["doc", "version"])
    return (json.loads(doc) if doc else None), int(version or 0)


async def put_back(r: Redis, keys: Keys, doc: dict[str, Any], version: int) -> bool:
    """Write ``doc`` as ``version`` only if Redis holds no document or an older version (the
    first gateway seeding it; Redis restarted empty and a newer one goes back), and publish
    it; True if written. Compare and write in one WATCH/MULTI, retried when another writer (a
    gateway putting its own back, an operator's change) got in between: two gateways at once
    leave the higher version, never a lower one over it. No audit entry: putting a document
    back is no operator change (and a Redis that lost the document lost the trail too)."""
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.config)
                held = await pipe.hget(keys.config, "version")
                if held is not None and int(held) >= version:
                    return False
                pipe.multi()
                pipe.hset(keys.config, mapping={"doc": json.dumps(doc), "version": version})
                pipe.publish(keys.events, str(version))
                await pipe.execute()
                return True
            except WatchError:
                continue  # someone wrote between our read and write: compare again


async def update_upstream(
    r: Redis, keys: Keys, base: Config, uid: str, changes: dict[str, Any], who: str
) -> tuple[int, Config, dict[str, Any]]:
    """Change one upstream fleet-wide. Returns (new version, new config, audit entry)."""
    return await update(
        r, keys, base, f"upstream {uid}", lambda doc: change_upstream(doc, uid, changes), who
    )


async def update_region(
    r: Redis, keys: Keys, base: Config, rid: str, changes: dict[str, Any], who: str
) -> tuple[int, Config, dict[str, Any]]:
    """Drain or undrain a region's upstreams fleet-wide, as one change (``change_region``)."""
    return await update(
        r, keys, base, f"region {rid}", lambda doc: change_region(doc, rid, changes), who
    )


async def update(
    r: Redis, keys: Keys, base: Config, what: str, change: Change, who: str
) -> tuple[int, Config, dict[str, Any]]:
    """Apply ``change`` (doc -> new doc, before, after) to the fleet document atomically and
    audit it as ``what``. Returns (new version, new config, audit entry)."""
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.config)
                raw, ver = await pipe.hmget(keys.config, ["doc", "version"])
                doc = json.loads(raw) if raw else routing_doc(base)
                new_doc, before, after = change(doc)
                new_config = apply_doc(base, new_doc)
                version = int(ver or 0) + 1
                entry = audit_entry(who, what, before, after, version)
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
