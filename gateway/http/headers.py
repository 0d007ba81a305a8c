"""Header rules for proxying: hop-by-hop removal, X-Forwarded-*, X-Real-IP, X-Request-Id."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from geodb.edge import HEADER as EDGE_HEADER

# RFC 9110 §7.6.1 connection-specific fields, plus the ones a proxy must set itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto"}
# Met here: gateway.h1 answered 100-continue and holds the whole body before the request goes
# on. Passed on, it had the upstream send a 100 for nothing, and any other expectation
# ("Expect: foo") a 417 the client got as the upstream's error (RFC 9110 10.1.1: a server may
# refuse what it does not know; this gateway ignores it, as nginx does).
_REQUEST_DROP |= {b"expect"}
# The edge's signed client location (geodb.edge) is for this gateway: what a backend needs of
# it is in X-Real-IP, and a backend that kept it could replay it here within its time window.
_REQUEST_DROP |= {EDGE_HEADER.encode()}
# Set here, always: the request id (ours or the client's, checked), X-Real-IP and the hop
# count (HOPS_HEADER).
HOPS_HEADER = b"geogate-hops"
_REQUEST_DROP |= {b"x-request-id", b"x-real-ip", HOPS_HEADER}
# Claims about the client or the request at the edge. Only a trusted proxy's are passed on;
# anyone else's are the client speaking about itself, and a backend (or its logs, or a rate
# limiter) that believed them would believe a forgery vouched for by the gateway. The less
# common ones too (a security review saw them reach a backend): other proxies' client-address
# headers, and the URL and method overrides some frameworks honour, past the /v1 allowlist.
_EDGE_CLAIMS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"front-end-https",
        b"x-host",
        b"client-ip",
        b"x-envoy-external-address",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"fastly-client-ip",
        b"x-original-forwarded-for",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
_RESPONSE_DROP = HOP_BY_HOP | {b"server", b"date"}

ROUTE_HEADER = "geogate-route"
# A regional gateway's hint to a client that entered the wrong region (routing.steering).
PREFERRED_REGION_HEADER = "geogate-preferred-region"
_ROUTE = ROUTE_HEADER.encode()
_PREFERRED_REGION = PREFERRED_REGION_HEADER.encode()
# Response headers this gateway sets: an upstream's (another gateway's) are dropped, since the
# client's request id, route and entry region are this gateway's to tell.
_SET_HERE = frozenset({b"x-request-id", _ROUTE, _PREFERRED_REGION})
MAX_REQUEST_ID_LEN = 128
# The sets each message is filtered by, built once: a union per request cost a copy of each.
_DROP_FROM_OTHERS = _REQUEST_DROP | _EDGE_CLAIMS
_DROP_FROM_UPSTREAM = _RESPONSE_DROP | _SET_HERE


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    """The fields named in a message's Connection ``values``: hop-by-hop for it alone. The
    values are picked up in the pass that filters the headers: a pass of its own over every
    header cost each request and each response two more calls (bench/calls.py)."""
    return {tok.strip().lower() for value in values for tok in value.split(b",")}


# RFC 9110 §5.6.2 token characters: no space, quote, comma, control or non-ASCII character,
# so an id is one word wherever it goes (a log field, a header sent back, a trace id).
_TOKEN = re.compile(rf"[!#$%&'*+\-.^_`|~0-9A-Za-z]{{1,{MAX_REQUEST_ID_LEN}}}")


def valid_request_id(value: str | None) -> bool:
    return value is not None and _TOKEN.fullmatch(value) is not None


def request_id(sent: str | None) -> str:
    return sent if sent is not None and valid_request_id(sent) else new_request_id()


def new_request_id() -> str:
    """``uuid.uuid4().hex``, the same 32 hex digits (version 4, RFC 4122 variant), without
    building a UUID object: a third of the cost (bench/hotpath.py), on every request that
    brings no id."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    return b.hex()


