"""What ``geogate dns export`` was asked for: the zone, the name in it, TTL and health checks."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from gateway.config_routing import dns_address
from gateway.defaults import DNS_CHECK_INTERVAL_S, DNS_CHECK_TIMEOUT_S, DNS_TTL_S

# A DNS label as zones use them (RFC 1035's letters, digits and hyphens; "_" for service names).
LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# RFC 2181 §8: a TTL is at most 2^31 - 1; PowerDNS fails the whole zone (SERVFAIL) over one above.
MAX_TTL_S = 2**31 - 1
# A check less often than hourly would leave a dead region answered for that long: a larger
# value is a mistake (milliseconds for seconds, most likely), as is a check waiting a minute.
MAX_CHECK_INTERVAL_S = 3600
MAX_CHECK_TIMEOUT_S = 60
# RFC 1035 §3.1: a name is at most 255 bytes on the wire (each label's length byte and the
# root's zero included), so "a.b." takes len + 1. PowerDNS refuses a zone holding a longer one
# whole ("name too long to append"), and Route 53 the change.
MAX_NAME_BYTES = 255
SERIAL_MODULUS = 2**32  # an SOA serial is 32 bits and compares in serial arithmetic (RFC 1982)


class OptionError(ValueError):
    """An argument the export cannot write: the CLI says it in one line, naming the option."""


def domain(name: str, what: str, fix: str = "") -> str:
    """``name`` as a fully qualified domain name (trailing dot), or OptionError saying why not
    (``fix``: what to shorten, when it is too long)."""
    labels = name.rstrip(".").split(".")
    if not name.rstrip(".") or not all(LABEL.fullmatch(x) for x in labels):
        raise OptionError(
            f"{what} {name!r} is not a domain name (labels of letters, digits and hyphens, "
            "joined by dots)"
        )
    return fits(".".join(labels).lower() + ".", what, fix or f"shorten the {what}")


def fits(fqdn: str, what: str, fix: str) -> str:
    """``fqdn`` (fully qualified), or OptionError when it is longer than a DNS name may be."""
    size = len(fqdn.encode("ascii")) + 1  # the labels as LABEL allows them are ASCII
    if size > MAX_NAME_BYTES:
        raise OptionError(
            f"{what} {fqdn} is {size} bytes as DNS sends it, over the {MAX_NAME_BYTES} a name "
            f"may be: {fix}"
        )
    return fqdn


def next_serial(now: int, previous: int | None) -> int:
    """The SOA serial of a new export: the time (seconds), unless the zone it replaces has a
    serial not before it (two exports in one second, a clock set back, a YYYYMMDDnn serial):
    then that one plus one, so a secondary sees a newer zone and transfers it. Compared in
    serial arithmetic (RFC 1982), as secondaries compare: past 2^32 - 1 comes 0."""
    now %= SERIAL_MODULUS
    if previous is None or 0 < (now - previous) % SERIAL_MODULUS < SERIAL_MODULUS // 2:
        return now
    return (previous + 1) % SERIAL_MODULUS


@dataclass(frozen=True, slots=True)
class Options:
    zone: str  # fully qualified, e.g. "example.com."
    name: str  # the global hostname, relative to the zone: "api" (or "@", the zone's apex)
    ttl: int = DNS_TTL_S
    check_interval_s: int = DNS_CHECK_INTERVAL_S
    check_timeout_s: int = DNS_CHECK_TIMEOUT_S
    serial: int = 1
    nameservers: tuple[str, ...] = ()  # fully qualified; empty: ns1.<zone>
    # A name server's addresses, written in the zone (its own records; the parent holds the
    # same as glue): (fully qualified name, address), for names in the zone only.
    glue: tuple[tuple[str, str], ...] = ()

    @property
    def fqdn(self) -> str:
        return self.zone if self.name == "@" else f"{self.name}.{self.zone}"

    @property
    def ns(self) -> tuple[str, ...]:
        return self.nameservers or (f"ns1.{self.zone}",)

    @property
    def unaddressed(self) -> tuple[str, ...]:
        """Name servers in the zone with no address in it: a resolver that asks the zone for
        one's address (to check the parent's glue, or once that expired) gets none."""
        glued = {n for n, _ in self.glue}
        return tuple(n for n in self.ns if _in_zone(n, self.zone) and n not in glued)


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
    """Checked options; OptionError (a ValueError) with the words to fix the argument."""
    fq_zone = domain(zone, "zone", "shorten --zone")
    name = _relative(name, fq_zone)
    for value, what, low, high in (
        (ttl, "ttl", 1, MAX_TTL_S),
        (check_interval_s, "check interval", 1, MAX_CHECK_INTERVAL_S),
        (check_timeout_s, "check timeout", 1, MAX_CHECK_TIMEOUT_S),
    ):
        if value < low:
            raise OptionError(f"{what} {value} must be at least {low} s")
        if value > high:
            raise OptionError(f"{what} {value} must be at most {high} s")
    named = [_addressed(n, fq_zone) for n in nameservers]
    ns = tuple(n for n, _ in named)
    twice = next((n for i, n in enumerate(ns) if n in ns[:i]), None)
    if twice is not None:  # two NS records of one name: a typo'd copy, another was meant
        raise OptionError(f"nameserver {twice} is given twice (--ns)")
    glue = tuple((n, a) for n, addresses in named for a in addresses)
    chosen = Options(fq_zone, name, ttl, check_interval_s, check_timeout_s, serial, ns, glue)
    # The zone's own names, in full: the name "api" under a long zone may not fit.
    fits(chosen.fqdn, "name", "shorten --name or --zone")
    for n in chosen.ns:
        fits(n, "nameserver", "shorten --ns or --zone")
    if chosen.fqdn in chosen.ns:  # the geo record on the nameserver's own name
        raise OptionError(
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
    fq = domain(name, "name", "shorten --name")
    if fq == fq_zone:
        return "@"
    if fq.endswith("." + fq_zone):
        return fq[: -len(fq_zone) - 1]
    if name.endswith("."):
        raise OptionError(
            f"name {name!r} is not in zone {fq_zone}: give a name in it (api, or "
            f"api.{fq_zone}), or the zone it is in (--zone)"
        )
    return fq.rstrip(".")


def _in_zone(fq: str, fq_zone: str) -> bool:
    return fq == fq_zone or fq.endswith("." + fq_zone)


def _addressed(given: str, fq_zone: str) -> tuple[str, tuple[str, ...]]:
    """An --ns value, NAME or NAME=ADDRESS[,ADDRESS...]: the name fully qualified, and the
    addresses the zone gives it (its A and AAAA records), each as ipaddress writes it."""
    name, addressed, listed = given.partition("=")
    fq = _nameserver(name, fq_zone)
    if not addressed:
        return fq, ()
    if not _in_zone(fq, fq_zone):  # its own zone answers for it, not this one
        raise OptionError(
            f"nameserver {fq} is not in zone {fq_zone}: its addresses belong in its own zone; "
            f"give --ns {name} without '=' (or a name in this zone, ns1=ADDRESS)"
        )
    addresses = tuple(_ns_address(a, fq) for a in listed.split(","))
    twice = next((a for i, a in enumerate(addresses) if a in addresses[:i]), None)
    if twice is not None:
        raise OptionError(f"nameserver {fq}: address {twice} is given twice (--ns)")
    return fq, addresses


def _ns_address(text: str, fq: str) -> str:
    """A name server's address as the zone writes it (ipaddress's form), checked as a region's
    (``dns_address``)."""
    try:
        return str(ipaddress.ip_address(dns_address(text.strip().strip("[]"), "the name server")))
    except ValueError as exc:
        raise OptionError(f"nameserver {fq}: {exc} (--ns NAME=ADDRESS[,ADDRESS])") from None


def _nameserver(name: str, fq_zone: str) -> str:
    """An --ns name as a zone file reads it, and as --name is: relative to the zone unless it
    ends with "." (ns2 is ns2.example.com.; ns1.example.net. is itself), and one already
    ending in the zone is not appended to again (ns2.example.com); a dotted name outside the
    zone without the final "." is refused as ambiguous. An address is refused: an
    NS record names a host, whose address its own A record gives (as glue, at the parent)."""
    try:
        ipaddress.ip_address(name.rstrip(".").strip("[]"))
    except ValueError:
        pass
    else:
        raise OptionError(
            f"nameserver {name!r} is an address: --ns takes the name server's host name "
            f"(ns1 for ns1.{fq_zone}, or ns1.example.net. outside the zone)"
        )
    fq = domain(name, "nameserver", "shorten --ns")
    if name.endswith(".") or _in_zone(fq, fq_zone):
        return fq
    if "." in name:
        # ns1.example.net: an earlier release read it as that host, a zone file as
        # ns1.example.net.ZONE, a name that exists nowhere. Which was meant cannot be told.
        raise OptionError(
            f"nameserver {name!r} is ambiguous: end it with '.' for that host "
            f"({name}.), or give a name in the zone ({name.split('.')[0]} for "
            f"{name.split('.')[0]}.{fq_zone})"
        )
    return fq + fq_zone  # options checks its length, with the default's
