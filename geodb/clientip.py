"""Which address is the client: the socket peer, or X-Forwarded-For from trusted proxies only.

The header is walked from the right: each hop was appended by the proxy in front of the one
after it, so only entries added by proxies we trust are believable. The first address, from the
right, that is not a trusted proxy is the client. A client can put anything on the left of the
header; walking from the right means a forged prefix is never reached.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks, normalised as addresses are (``normalise``): one written in the IPv4-mapped
    IPv6 form (``::ffff:10.0.0.0/104``) is its IPv4 network, or it could never hold a peer,
    which is compared as IPv4."""
    return tuple(_network(ipaddress.ip_network(c, strict=False)) for c in cidrs)


def _network(net: IPNetwork) -> IPNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        first = net.network_address.ipv4_mapped
        assert first is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((first, net.prefixlen - 96))
    return net


# Peer addresses parsed, remembered (least recently used out first): ipaddress.ip_address costs
# ~5 us and a request parses its peer twice (trusted? which client?), while a client sends many
# requests from one address. The objects are immutable, so sharing them is safe.
PARSE_CACHE_SIZE = 16384


def normalise(ip: IPAddress) -> IPAddress:
    """The one form of an address every path uses: an IPv4-mapped IPv6 address (::ffff:a.b.c.d,
    what a dual-stack socket reports) is the IPv4 address. A scoped IPv6 address (fe80::1%eth0)
    names a link on some host, not a client: ValueError."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ValueError(f"{ip} has a scope id: it is no client's address")
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress:
    """An address given as text (an explain query, a lookup, a signed header), normalised as a
    client's is; ValueError when it is not one."""
    return normalise(ipaddress.ip_address(text))


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse(addr: str) -> IPAddress | None:
    addr = addr.strip()
    if addr.startswith("[") and "]" in addr:  # "[::1]:1234"
        addr = addr[1 : addr.index("]")]
    elif addr.count(":") == 1:  # "1.2.3.4:5678"
        addr = addr.split(":", 1)[0]
    try:
        return parse_ip(addr)
    except ValueError:
        return None


def _trusted(ip: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:  # the default: no proxy in front, and no generator to run per request
        return False
    return any(ip.version == net.version and ip in net for net in trusted)


def is_trusted(addr: str, trusted: Sequence[IPNetwork]) -> bool:
    """Whether a peer address is one of the configured trusted proxies."""
    ip = _parse(addr)
    return ip is not None and _trusted(ip, trusted)


def client_ip(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted: Sequence[IPNetwork],
) -> IPAddress | None:
    """The client's address.

    ``forwarded_for`` holds every X-Forwarded-For header value in order (a header may be sent
    more than once). Returns None only when the peer itself is unparseable (a Unix socket).
    """
    peer_ip = _parse(peer) if peer else None
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return peer_ip  # no call for the default, no trusted proxies: one less per request
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer_ip
    for hop in reversed(hops):
        ip = _parse(hop)
        if ip is None:
            # A garbled entry breaks the chain of trust: stop at the last believable hop.
            return current
        current = ip
        if not _trusted(ip, trusted):
            return ip
    return current


def stops_short(client: IPAddress | None, forwarded_for: Sequence[str]) -> bool:
    """Whether ``client`` (what ``client_ip`` found) is not the first address the chain names:
    a proxy not trusted stands between, and the client is located as it (a regional gateway
    that does not trust the edge gateway in front of it, behind a trusted balancer too)."""
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    first = _parse(hops[0]) if hops else None
    return first is not None and client != first
