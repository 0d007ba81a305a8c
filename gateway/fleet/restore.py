"""Putting a fleet document that gateways refuse right from the tools (``geogate ctl
restore``, ``POST /admin/config/restore``).

A document in Redis that a gateway cannot route on (a hand edit such as a weight of -5, or not
JSON) leaves it on the one before, and every change builds on Redis's document, so each was
refused with that document's error: only another hand edit got the fleet out. Restore writes
back the document the asking gateway routes on, unless another gateway routes on Redis's (a
newer release's document, during a rolling upgrade) or on a newer one than the asker (it was
cut off): then restoring would take the fleet back, and it is refused.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from gateway import checks
from gateway.config import Config
from gateway.errors import FleetConfigInvalid, NothingToRestore
from gateway.fleet import observations
from gateway.fleet.config_doc import apply_doc, audit_entry
from gateway.fleet.config_io import (
    FIELDS,
    STEP_S,
    commit,
    parse,
    refuse_if_behind,
    text_of,
    time_of,
)
from gateway.fleet.keys import Keys
from gateway.fleet.settle import Stored


async def restore(
    r: Redis, keys: Keys, base: Config, routed: Stored, who: str
) -> tuple[Stored, dict[str, str]]:
    """Write ``routed``, the document this gateway routes on, over Redis's, at a version above
    both and every gateway's, as an operator's change (later than the one it replaces), with
    an audit entry naming what it replaced. NothingToRestore where Redis holds a document
    ``base`` routes on, or none (the gateways put theirs back themselves), or where a gateway
    routes on Redis's; SharedStateUnavailable where one routes on a newer version than
    ``routed``. No wait after Redis's start (config_io.refuse_if_young): no gateway puts back
    a document over one it cannot read, which is what a restart's wait is for."""
    async with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                seen = await observations.versions(r, keys)
                await pipe.watch(keys.config, keys.audit)  # the audit's type: commit()
                raw = await pipe.hmget(keys.config, FIELDS)
                replaced = _version(raw[1])
                why = _unroutable(base, raw)
                _check(raw, why, seen, replaced, routed.version)  # raised: the exit resets
                refuse_if_behind(seen, routed.version)
                secs, usecs = await pipe.time()
                since = time_of(text_of(raw[3])) or 0.0
                # Above every gateway's version: refuse_if_behind saw none above routed's.
                version = max(replaced, routed.version) + 1
                stored = Stored(routed.doc, version, max(secs + usecs / 1e6, since + STEP_S))
                what = (
                    f"fleet config restored: version {routed.version}, which this gateway "
                    f"routed on, put back over a document it could not route on ({why})"
                )
                before, after = {"version": replaced}, {"version": stored.version}
                entry = audit_entry(who, what, before, after, stored.version)
                await commit(pipe, keys, stored, entry)
                return stored, entry
            except WatchError:
                continue  # written meanwhile (another restore, a mend): look again


def _check(
    raw: list[Any], why: str | None, seen: dict[str, int], replaced: int, routed: int
) -> None:
    """NothingToRestore where restoring is not what the fleet needs (``why``: _unroutable's)."""
    if not text_of(raw[0]):
        raise NothingToRestore(
            "nothing to restore: Redis holds no fleet document; the gateways put theirs back "
            "within a refresh (redis.refresh_interval_s)"
        )
    if why is None:
        raise NothingToRestore(
            "nothing to restore: the fleet's document in Redis is one this gateway routes "
            "on; change it with drain, undrain, weight or set"
        )
    # A version says which document a gateway routes on only where the two differ: a hand
    # edit of the document alone keeps the version this gateway (and the others) route on.
    on_it = sorted(gw for gw, v in seen.items() if v == replaced != routed)
    if on_it:
        raise NothingToRestore(
            f"not restored: gateway {', '.join(on_it)} routes on the fleet's document in "
            f"Redis (version {replaced}), which this one cannot (a newer release's, or this "
            "gateway's own file at odds with it): restore is for a document every gateway "
            "refuses"
        )


def _unroutable(base: Config, raw: list[Any]) -> str | None:
    """Why a gateway of ``base`` cannot route on the config hash ``raw``; None where it can,
    or where Redis holds none."""
    try:
        held = parse(raw)
    except FleetConfigInvalid as exc:
        return str(exc)
    if held.doc is None:
        return None
    try:
        apply_doc(base, held.doc)
    except FleetConfigInvalid as exc:
        return f"version {held.version}: {exc}"
    return None


def _version(raw: str | bytes | None) -> int:
    """The hash's version as a number; 0 where it is none (a hand edit's "seven")."""
    text = text_of(raw) or ""
    return int(text) if checks.is_decimal(text, 18) else 0
