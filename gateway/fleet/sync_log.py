"""What the Redis store's sync says in the log: one event per thing an operator must know
(shared state stale or fresh, the sync stopped, a document seeded, put back or settled over
another, a config file no longer followed), each in words that say why and what to do."""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import checks
from gateway.fleet.settle import Settled, Stored, conflict_reason
from gateway.logs import event

log = logging.getLogger("geogate.fleet")


why = checks.error_text  # its type, its own words, any password masked


def stale(exc: Exception, url: str, synced_once: bool) -> None:
    """The sync failed: Redis's side (no traceback: its words say it) or ours (a bug, or data
    in Redis no reader expected: the traceback is what a report needs)."""
    routing = (
        "routing on the last snapshot"
        if synced_once
        else "routing on this gateway's own file and view until it answers"
    )
    said, at = why(exc), checks.redact_url(url)
    extra = event("shared-state-stale", reason=said)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        log.error("Redis at %s unreachable (%s); %s", at, said, routing, extra=extra)
    elif isinstance(exc, RedisError):
        log.error("Redis at %s refused the sync (%s); %s", at, said, routing, extra=extra)
    else:
        log.error(
            "shared-state sync failed (%s); %s; retrying", said, routing, exc_info=exc, extra=extra
        )


def fresh(version: int, again: bool) -> None:
    log.info(
        "shared state in sync%s (version %d)",
        " again" if again else "",
        version,
        extra=event("shared-state-fresh", config_version=version),
    )


def ended(exc: BaseException | None) -> None:
    said = why(exc) if exc else "it returned"
    log.error(
        "the shared-state sync stopped (%s); this gateway no longer follows the fleet and "
        "routes on its last snapshot until it restarts",
        said,
        exc_info=exc,
        extra=event("shared-state-stale", reason=said),
    )


def wrote(out: Settled, mine: Stored) -> None:
    """A document this gateway wrote: seeded or put back, or settled over another one."""
    assert out.write is not None
    version = out.write.version
    if out.dropped is not None:
        reason = conflict_reason(out, mine)
        log.error(
            "fleet config conflict: %s",
            reason,
            extra=event("config-conflict", reason=reason, change=True, config_version=version),
        )
        return
    held = "none" if out.held.doc is None else f"older (version {out.held.version})"
    log.info(
        "seeded the fleet config in Redis (version %d; Redis held %s)",
        version,
        held,
        extra=event("config-seeded", reason=held, change=True, config_version=version),
    )


def file_ignored(differs: list[str], deployment: str, version: int) -> None:
    """The fleet's document wins over the file (the file only seeds a fleet without one), so a
    changed file has no effect: said once, and what differs, rather than let the start-up
    line's upstream count (the file's) stand for what is routed."""
    log.warning(
        "the config file's routing differs from the fleet's in Redis (deployment %r, "
        "version %d), which this gateway follows: %s. The file only seeds a fleet that "
        "has none; to apply a changed file, start its gateways as a new fleet under a new "
        "redis.deployment (GEOGATE_REDIS__DEPLOYMENT, e.g. named after the file's hash)",
        deployment,
        version,
        "; ".join(differs),
        extra=event(
            "config-file-ignored",
            reason="; ".join(differs),
            config_version=version,
            deployment=deployment,
        ),
    )


def refused(version: int, exc: Exception, routed: int) -> None:
    """A fleet document this gateway cannot route on (it stays on the one it has: ``routed``,
    0 for its own file)."""
    on = f"version {routed}" if routed else "this gateway's own file"
    log.error(
        "ignoring fleet config version %d: %s; routing on %s",
        version,
        exc,
        on,
        extra=event("config-refused", reason=str(exc), config_version=version),
    )


def fleet_votes(before: frozenset[str] | set[str], after: frozenset[str] | set[str]) -> None:
    """The upstreams most gateways newly see down, and those they see up again: the log had
    an outage's start and no end."""
    if newly := sorted(after - before):
        log.warning(
            "down for the fleet: %s", ", ".join(newly), extra=event("fleet-down", upstreams=newly)
        )
    if back := sorted(before - after):
        log.info("back for the fleet: %s", ", ".join(back), extra=event("fleet-up", upstreams=back))
