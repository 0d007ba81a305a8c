"""Request bodies sent compressed (``Content-Encoding``): decoded here to read the model and
the stream flag, and sent on decoded, without the header (gateway.http.intake): a model
server on Starlette (vLLM's) or Go's net/http (Ollama's) reads no compressed request body, and
one passed on as sent was its 400 for a request this gateway had read well.

A body that does not decode as its header says is the client's mistake, answered 400 here: sent
on, the backend answers 500, which would count as the backend failing and, five requests
later, eject it. Decoding is bounded by the body limit, so a small compressed body cannot
unpack into gigabytes.
"""

from __future__ import annotations

import zlib

from gateway.defaults import INFLATE_MAX_MEMBERS, INFLATE_MEMBER_BYTES, INFLATE_PIECE_BYTES
from gateway.errors import BodyTooLarge, RequestInvalid, UnsupportedEncoding

# Content coding -> zlib window bits. "deflate" is the zlib format, though some clients send
# raw deflate: that is tried when the zlib header is not there, as browsers do.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = ("gzip", "deflate", "identity")


def decoded(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its content coding undone: one of gzip, deflate, identity."""
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in codings:
        if coding != "identity" and coding not in _WBITS:
            raise UnsupportedEncoding(
                f"Content-Encoding {coding!r} is not supported by this gateway; send the body "
                f"uncompressed, or compressed with gzip or deflate",
                ACCEPTED,
            )
    if len(codings) > 1:
        # One coding: "gzip, identity" or two headers were sent on as they came (as every
        # body was then) and answered 500 by a backend that could not decode them, which
        # counted as its failure and, five requests later, ejected it, a client's mistake.
        raise UnsupportedEncoding(
            f"Content-Encoding {content_encoding!r}: send one coding, gzip or deflate",
            ACCEPTED,
        )
    if codings and codings[0] != "identity":
        body = _inflate(body, codings[0], limit)
    return body


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    out = bytearray()
    view = memoryview(data)
    at, members = 0, 0
    most = max(INFLATE_MAX_MEMBERS, limit // INFLATE_MEMBER_BYTES)  # bgzip's, at any limit
    wbits = _WBITS[coding]
    while True:  # a gzip body may hold several members, one after another
        members += 1
        if members > most:
            raise _invalid(coding, f"over {most} gzip members")
        d = zlib.decompressobj(wbits)
        try:
            at = _member(d, view, at, out, coding, limit)
        except zlib.error as exc:
            if coding == "deflate" and wbits > 0 and not out:
                wbits, at = -zlib.MAX_WBITS, 0  # raw deflate, no zlib header
                continue
            raise _invalid(coding, str(exc).split(": ")[-1]) from None
        if at == len(data) or wbits != _WBITS["gzip"]:
            break
    if at < len(data):
        raise _invalid(coding, "bytes follow the compressed data")
    return bytes(out)


def _member(
    d: zlib._Decompress, view: memoryview, at: int, out: bytearray, coding: str, limit: int
) -> int:
    """Decodes one member from ``view[at:]`` into ``out``; returns where it ended. The input
    goes in pieces of INFLATE_PIECE_BYTES: at a member's end zlib copies the input left over
    into ``unused_data``, and a whole body's rest copied at every member of a body of many
    tiny ones held the event loop for 25 s (4 MB); a piece's rest is small."""
    while not d.eof:
        if at >= len(view):
            raise _invalid(coding, "the compressed data ends early")
        piece = view[at : at + INFLATE_PIECE_BYTES]
        out += d.decompress(piece, limit + 1 - len(out))  # > 0: past the limit raises below
        if len(out) > limit or d.unconsumed_tail:
            raise BodyTooLarge(
                f"request body decodes ({coding}) to more than this gateway's limit of {limit} "
                "bytes (server.max_body_bytes); send a shorter request or ask the operator to "
                "raise it"
            )
        at += len(piece) - len(d.unused_data)
    return at


def _invalid(coding: str, why: str) -> RequestInvalid:
    return RequestInvalid(
        f"request body is not valid {coding} data ({why}), but its Content-Encoding header "
        f"says {coding}; send the body compressed as declared, or drop the header"
    )
