"""Expand upstreams found by DNS into one member per address (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from gateway import checks
from gateway import defaults as d
from gateway.config import Upstream

Address = tuple[str, int]


# A member of an https upstream is dialled at its address but stays its upstream to TLS and
# HTTP: the certificate names the upstream's host (not each member's IP), and a virtual host
# routes on it. Callers hand the client only a URL (they append paths to Upstream.url), so a
# member's URL carries both, the upstream's authority before MEMBER_SEP and the address after:
# "https://[userinfo@]name[:port]|address:port/path". "|" is not allowed in a URL's host, so
# no declared upstream's URL reads as a member's. A plain-http member is just its address.
MEMBER_SEP = "|"


def member_url(base: str, host: str, port: int) -> str:
    """``base`` (an upstream's URL) dialled at ``host``:``port``; its userinfo is kept, as the
    client makes its credentials an Authorization header."""
    parts = urlsplit(base)
    address = checks.address(host, port)
    userinfo, at, authority = parts.netloc.rpartition("@")
    if parts.scheme == "https":
        address = f"{authority}{MEMBER_SEP}{address}"
    return urlunsplit((parts.scheme, f"{userinfo}{at}{address}", parts.path, "", ""))


def split_member(url: str) -> tuple[str, Address | None]:
    """``url`` as its upstream names it (for the Host header, the TLS server name and the
    credentials), and the address a member's URL is dialled at (None: not a member's URL,
    dialled at its own host). Split as text, never by urlsplit: "name|[fd00::5]:443" has
    text before a bracket, which newer CPythons' urlsplit refuses (CVE-2025-0938's fix)."""
    scheme, slashes, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    authority, sep, address = hostport.partition(MEMBER_SEP)
    if not (slashes and sep):
        return url, None
    host, _, port = address.rpartition(":")
    if not host or not checks.is_decimal(port, 5):
        raise ValueError(f"not a member's address: {address!r}")
    named = f"{scheme}://{userinfo}{at}{authority}{slash}{path}"
    return named, (host.removeprefix("[").removesuffix("]"), int(port))


def default_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def srv_shares(records: Sequence[tuple[int, Sequence[Address]]]) -> dict[Address, float]:
    """Each member's share of its upstream's weight, from the SRV records of one priority:
    (the record's weight, the addresses its target resolved to). RFC 2782: a target is chosen
    in proportion to its weight, so a target's weight is split over its addresses, and an
    address that two records name gets both parts. The shares average 1, so the members of an
    upstream weigh as much together as with equal shares: the upstream's own weight (and an
    operator's change of it) applies as before. Weight 0 is the RFC's "very small chance"
    (SRV_ZERO_WEIGHT_SHARE), not the router's standby, which would rank it behind every
    weighted upstream of every region; records all of weight 0 share equally. Exact sums and
    rounded shares: a DNS server that rotates its records must not change them. Equal shares
    are none ({}): the pool's members then compare as an A/AAAA pool's do."""
    parts: dict[Address, list[float]] = {}
    for weight, addresses in records:
        for address in addresses:
            parts.setdefault(address, []).append(weight / len(addresses))
    weights = {address: math.fsum(p) for address, p in parts.items()}
    total = math.fsum(weights.values())
    if total <= 0:
        return {}
    shares = {
        address: round(w * len(weights) / total, 9) if w > 0 else d.SRV_ZERO_WEIGHT_SHARE
        for address, w in weights.items()
    }
    return {} if all(math.isclose(s, 1.0) for s in shares.values()) else shares


def member_id(upstream_id: str, host: str, port: int) -> str:
    return f"{upstream_id}@{host}:{port}"


def expand(
    declared: Sequence[Upstream],
    members: Mapping[str, Sequence[Address]],
    shares: Mapping[str, Mapping[Address, float]] | None = None,
) -> tuple[Upstream, ...]:
    """Declared upstreams, with each discovery one replaced by its current members (none
    until its name has been resolved once), each weighing its share (``srv_shares``; 1 where
    none is given) of its upstream's weight."""
    out: list[Upstream] = []
    for u in declared:
        if u.discovery == "none":
            out.append(u)
            continue
        share = (shares or {}).get(u.id, {})
        for host, port in sorted(members.get(u.id, ())):
            out.append(
                u.model_copy(
                    update={
                        "id": member_id(u.id, host, port),
                        "url": member_url(u.url, host, port),
                        "discovery": "none",
                        "weight": u.weight * share.get((host, port), 1.0),
                    }
                )
            )
    return tuple(out)
