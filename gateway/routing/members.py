"""Expand upstreams found by DNS into one member per address (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from gateway.config import Upstream

Address = tuple[str, int]


def member_url(base: str, host: str, port: int) -> str:
    parts = urlsplit(base)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def default_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def expand(
    declared: Sequence[Upstream], members: Mapping[str, Sequence[Address]]
) -> tuple[Upstream, ...]:
    """Declared upstreams, with each discovery one replaced by its current members (none
    until its name has been resolved once)."""
    out: list[Upstream] = []
    for u in declared:
        if u.discovery == "none":
            out.append(u)
            continue
        for host, port in sorted(members.get(u.id, ())):
            out.append(
                u.model_copy(
                    update={
                        "id": f"{u.id}@{host}:{port}",
                        "url": member_url(u.url, host, port),
                        "discovery": "none",
                    }
                )
            )
    return tuple(out)
