"""DNS discovery: resolve upstreams given as DNS names (A/AAAA, or SRV) with aiodns, again
every ``discovery.interval_s``; addresses that appear or vanish join or leave the pool.

A query that fails (timeout, server error) keeps the previous members: a DNS hiccup must
not empty a pool. An authoritative "no such name / no records" is believed, and logged.
Requests in flight to a member that left finish: they hold its URL, and its in-flight count
lives until they end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import aiodns
from aiodns.error import DNSError

from gateway.config import Upstream
from gateway.logs import event
from gateway.routing.members import Address, default_port, srv_shares
from gateway.runtime import Runtime
from gateway.ticks import Beat

log = logging.getLogger("geogate.discovery")
# c-ares codes for "the name has no such records": an answer, not a failure.
NO_RECORDS = {1, 4}  # ARES_ENODATA, ARES_ENOTFOUND


class ResolveFailed(Exception):
    pass


async def _query(resolver: aiodns.DNSResolver, name: str, qtype: str) -> list[Any]:
    try:
        result = await resolver.query_dns(name, qtype)
    except DNSError as exc:
        if exc.args and exc.args[0] in NO_RECORDS:
            return []
        raise ResolveFailed(f"{qtype} {name}: {exc.args[-1] if exc.args else exc}") from None
    return list(result.answer)


async def _addresses(resolver: aiodns.DNSResolver, host: str) -> list[str]:
    a, aaaa = await asyncio.gather(_query(resolver, host, "A"), _query(resolver, host, "AAAA"))
    return [r.data.addr for r in [*a, *aaaa] if getattr(r.data, "addr", None)]


async def resolve(
    resolver: aiodns.DNSResolver, u: Upstream
) -> tuple[tuple[Address, ...], dict[Address, float]]:
    """The upstream's members, and each one's share of its weight (empty: equal shares).
    SRV: the targets of the lowest priority (RFC 2782: a client uses a higher one only when
    none of the lower is there) that has any address; a backup at priority 20 does not share
    the load of the primaries at 10. Within it, the records' weights (routing.members'
    srv_shares)."""
    if u.discovery == "srv":
        records = await _query(resolver, u.srv, "SRV")
        groups: dict[int, list[tuple[str, int, int]]] = {}
        for r in records:
            groups.setdefault(r.data.priority, []).append(
                (r.data.target, r.data.port, r.data.weight)
            )
        tiers = [groups[p] for p in sorted(groups)]
    else:
        tiers = [[(urlsplit(u.url).hostname or "", default_port(u.url), 0)]]
    for targets in tiers:
        found: list[tuple[int, list[Address]]] = []
        for host, port, weight in targets:
            addresses = [(addr, port) for addr in await _addresses(resolver, host)]
            if addresses:
                found.append((weight, addresses))
        if found:
            members = tuple(sorted({a for _, addresses in found for a in addresses}))
            return members, srv_shares(found) if u.discovery == "srv" else {}
    return (), {}


async def discover_once(rt: Runtime) -> None:
    # A fresh c-ares channel per round: c-ares 1.2x keeps its own query cache, which pycares
    # cannot turn off, and it was seen holding a "no records" answer for seconds past the
    # SOA's negative TTL. Our interval is the cache; TTLs are the recursive resolver's job.
    named = [u for u in rt.store.config.upstreams if u.discovery != "none"]
    if not named:
        return  # none now; the fleet config may add one later, so the loop keeps running
    resolver = make_resolver(rt)
    for u in named:
        try:
            async with asyncio.timeout(rt.config.discovery.timeout_s * 2):
                members, shares = await resolve(resolver, u)
        except (ResolveFailed, TimeoutError) as exc:
            log.warning("cannot resolve upstream %s (%s); keeping its current members", u.id, exc)
            continue
        if rt.store.set_members(u.id, members, shares):
            shown = ", ".join(_shown(m, shares) for m in members) or "none"
            log.log(
                logging.WARNING if not members else logging.INFO,
                "upstream %s now resolves to: %s",
                u.id,
                shown,
                extra=event("members-changed", upstream=u.id, members=shown),
            )


def _shown(member: Address, shares: dict[Address, float]) -> str:
    host, port = member
    share = shares.get(member)
    return f"{host}:{port}" if share is None else f"{host}:{port} (weight x{share:.3g})"


def make_resolver(rt: Runtime) -> aiodns.DNSResolver:
    cfg = rt.config.discovery
    return aiodns.DNSResolver(
        nameservers=list(cfg.nameservers) or None, timeout=cfg.timeout_s, tries=2
    )


async def discovery_loop(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    beat = Beat(loop.time())  # on the worker's tick (gateway.ticks), with the background work
    while True:
        await asyncio.sleep(beat.wait(loop.time(), rt.config.discovery.interval_s))
        await discover_once(rt)
