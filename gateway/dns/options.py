"""What ``geogate dns export`` was asked for: the zone, the name in it, TTL and health checks."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.defaults import DNS_CHECK_INTERVAL_S, DNS_CHECK_TIMEOUT_S, DNS_TTL_S

# A DNS label as zones use them (RFC 1035's letters, digits and hyphens; "_" for service names).
LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# RFC 2181 §8: a TTL is at most 2^31 - 1; PowerDNS fails the whole zone (SERVFAIL) over one above.
MAX_TTL_S = 2**31 - 1
# A check less often than hourly would leave a dead region answered for that long: a larger
# value is a mistake (milliseconds for seconds, most likely), as is a check waiting a minute.
MAX_CHECK_INTERVAL_S = 3600
MAX_CHECK_TIMEOUT_S = 60


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
    name = _relative(name, fq_zone)
    for value, what, low, high in (
        (ttl, "ttl", 1, MAX_TTL_S),
        (check_interval_s, "check interval", 1, MAX_CHECK_INTERVAL_S),
        (check_timeout_s, "check timeout", 1, MAX_CHECK_TIMEOUT_S),
    ):
        if value < low:
            raise ValueError(f"{what} {value} must be at least {low} s")
        if value > high:
            raise ValueError(f"{what} {value} must be at most {high} s")
    ns = tuple(domain(n, "nameserver") for n in nameservers)
    chosen = Options(fq_zone, name, ttl, check_interval_s, check_timeout_s, serial, ns)
    if chosen.fqdn in chosen.ns:  # the geo record on the nameserver's own name
        raise ValueError(
            f"name {chosen.fqdn} is a nameserver of the zone (--ns): the zone's NS records "
            "would point at the geo answers; give the API another name (api)"
        )
    return chosen


def _relative(name: str, fq_zone: str) -> str:
    """``name`` relative to the zone: "@" for the zone itself (however written), "api" for
    api.example.com; a fully qualified name (trailing dot) outside the zone is refused, where
    it would have become a name under the zone (api.example.org.example.com.)."""
    if name == "@":
        return name
    fq = domain(name, "name")
    if fq == fq_zone:
        return "@"
    if fq.endswith("." + fq_zone):
        return fq[: -len(fq_zone) - 1]
    if name.endswith("."):
        raise ValueError(
            f"name {name!r} is not in zone {fq_zone}: give a name in it (api, or "
            f"api.{fq_zone}), or the zone it is in (--zone)"
        )
    return fq.rstrip(".")
