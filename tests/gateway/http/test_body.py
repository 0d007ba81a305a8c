"""A request's body read whole: taken at once from gateway.h1, bounded in size, time and
pieces (granian hands the app a message per chunk sent)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.defaults import BODY_MAX_PIECES, BODY_SMALL_PIECE_BYTES
from gateway.errors import BodyTooLarge
from gateway.http.asgi import BODY
from gateway.http.body import read_body


async def test_a_body_the_server_already_holds_is_taken_without_receive() -> None:
    """gateway.http.asgi.BODY (gateway.h1): no receive(), no deadline; the limit still holds."""

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive() is not called when the server hands the body over")

    def scope(body: bytes) -> dict[str, Any]:
        return {"headers": [], "extensions": {BODY: lambda: body}}

    assert await read_body(scope(b'{"model": "m"}'), receive, 100, 5.0) == b'{"model": "m"}'
    with pytest.raises(BodyTooLarge, match="request body is 101 bytes, over"):
        await read_body(scope(b" " * 101), receive, 100, 5.0)


async def test_a_content_length_int_cannot_read_is_not_taken_for_a_size() -> None:
    # "²" is a digit to str.isdigit and not to int(): not a 500, the body is read as it comes,
    # and its real size is what the limit holds to.
    scope = {"headers": [(b"content-length", b"\xc2\xb2")], "extensions": {BODY: lambda: b"{}"}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("the server holds the body")

    assert await read_body(scope, receive, 100, 5.0) == b"{}"


@pytest.mark.parametrize("declared", [b"9" * 19, b"1" + b"0" * 18, b"9" * 5000])
async def test_a_content_length_of_more_digits_than_a_count_is_too_large_at_once(
    declared: bytes,
) -> None:
    # Over 18 digits is over any limit: a 413 before any of the body is waited for (a
    # 19-digit length was once waited on until the body timeout), and no int() of 5,000 digits.
    scope = {"headers": [(b"content-length", declared)]}

    async def receive() -> dict[str, Any]:
        raise AssertionError("refused before the body")

    with pytest.raises(BodyTooLarge, match="over"):
        await read_body(scope, receive, 100, 5.0)


async def test_a_body_in_too_many_pieces_is_refused() -> None:
    """granian hands the app a message per chunk sent: a 500 KB body in 1-byte chunks cost
    17 CPU-seconds, more per byte the longer it was. Past BODY_MAX_PIECES: a 413."""
    pieces = 0

    async def receive() -> dict[str, Any]:
        nonlocal pieces
        pieces += 1
        return {"type": "http.request", "body": b"x", "more_body": True}

    with pytest.raises(BodyTooLarge, match=f"over {BODY_MAX_PIECES} pieces of under 64 bytes"):
        await read_body({"headers": []}, receive, 10**9, 60.0)
    assert pieces == BODY_MAX_PIECES + 1

    async def few() -> dict[str, Any]:  # as many tiny pieces as allowed pass
        nonlocal pieces
        pieces += 1
        return {"type": "http.request", "body": b"x", "more_body": pieces < BODY_MAX_PIECES}

    pieces = 0
    assert await read_body({"headers": []}, few, 10**9, 60.0) == b"x" * BODY_MAX_PIECES

    async def reads() -> dict[str, Any]:  # more pieces, each a socket read's size: no limit
        nonlocal pieces
        pieces += 1
        body = b"x" * BODY_SMALL_PIECE_BYTES
        return {"type": "http.request", "body": body, "more_body": pieces < 2 * BODY_MAX_PIECES}

    pieces = 0
    got = await read_body({"headers": []}, reads, 10**9, 60.0)
    assert len(got) == 2 * BODY_MAX_PIECES * BODY_SMALL_PIECE_BYTES
