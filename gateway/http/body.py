"""A request's body, read whole: bounded in size (its declared length refused before a byte
is read), in time (a deadline for the whole of it) and, on granian and hypercorn, in pieces;
what gateway.h1 already read whole is taken at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.defaults import BODY_MAX_PIECES, BODY_SMALL_PIECE_BYTES
from gateway.errors import BodyTimeout, BodyTooLarge, RequestInvalid
from gateway.http.asgi import (
    BODY,
    CONTENT_LENGTH,
    NO_VALUE,
    Heads,
    Receive,
    Scope,
    WholeBody,
    header,
)
from gateway.http.upstream import ClientGone

BODY_UNREADABLE = (
    "request body could not be read to its end: malformed chunked framing, or the connection "
    "(or HTTP/2 stream) closed first"
)


def too_large(size: int | None, limit: int) -> BodyTooLarge:
    what = f"request body is {size} bytes, over" if size is not None else "request body is over"
    return BodyTooLarge(
        f"{what} this gateway's limit of {limit} bytes (server.max_body_bytes); send a "
        "shorter request or ask the operator to raise it"
    )


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    timeout_s: float,
    too_large: Callable[[int | None, int], BodyTooLarge] = too_large,
    heads: Heads | None = None,
    timeout_from: str = "server.body_timeout_s",
    gone_unreadable: bool = False,
) -> bytes:
    """The whole body, up to ``limit`` bytes, within ``timeout_s``: the deadline is for the
    body as a whole, so a client sending a byte a second cannot hold a request forever.
    ``too_large(declared size or None, limit)`` is the error for a body over ``limit``: it
    names what sets the limit, which is not ``server.max_body_bytes`` for every caller;
    ``timeout_from`` names what set ``timeout_s``, for the same reason.
    ``heads``: the request's headers already read (``read_heads``), else looked up here.
    ``gone_unreadable``: the server's "http.disconnect" before the body's end may be a body it
    could not read (granian's, for malformed chunked framing, after which it answers a plain
    500 of its own): a 400 is answered, which a client that did leave never reads."""
    declared = (
        heads.get(CONTENT_LENGTH, NO_VALUE)[0]
        if heads is not None
        else header(scope, CONTENT_LENGTH)
    )
    # A count of ASCII digits (checks.is_decimal's rule, inline: once per request): more than
    # 18 of them is over any limit, and int() is not asked to read thousands.
    if declared is not None and declared.isascii() and declared.isdigit():
        if len(declared) > 18:
            raise too_large(None, limit)
        if int(declared) > limit:
            raise too_large(int(declared), limit)
    whole: WholeBody | None = scope.get("extensions", {}).get(BODY)
    body = whole() if whole is not None else None
    if body is not None:  # all in already (gateway.h1): no receive, no deadline to keep
        if len(body) > limit:
            raise too_large(len(body), limit)
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if gone_unreadable:
                        raise RequestInvalid(BODY_UNREADABLE)
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(None, limit)
                chunks.append(chunk)
                # granian hands on a message per chunk sent: many small ones are refused, not
                # many of a socket read's size (a large upload arriving slowly). gateway.h1
                # (its BODY extension) hands on a message per read: no limit there.
                n = len(chunks)
                if n > BODY_MAX_PIECES and size < n * BODY_SMALL_PIECE_BYTES and whole is None:
                    raise BodyTooLarge(
                        f"request body came in over {BODY_MAX_PIECES} pieces of under "
                        f"{BODY_SMALL_PIECE_BYTES} bytes on average: send it in fewer, larger "
                        "chunks"
                    )
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyTimeout(
            f"request body not received within {timeout_s:g} s ({size} bytes arrived; "
            f"{timeout_from}); send the whole request at once"
        ) from None
