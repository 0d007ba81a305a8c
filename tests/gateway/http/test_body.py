"""A request's body read whole: taken at once from gateway.h1, bounded in size, time and
pieces (granian hands the app a message per chunk sent)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.defaults import BODY_SMALL_PIECE_BYTES
from gateway.errors import BodyTooLarge, RequestInvalid
from gateway.http import body
from gateway.http.asgi import BODY
from gateway.http.body import read_body
from gateway.http.upstream import ClientGone


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


async def test_a_body_in_too_many_pieces_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """granian hands the app a message per chunk sent: a 500 KB body in 1-byte chunks cost
    17 CPU-seconds in a reviewer's one-off run, more per byte the longer it was. Past
    BODY_MAX_PIECES pieces averaging under BODY_SMALL_PIECE_BYTES: a 413. (Made small here,
    100 pieces.)"""
    monkeypatch.setattr(body, "BODY_MAX_PIECES", 100)
    small = BODY_SMALL_PIECE_BYTES - 1
    pieces = 0

    def pieces_of(size: int, count: int) -> Any:
        async def receive() -> dict[str, Any]:
            nonlocal pieces
            pieces += 1
            return {"type": "http.request", "body": b"x" * size, "more_body": pieces < count}

        return receive

    with pytest.raises(BodyTooLarge, match="over 100 pieces of under 1024 bytes"):
        await read_body({"headers": []}, pieces_of(small, 10**9), 10**9, 60.0)
    assert pieces == 101
    pieces = 0  # as many small pieces as allowed pass
    assert len(await read_body({"headers": []}, pieces_of(small, 100), 10**9, 60.0)) == 100 * small
    pieces = 0  # more pieces, each a TCP segment's size (a slow upload): no limit
    got = await read_body({"headers": []}, pieces_of(1448, 300), 10**9, 60.0)
    assert len(got) == 300 * 1448
    pieces = 0  # gateway.h1 hands on a piece per read, cheaply: no limit
    scope = {"headers": [], "extensions": {BODY: lambda: None}}
    assert len(await read_body(scope, pieces_of(1, 300), 10**9, 60.0)) == 300


@pytest.mark.parametrize("gone_unreadable", [False, True])
async def test_a_disconnect_before_the_body_s_end(gone_unreadable: bool) -> None:
    """The client gone (nothing to answer), or on granian, which says "http.disconnect" for a
    body it could not read as well, a 400 that names both causes."""
    messages = iter([{"type": "http.request", "body": b"{", "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    with pytest.raises(RequestInvalid if gone_unreadable else ClientGone) as err:
        await read_body({"headers": []}, receive, 100, 5.0, gone_unreadable=gone_unreadable)
    if gone_unreadable:
        assert str(err.value) == body.BODY_UNREADABLE
