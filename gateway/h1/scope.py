"""A request's ASGI scope on a gateway.h1 connection, and the addresses it names: looked up
once per connection, at its first request (or refusal), not when it opens: a connection that
never sends one costs no look-ups."""

from __future__ import annotations

import asyncio
import re
from typing import Any, NamedTuple
from urllib.parse import unquote

import httptools

from gateway.errors import TransferCodingUnsupported
from gateway.h1.refuse import Refused, malformed
from gateway.http.asgi import Scope

ASGI_VERSIONS = {"version": "3.0", "spec_version": "2.3"}
Address = tuple[str, int]


class Addresses(NamedTuple):
    client: Address | None
    server: Address | None
    scheme: str  # "https" on a TLS connection

    def client_text(self) -> str:
        """The client as log lines name it."""
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def _address(transport: asyncio.BaseTransport, which: str) -> Address | None:
    info = transport.get_extra_info(which)
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) else None


def addresses(transport: asyncio.BaseTransport) -> Addresses:
    return Addresses(
        _address(transport, "peername"),
        _address(transport, "sockname"),
        "https" if transport.get_extra_info("sslcontext") else "http",
    )


# RFC 3986's uri-host with an optional port: reg-name's characters, an IPv6 literal's
# brackets and colons. Anything else (spaces, "/", "@") is no host.
_HOST_VALUE = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*")


def check_framing(version: str, headers: list[tuple[bytes, bytes]]) -> None:
    """What llhttp lets through and RFC 9112 does not. One Host (3.2: a server MUST answer 400
    to an HTTP/1.1 request without one, to any with two, to an invalid one: two Hosts are two
    readings of one request, which routing or a signed edge header could be played with;
    only HTTP/1.0 may leave it out). No transfer coding but chunked (6.1: "gzip, chunked" was
    dechunked and its gzip sent on as the body; 501, as nginx answers it), and none at all
    in HTTP/1.0, which has none."""
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) > 1 or (not hosts and version != "1.0"):
        raise malformed(
            f"an HTTP/{version} request needs exactly one Host header (RFC 9112 section "
            f"3.2); this one has {len(hosts)}"
        )
    if hosts and _HOST_VALUE.fullmatch(hosts[0]) is None:
        raise malformed("the Host header is not a host name or address with an optional port")
    for name, value in headers:
        if name == b"transfer-encoding" and version == "1.0":
            # RFC 9112 6.1: framing to treat as faulty, Content-Length or not, as nginx does.
            raise malformed("Transfer-Encoding in an HTTP/1.0 request: send Content-Length")
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            shown = value.decode("latin-1")[:64]
            raise Refused(
                TransferCodingUnsupported(
                    f"Transfer-Encoding {shown!r}: this gateway takes chunked alone; send the "
                    "body with Content-Length or chunked, and Content-Encoding for gzip"
                ),
                "refused a request with a transfer coding other than chunked",
            )


def request_scope(
    method: str,
    version: str,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    where: Addresses,
    root_path: str,
    state: dict[str, Any],
    extensions: dict[str, object],
) -> Scope:
    """The scope as uvicorn builds it: the path percent-decoded, ``raw_path`` as sent (the
    framing checked before: check_framing)."""
    # Any: httptools' stubs type ``query`` as bytes, and it is None without one; code built
    # by mypyc (bench/compiled_tree.py) checks the stubs' type at run time, and refused it.
    parsed: Any = httptools.parse_url(url)
    raw_path: bytes = parsed.path or b"/"  # "http://h": an empty path is "/" (RFC 9110 4.2.3)
    query: bytes | None = parsed.query
    path = raw_path.decode("ascii")
    if "%" in path:
        path = unquote(path)
    return {
        "type": "http",
        "asgi": ASGI_VERSIONS,
        "http_version": version,
        "server": where.server,
        "client": where.client,
        "scheme": where.scheme,
        "root_path": root_path,
        "method": method,
        "path": root_path + path,
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query or b"",
        "headers": headers,
        "state": state.copy(),
        "extensions": extensions,
    }
