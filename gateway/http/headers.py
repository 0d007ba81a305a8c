"""Header rules for proxying: hop-by-hop removal, X-Forwarded-*, X-Request-Id."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

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
_RESPONSE_DROP = HOP_BY_HOP | {b"server", b"date"}

ROUTE_HEADER = "geogate-route"
MAX_REQUEST_ID_LEN = 128


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Fields named in Connection are hop-by-hop for this one message."""
    return {
        tok.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for tok in value.split(b",")
    }


def valid_request_id(value: str | None) -> bool:
    # Printable ASCII only: the id goes into logs, and a newline in it would forge a log line.
    return bool(value) and len(value or "") <= MAX_REQUEST_ID_LEN and (value or "").isprintable()


def request_id(sent: str | None) -> str:
    return sent if sent is not None and valid_request_id(sent) else uuid.uuid4().hex


def upstream_request_headers(
    raw: list[tuple[bytes, bytes]],
    *,
    client: str | None,
    peer_trusted: bool,
    scheme: str,
    rid: str,
) -> list[tuple[str, str]]:
    """Headers for the upstream request.

    X-Forwarded-For from a trusted proxy is extended; from anyone else it is replaced, so a
    client cannot hand our upstreams a forged chain that looks vouched for by the gateway.
    """
    drop = _REQUEST_DROP | _connection_tokens(raw)
    out: list[tuple[str, str]] = []
    xff: list[str] = []
    proto: str | None = None
    for name, value in raw:
        lname = name.lower()
        if lname == b"x-forwarded-for" and peer_trusted:
            xff.append(value.decode("latin-1"))
        elif lname == b"x-forwarded-proto" and peer_trusted:
            proto = value.decode("latin-1")
        elif lname not in drop and lname != b"x-request-id":
            out.append((name.decode("latin-1"), value.decode("latin-1")))
    if client:
        xff.append(client)
    if xff:
        out.append(("X-Forwarded-For", ", ".join(xff)))
    out.append(("X-Forwarded-Proto", proto or scheme))
    out.append(("X-Request-Id", rid))
    return out


def client_response_headers(
    raw: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    raw = list(raw)
    drop = _RESPONSE_DROP | _connection_tokens(raw) | {b"x-request-id", b"geogate-route"}
    return [(n.lower(), v) for n, v in raw if n.lower() not in drop] + list(extra)
