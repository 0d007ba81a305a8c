"""Whether a host or URL names this machine: what keeps a gateway from listing its own
listener as an upstream (a loop), and an ops listener on a public address from running without
a token. Pure: no socket module, as gateway.checks (import-linter)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def loopback_host(host: str) -> bool:
    """A host on this machine alone: a loopback address, or "localhost"."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def own_listener(url: str, host: str, port: int) -> bool:
    """Whether ``url`` names the listener at ``host``:``port``: that host, or this machine
    (loopback, 0.0.0.0 and ::, which connect here on Linux, ::ffff:127.0.0.1, and inet_aton's
    shorter forms of them, which connect as well: 127.1, 0x7f000001, 2130706433)."""
    parts = urlsplit(url)
    at = parts.port or (443 if parts.scheme == "https" else 80)
    name = (parts.hostname or "").rstrip(".")
    return at == port and (name == host.lower().rstrip(".") or _this_machine(name))


def _this_machine(name: str) -> bool:
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        aton = _inet_aton(name)
        if aton is None:
            return loopback_host(name)  # "localhost"
        ip = aton
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _inet_aton(name: str) -> ipaddress.IPv4Address | None:
    """An address in one of inet_aton's forms, which the resolver connects to as it does to
    the dotted quad: one to four parts, each decimal, octal (0...) or hex (0x...), the last
    filling the bytes left. In Python, not the socket module's: this module stays free of I/O
    libraries (import-linter)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        low = part.lower()
        base = 16 if low.startswith("0x") else 8 if len(low) > 1 and low[0] == "0" else 10
        digits = low[2:] if base == 16 else low
        if not digits or len(digits) > 12 or not digits.isascii() or not digits.isalnum():
            return None
        try:
            values.append(int(digits, base))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)