def upstream_request_headers(
    raw: list[tuple[bytes, bytes]],
    *,
    peer: str | None,
    client: str | None,
    peer_trusted: bool,
    scheme: str,
    rid: str,
    hops: int = 0,
    decoded: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Headers for the upstream request. ``peer`` is the socket peer, ``client`` the client
    resolved from it (the trusted-proxy walk of X-Forwarded-For); ``hops``: the gateways the
    request came through before this one (its ``geogate-hops``), one more is sent on;
    ``decoded``: the body goes on decoded, so its Content-Encoding does not.

    X-Forwarded-For from a trusted proxy is extended with the peer, the hop we received it
    from (as every proxy does: the balancer's own address stays in the chain); from anyone
    else it is replaced by the peer, so a client cannot hand our upstreams a forged chain that
    looks vouched for by the gateway. Forwarded, X-Forwarded-Host/-Port/-Proto, True-Client-IP
    and CF-Connecting-IP pass only from a trusted proxy.
    """
    drop = _REQUEST_DROP if peer_trusted else _DROP_FROM_OTHERS
    if decoded:
        drop = drop | {b"content-encoding"}
    out: list[tuple[bytes, bytes]] = []
    xff: list[bytes] = []
    proto: bytes | None = None
    connection: list[bytes] = []
    for name, value in raw:
        lname = name.lower()
        if lname == b"x-forwarded-for" and peer_trusted:
            # Its elements, without the empty ones ("X-Forwarded-For: ,,", an empty header):
            # passed on, a backend reading the first as the client read an empty one. One
            # address, as a balancer sends it, without a split (a request's every one).
            if b"," not in value:
                if value := value.strip():
                    xff.append(value)
            else:
                xff += [e for e in (part.strip() for part in value.split(b",")) if e]
        elif lname == b"x-forwarded-proto" and peer_trusted:
            proto = value
        elif lname not in drop and not (
            # X_Forwarded_For: a CGI or WSGI backend reads it as X-Forwarded-For (both are
            # HTTP_X_FORWARDED_FOR); nginx drops every such name by default.
            b"_" in lname and lname.replace(b"_", b"-") in _DROP_FROM_OTHERS
        ):
            out.append((name, value))
        elif lname == b"connection":
            connection.append(value)
    if connection:  # what it names goes too (a proxy's own X-Forwarded-* above stay ours)
        named = _connection_tokens(connection)
        out = [(n, v) for n, v in out if n.lower() not in named]
    if peer:
        xff.append(peer.encode())
    if xff:
        out.append((b"X-Forwarded-For", b", ".join(xff)))
    if client:
        # Ours, always: many backends and their logs read X-Real-IP as "the client", and this
        # one is the result of the trusted-proxy walk, so they need no proxy rules of their
        # own and cannot be handed a client's claim about itself.
        out.append((b"X-Real-IP", client.encode()))
    out.append((b"X-Forwarded-Proto", proto or scheme.encode()))
    out.append((b"X-Request-Id", rid.encode()))
    out.append((HOPS_HEADER, b"%d" % (hops + 1)))
    return out


def hops_of(value: str | None) -> int:
    """The gateways a request came through (its ``geogate-hops``); 0 without one, or with a
    value that is no small count (a client's own header: it can only shorten its own way)."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 3:
        return 0
    return int(value)


def client_response_headers(
    raw: list[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers for the client: ``raw`` with names in lower case (as
    gateway.client's Response keeps them), less the hop-by-hop ones and those this gateway
    sets, which ``extra`` adds."""
    drop = _DROP_FROM_UPSTREAM
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    for name, value in raw:
        if name not in drop:
            out.append((name, value))
        elif name == b"connection":
            connection.append(value)
    if connection:
        named = _connection_tokens(connection)
        out = [(n, v) for n, v in out if n not in named]
    out += extra
    return out


def gateway_headers(rid: str, route: str, hint: str | None) -> list[tuple[bytes, bytes]]:
    """The response headers this gateway sets on a proxied answer: the request id, the route
    (``geogate-route``), and the region hint where there is one."""
    extra = [(b"x-request-id", rid.encode()), (_ROUTE, route.encode())]
    if hint:
        extra.append((_PREFERRED_REGION, hint.encode()))
    return extra
