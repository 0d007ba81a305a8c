"""A request's ASGI scope on a gateway.h1 connection, and the addresses it names: looked up
once per connection, at its first request (or refusal), not when it opens: a connection that
never sends one costs no look-ups."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple
from urllib.parse import unquote

import httptools

from gateway.errors import MethodUnsupported, TransferCodingUnsupported, VersionUnsupported
from gateway.h1.refuse import Refused, malformed
from gateway.http.asgi import Scope
from gateway.http.framing import framing_error

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


def check_framing(version: str, headers: list[tuple[bytes, bytes]]) -> None:
    """gateway.http.framing's check, as this protocol refuses: a 400 or a 501, and close;
    a version that is not 1.0 or 1.1 ("HTTP/2.0", "HTTP/0.9" in a request line, which llhttp
    reads) a 505: it was served as HTTP/1.1."""
    if version not in ("1.0", "1.1"):
        raise Refused(
            VersionUnsupported(
                f"HTTP/{version} is not supported here: send HTTP/1.1 (HTTP/2 is negotiated "
                "by TLS's ALPN, not named in a request line)"
            ),
            f"refused an HTTP/{version} request",
        )
    err = framing_error(version, headers)
    if isinstance(err, TransferCodingUnsupported):
        raise Refused(err, "refused a request with a transfer coding other than chunked")
    if err is not None:
        raise malformed(err.message)


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
    try:
        parsed: Any = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        # CONNECT's authority form ("host:443") and targets llhttp read but cannot split: a
        # callback's error, which the client got as "User callback error".
        if method == "CONNECT":
            raise Refused(
                MethodUnsupported(
                    "CONNECT is not supported: this gateway is no forward proxy; send API "
                    "requests to its /v1/ paths"
                ),
                "refused a CONNECT request",
            ) from None
        raise malformed("the request target is not a path such as /v1/models") from None
    if parsed.host is not None:  # absolute-form, "http://h/...": none but a proxy's client sends it
        if parsed.userinfo is not None:  # RFC 9110 4.2.4: an error, not a host to judge by
            raise malformed("a request target may not carry user information (user@host)")
        headers = target_host(headers, parsed.host, parsed.port)
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


def target_host(
    headers: list[tuple[bytes, bytes]], host: bytes, port: int | None
) -> list[tuple[bytes, bytes]]:
    """``headers`` with Host as an absolute-form target names it: RFC 9112 3.2.2 has the
    server ignore the Host sent and take the target's authority, so that the ops listener's
    Host check and the edge header's host binding judge the host the request names."""
    authority = b"[%s]" % host if b":" in host else host
    if port is not None:
        authority += b":%d" % port
    others = [(n, v) for n, v in headers if n != b"host"]
    return [(b"host", authority), *others]  # an HTTP/1.0 request's too, which may send none
