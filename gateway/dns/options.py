"""What ``geogate dns export`` was asked for: the zone, the name in it, TTL and health checks."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.defaults import DNS_CHECK_INTERVAL_S, DNS_CHECK_TIMEOUT_S, DNS_TTL_S

# A DNS label as zones use them (RFC 1035's letters, digits and hyphens; "_" for service names).
LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def domain(name: str, what: str) -> str:
    """``name`` as a fully qualified domain name (trailing dot), or ValueError saying why not."""
    labels = name.rstrip(".").split(".")
    if not name.rstrip(".") or not all(LABEL.fullmatch(x) for x in labels):
        raise ValueError(
            f"{what} {name!r} is not a domain name (labels of letters, digits and hyphens, "
            "joined by dots)"
        )
    return ".".join(labels).lower() + "."


@dataclass(frozen=True, slots=True)
class Options:
    zone: str  # fully qualified, e.g. "example.com."
    name: str  # the global hostname, relative to the zone: "api" (or "@", the zone's apex)
    ttl: int = DNS_TTL_S
    check_interval_s: int = DNS_CHECK_INTERVAL_S
    check_timeout_s: int = DNS_CHECK_TIMEOUT_S
    serial: int = 1
    nameservers: tuple[str, ...] = ()  # fully qualified; empty: ns1.<zone>

    @property
    def fqdn(self) -> str:
        return self.zone if self.name == "@" else f"{self.name}.{self.zone}"

    @property
    def ns(self) -> tuple[str, ...]:
        return self.nameservers or (f"ns1.{self.zone}",)


def options(
    zone: str,
    name: str,
    *,
    ttl: int = DNS_TTL_S,
    check_interval_s: int = DNS_CHECK_INTERVAL_S,
    check_timeout_s: int = DNS_CHECK_TIMEOUT_S,
    serial: int = 1,
    nameservers: tuple[str, ...] = (),
) -> Options:
    """Checked options; ValueError with the words to fix the argument."""
    fq_zone = domain(zone, "zone")
    if name != "@":
        name = domain(name, "name").rstrip(".")
        if name.endswith("." + fq_zone.rstrip(".")):  # "api.example.com" in zone example.com
            name = name[: -len(fq_zone)]
    for value, what, low in (
        (ttl, "ttl", 1),
        (check_interval_s, "check interval", 1),
        (check_timeout_s, "check timeout", 1),
    ):
        if value < low:
            raise ValueError(f"{what} {value} must be at least {low} s")
    ns = tuple(domain(n, "nameserver") for n in nameservers)
    return Options(fq_zone, name, ttl, check_interval_s, check_timeout_s, serial, ns)
