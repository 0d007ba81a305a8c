"""HTTP/1.x framing a server must refuse (RFC 9112), for every engine: gateway.h1 refuses it
in its protocol (gateway.h1.scope), the others' requests are checked at the app's front door
(gateway.http.dispatch), which answers with Connection: close so that nothing after it on the
connection is read as a request.

Why the front door too: hypercorn (h11) took a request with both Content-Length and
Transfer-Encoding: chunked by its chunks and then read the rest of its Content-Length as a
second request, the classic desync a balancer in front reading Content-Length would not see;
it took "Content-Length: 73, 73" too. granian took "Transfer-Encoding: gzip, chunked", de-chunked
it, and kept the connection. What the engines' own parsers refuse they answer themselves.
"""

from __future__ import annotations

import re

from gateway.errors import GatewayError, RequestInvalid, TransferCodingUnsupported

# RFC 3986's uri-host with an optional port: reg-name's characters, or an IP literal in
# brackets (IPv6, with a zone's "%25" (RFC 6874), or IPvFuture); the port digits (none too),
# and a number to 65535. Anything else (spaces, "/", "@", a colon outside brackets but the
# port's, a port past 65535) is no host.
_HOST_VALUE = re.compile(
    rb"(?:[A-Za-z0-9\-._~%!$&'()*+,;=]*|\[[A-Za-z0-9\-._~%:!$&'()*+,;=]+\])(?::([0-9]*))?"
)
_PORT_MAX = 65535


def framing_error(version: str, headers: list[tuple[bytes, bytes]]) -> GatewayError | None:
    """What llhttp lets through and RFC 9112 does not. One Host (3.2: a server MUST answer 400
    to an HTTP/1.1 request without one, to any with two, to an invalid one: two Hosts are two
    readings of one request, which routing or a signed edge header could be played with;
    only HTTP/1.0 may leave it out). No transfer coding but chunked (6.1: "gzip, chunked" was
    dechunked and its gzip sent on as the body; 501, as nginx answers it), and none at all
    in HTTP/1.0, which has none. None: the framing is sound."""
    hosts, codings, _ = _framing(headers, with_lengths=False)
    return _checked(version, hosts, codings)


def lax_framing_error(version: str, headers: list[tuple[bytes, bytes]]) -> GatewayError | None:
    """``framing_error``, and what llhttp refuses itself but another engine's parser takes:
    Content-Length beside Transfer-Encoding (RFC 9112 6.3: framing to close on), and more than
    one Content-Length, or one that is not a single number. One pass over the headers."""
    hosts, codings, lengths = _framing(headers, with_lengths=True)
    found = _checked(version, hosts, codings)
    if found is not None:
        return found
    if lengths and codings:
        return RequestInvalid(
            "both Content-Length and Transfer-Encoding: send the body with one of them"
        )
    if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
        return RequestInvalid("Content-Length must be one number, in one header")
    return None


def _framing(
    headers: list[tuple[bytes, bytes]], *, with_lengths: bool
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The values of Host, Transfer-Encoding and Content-Length, in one pass. Content-Length's
    only ``with_lengths`` (else none): ``framing_error``, on gateway.h1's every request, has
    no use for them, llhttp having checked Content-Length itself."""
    hosts: list[bytes] = []
    codings: list[bytes] = []
    lengths: list[bytes] = []
    for name, value in headers:
        if name == b"host":
            hosts.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        elif with_lengths and name == b"content-length":
            lengths.append(value)
    return hosts, codings, lengths


def _checked(version: str, hosts: list[bytes], codings: list[bytes]) -> GatewayError | None:
    if len(hosts) > 1 or (not hosts and version != "1.0"):
        return RequestInvalid(
            f"an HTTP/{version} request needs exactly one Host header (RFC 9112 section "
            f"3.2); this one has {len(hosts)}"
        )
    if hosts and not _is_host(hosts[0]):
        return RequestInvalid("the Host header is not a host name or address with an optional port")
    if codings and version == "1.0":
        # RFC 9112 6.1: framing to treat as faulty, Content-Length or not, as nginx does.
        return RequestInvalid("Transfer-Encoding in an HTTP/1.0 request: send Content-Length")
    for value in codings:
        if value.strip().lower() != b"chunked":
            shown = value.decode("latin-1")[:64]
            return TransferCodingUnsupported(
                f"Transfer-Encoding {shown!r}: this gateway takes chunked alone; send the body "
                "with Content-Length or chunked, and Content-Encoding for gzip"
            )
    return None


def _is_host(value: bytes) -> bool:
    m = _HOST_VALUE.fullmatch(value)
    port = m.group(1) if m else None
    return m is not None and (not port or (len(port) <= 5 and int(port) <= _PORT_MAX))
