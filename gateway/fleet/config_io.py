"""The fleet's routing document in Redis: one versioned JSON document, changed atomically.

A change bumps the version in the same MULTI/EXEC that writes the document, appends the audit
entry, and publishes the version, so every gateway either sees the whole change or none of it.
The rules for what a valid change is live in ``config_doc``; which of two documents the fleet
keeps, in ``settle``.

The config hash: ``doc`` and ``version``, as every release reads and writes them, and beside
them ``digest`` (of ``doc``) and ``changed_at`` (when the change that made it was made, Redis's
clock). A gateway of an earlier release rewrites ``doc`` and ``version`` only: a ``digest``
that is not the document's says so, and its ``changed_at`` is then another document's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from gateway import defaults as d
from gateway.config import Config
from gateway.errors import AuditUnwritable, FleetConfigInvalid, SharedStateUnavailable
from gateway.fleet import observations
from gateway.fleet.config_doc import (
    apply_doc,
    audit_entry,
    change_region,
    change_upstream,
    routing_doc,
    unchanged,
)
from gateway.fleet.keys import Keys
from gateway.fleet.settle import Settled, Stored, conflict_reason
from gateway.fleet.settle import settle as settle_rule

# A change to the fleet document: doc -> (new doc, before, after), pure (``config_doc``).
Change = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]
FIELDS = ["doc", "version", "digest", "changed_at"]
# A change is stamped at least this much after the one it replaces: see update().
STEP_S = 0.001
log = logging.getLogger("geogate.fleet")


def parse(values: list[Any]) -> Stored:
    """The config hash's FIELDS as a Stored; FleetConfigInvalid when no gateway can read them
    (a hand edit, most likely): said as such, never a JSONDecodeError traceback."""
    raw, version, digest, changed_at = (text_of(v) for v in values)
    try:
        v = int(version or 0)
    except ValueError:
        raise FleetConfigInvalid(
            f"invalid fleet config in Redis: its version {version!r} is not a number"
        ) from None
    if not raw:
        return Stored(None, v, stored_digest=digest)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise FleetConfigInvalid(
            f"invalid fleet config in Redis (version {v}): the document is not JSON ({exc})"
        ) from None
    if not isinstance(doc, dict):
        raise FleetConfigInvalid(
            f"invalid fleet config in Redis (version {v}): the document is not a JSON object"
        )
    held = Stored(doc, v, stored_digest=digest)
    if digest != held.digest:  # an earlier release wrote it: changed_at is not this one's
        return held
    return Stored(doc, v, time_of(changed_at), digest)


def text_of(value: str | bytes | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def time_of(raw: str | None) -> float | None:
    try:
        t = float(raw) if raw else None
    except ValueError:
        return None
    return t if t is not None and math.isfinite(t) else None


def fields(s: Stored) -> Any:  # redis-py's mapping typing is narrower than what it takes
    """What the hash holds for ``s``: changed_at empty where it is not known."""
    return {
        "doc": json.dumps(s.doc),
        "version": s.version,
        "digest": s.digest,
        "changed_at": "" if s.changed_at is None else repr(s.changed_at),
    }


async def read(r: Redis, keys: Keys) -> Stored:
    return parse(await r.hmget(keys.config, FIELDS))


async def mark(r: Redis, keys: Keys) -> tuple[str | None, str | None]:
    """The hash's version and digest as held: what tells one document from another without
    reading it."""
    version, digest = await r.hmget(keys.config, ["version", "digest"])
    return text_of(version), text_of(digest)


async def load(r: Redis, keys: Keys) -> tuple[dict[str, Any] | None, int]:
    held = await read(r, keys)
    return held.doc, held.version


async def settle(r: Redis, keys: Keys, mine: Stored, who: str = "") -> Settled:
    """Compare ``mine`` with Redis's document and write what ``settle.settle`` decides, in one
    WATCH/MULTI retried when another writer (a gateway settling too, an operator's change) got
    in between: the loser compares again, so two gateways at once write once. A write is
    published; a conflict is logged by the caller. Putting back a document newer than Redis's
    (Redis lost data: restarted empty, restored older) is no operator change, but the audit
    lost its trail with it: an entry by gateway ``who`` says so, or ``ctl audit`` began after
    the loss without a word (a first seed, version 1, is the fleet's start: nothing lost)."""
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.config, keys.audit)
                out = settle_rule(mine, parse(await pipe.hmget(keys.config, FIELDS)))
                if out.write is None:
                    return out
                # A put-back is written though the audit cannot take its entry: the fleet's
                # routing comes first; the entry's loss is logged once written (below).
                wrong = await audit_wrong(pipe, keys)
                pipe.multi()
                pipe.hset(keys.config, mapping=fields(out.write))
                fresh = out.write.version > max(out.held.version, 1)
                if wrong is None and out.dropped is None and fresh:
                    held = "none" if out.held.doc is None else f"version {out.held.version}"
                    what = (
                        f"fleet config put back: Redis held {held} (lost data; changes before "
                        "this may be missing here)"
                    )
                    pipe.xadd(
                        keys.audit,
                        _settled_entry(who, what, out.held, out.write),
                        maxlen=d.AUDIT_MAX_LEN,
                        approximate=True,
                    )
                if out.dropped is not None and wrong is None:
                    # Operators read the audit, not the one gateway's log that settled it: a
                    # conflict dropped drains and weights there without a word.
                    what = f"fleet config conflict: {conflict_reason(out, mine)}"
                    pipe.xadd(
                        keys.audit,
                        _settled_entry(who, what, out.dropped, out.write),
                        maxlen=d.AUDIT_MAX_LEN,
                        approximate=True,
                    )
                pipe.publish(keys.events, str(out.write.version))
                await pipe.execute()
                if wrong is not None:  # written (not before: a WATCH retry may write nothing)
                    log.warning("%s: the fleet config written now is not audited", wrong)
                return out
            except WatchError:
                continue  # someone wrote between our read and write: compare again


def _settled_entry(who: str, what: str, before: Stored, after: Stored) -> Any:
    """The audit entry of a settle that wrote (a put-back, a conflict): by gateway ``who``,
    from the version it replaced (or dropped) to the one written."""
    return audit_entry(
        f"gateway {who}".strip(),
        what,
        {"version": before.version},
        {"version": after.version},
        after.version,
    )


async def update_upstream(
    r: Redis, keys: Keys, base: Config, uid: str, changes: dict[str, Any], who: str
) -> tuple[Stored, Config, dict[str, Any]]:
    """Change one upstream fleet-wide. Returns (what Redis holds now, new config, audit entry)."""
    return await update(
        r, keys, base, f"upstream {uid}", lambda doc: change_upstream(doc, uid, changes), who
    )


async def update_region(
    r: Redis, keys: Keys, base: Config, rid: str, changes: dict[str, Any], who: str
) -> tuple[Stored, Config, dict[str, Any]]:
    """Drain or undrain a region's upstreams fleet-wide, as one change (``change_region``)."""
    return await update(
        r, keys, base, f"region {rid}", lambda doc: change_region(doc, rid, changes), who
    )


async def update(
    r: Redis, keys: Keys, base: Config, what: str, change: Change, who: str
) -> tuple[Stored, Config, dict[str, Any]]:
    """Apply ``change`` (doc -> new doc, before, after) to the fleet document atomically and
    audit it as ``what``. Returns (what Redis holds now, new config, audit entry).

    Refused while a gateway routes on a version above Redis's (Redis lost data and the
    gateways have not put theirs back yet): a change made on the older copy would be one of
    two documents, and the one dropped when they settle (``settle``) is said only in a log;
    and, for a change that changes something, for a while after Redis started
    (``refuse_if_young``)."""
    start = await started(r)
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                # The observations first, then the hash: a gateway routes only on a version
                # Redis had, and Redis's version only rises unless it lost data, so one read
                # before can be above the version read after only where Redis lost data. Read
                # after it, another operator's change committed between the two reads (and
                # adopted by a gateway) would be taken for a loss, and refused.
                seen = await observations.versions(r, keys)
                await pipe.watch(keys.config, keys.audit)  # the audit's type: commit()
                held = parse(await pipe.hmget(keys.config, FIELDS))
                refuse_if_behind(seen, held.version)
                doc = held.doc if held.doc is not None else routing_doc(base)
                new_doc, before, after = change(doc)
                try:
                    new_config = apply_doc(base, new_doc)
                except FleetConfigInvalid as exc:
                    raise _blamed(base, held, exc) from None
                if held.doc is not None and new_doc == held.doc:
                    await pipe.reset()
                    return held, new_config, unchanged(who, what, before, held.version)
                refuse_if_young(start, base)  # after the change's own checks: those said first
                secs, usecs = await pipe.time()
                # Later than the change it replaces, even if Redis's clock stepped back (a
                # failover to a replica behind): changes made one after another keep their
                # order when two documents are settled on the newer change.
                since = held.changed_at or 0.0
                stored = Stored(new_doc, held.version + 1, max(secs + usecs / 1e6, since + STEP_S))
                entry = audit_entry(who, what, before, after, stored.version)
                await commit(pipe, keys, stored, entry)
                return stored, new_config, entry
            except WatchError:
                continue  # someone changed the config between our read and write: redo


def _blamed(base: Config, held: Stored, exc: FleetConfigInvalid) -> FleetConfigInvalid:
    """A change that does not validate: the operator's, unless Redis's document did not
    either (a hand edit every gateway refuses), which the error named as the change's."""
    try:
        apply_doc(base, held.doc or {})
    except FleetConfigInvalid as held_exc:
        return FleetConfigInvalid(
            f"the fleet's document in Redis (version {held.version}) is one this gateway "
            f"cannot route on, and this change does not mend it ({held_exc}); `geogate ctl "
            "restore` puts back the document this gateway routes on"
        )
    return exc


async def commit(pipe: Pipeline, keys: Keys, stored: Stored, entry: dict[str, str]) -> None:
    """Write ``stored`` and its audit entry and publish its version: the MULTI of a WATCH
    (of the config and the audit key). Nothing is written where the audit key holds no
    stream: EXEC runs a MULTI's other commands when one fails, so the document was written
    without its entry, and the operator told the change was not applied."""
    wrong = await audit_wrong(pipe, keys)
    if wrong is not None:
        await pipe.reset()
        raise AuditUnwritable(f"{wrong}: nothing was changed; {_new_audit(keys)}")
    pipe.multi()
    pipe.hset(keys.config, mapping=fields(stored))
    audited: Any = entry  # redis-py's field typing is narrower than what it takes
    pipe.xadd(keys.audit, audited, maxlen=d.AUDIT_MAX_LEN, approximate=True)
    pipe.publish(keys.events, str(stored.version))
    await pipe.execute()


async def audit_wrong(pipe: Pipeline, keys: Keys) -> str | None:
    """What is wrong with the audit key, in words; None where it is a stream, or none yet.
    A hand edit (SET over it) leaves another type, which XADD refuses."""
    kind = text_of(await pipe.type(keys.audit))
    if kind in ("stream", "none"):
        return None
    return f"the fleet's audit log in Redis ({keys.audit}) holds a {kind}, not a stream"


def _new_audit(keys: Keys) -> str:
    """What to do about an audit key that holds no stream."""
    return f"its entries are lost; `redis-cli DEL '{keys.audit}'` starts a new audit log"


@dataclass(frozen=True)
class Started:
    """What INFO says of Redis's start: seconds up, and the keys it loaded from a saved copy
    (a restart with its dump, a restored snapshot; 0: it started empty)."""

    up: float
    loaded: int


async def started(r: Redis) -> Started | None:
    """None where INFO is refused (renamed in a managed Redis): not known. Before Redis 7.0
    INFO has no rdb_last_load_keys_loaded, and an AOF-only load may not count there: such a
    start reads as an empty one."""
    try:
        info = await r.info()
    except ResponseError:
        return None
    return Started(
        float(info.get("uptime_in_seconds", math.inf)),
        int(info.get("rdb_last_load_keys_loaded", 0) or 0),
    )


def refuse_if_young(start: Started | None, base: Config) -> None:
    """SharedStateUnavailable while Redis is younger than the gateways' reconnect and a
    refresh (redis.restart_grace_s). A restart left Redis empty or with a saved copy, and its
    observations are gone or old, so nothing there says that gateways cut off by it route on
    a newer document, which they put back meanwhile: a change made before that was the newer
    change when the two documents were settled (``settle``), and dropped what the fleet had
    changed since. A new fleet's Redis waits as long for its first change: nothing tells an
    empty restart from it."""
    grace = base.redis.change_grace_s
    if start is None or start.up >= grace:
        return
    copy = f" from a saved copy ({start.loaded} keys)" if start.loaded else ""
    wait = max(1, math.ceil(grace - start.up))
    raise SharedStateUnavailable(
        f"Redis started {start.up:.0f} s ago{copy}: gateways cut off by its restart may hold "
        f"newer changes, which they put back within {grace:g} s (redis.restart_grace_s); "
        f"retry in {wait} s",
        retry_after_s=wait,
    )


def refuse_if_behind(seen: dict[str, int], version: int) -> None:
    """SharedStateUnavailable if a gateway (``seen``: gateway -> the version it routes on)
    holds a version above Redis's ``version``."""
    ahead = {gw: v for gw, v in seen.items() if v > version}
    if ahead:
        top = max(ahead.values())
        who = ", ".join(sorted(gw for gw, v in ahead.items() if v == top))
        raise SharedStateUnavailable(
            f"Redis lost data: gateways hold version {top} ({who}), Redis {version}; wait for "
            "them to put it back (within a refresh, redis.refresh_interval_s), then retry"
        )


async def read_audit(r: Redis, keys: Keys, count: int) -> list[dict[str, str]]:
    """Newest first."""
    try:
        rows = await r.xrevrange(keys.audit, count=count) or []
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        # Redis answered: not "cannot reach Redis", as a RedisError's callers say.
        raise AuditUnwritable(
            f"the fleet's audit log in Redis ({keys.audit}) is not a stream: {_new_audit(keys)}"
        ) from None
    return [
        {"id": str(rid), **{str(k): str(v) for k, v in (row or {}).items()}} for rid, row in rows
    ]
