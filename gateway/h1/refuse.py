"""What gateway.h1 answers itself, before or instead of the app: in the API's JSON error shape,
as every other error of the gateway, and with the connection closed.

httptools keeps whatever URL and headers a client sends until the head ends: past
``head_limit`` bytes of URL and headers this protocol answers 431, in the API's JSON error
shape, and closes (under the cap the app's own ``server.max_header_bytes`` check decides: the
cap only bounds what one connection can hold before it runs). Past ``head_timeout_s`` from a
request's first byte with the head unfinished (slowloris), a JSON 408; the timer is armed only
when a read leaves a head unfinished, which almost no request's does. A malformed request gets
a JSON 400 and one log line. Past ``limit_concurrency`` (server.max_connections) a request gets
the gateway's JSON 503 with Retry-After and its connection closed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from gateway import defaults as d
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    GatewayOverloaded,
    HeadersTooLarge,
    HeadTimeout,
    RequestInvalid,
)
from gateway.h1.cycle import STATUS_LINES
from gateway.http.asgi import Receive, Scope, Send
from gateway.http.errors import error_body, send_error, status_of


class Refused(Exception):
    """A request the protocol answers itself: ``err`` in JSON, and ``line`` logged with the
    client. Raised from a parser callback it stops httptools, which re-raises it as the
    ``__context__`` of its HttpParserCallbackError."""

    def __init__(self, err: GatewayError, line: str) -> None:
        super().__init__(line)
        self.err = err
        self.line = line


def answered(app: object, err: GatewayError) -> bytes:
    """``refusal(err)``, counted where the app keeps a count (the gateway's: ``count_refusal``,
    gateway.http.dispatch): no access line comes for what never reached the app, so without
    it an operator would see these only in the log. Only what is answered here is counted:
    a request's own bad body is the app's to answer (and count), a connection cut is no
    answer."""
    count: Callable[[int], None] | None = getattr(app, "count_refusal", None)
    if count is not None:
        count(status_of(err))
    return refusal(err)


def too_large(head_limit: int, max_header_bytes: int) -> Refused:
    """A head over the cap: a JSON 431, before it is held whole. The client and the log say
    the same cap, ``head_limit``, and what it is made of (they said 32768 and 40960)."""
    parts = (
        f"server.max_header_bytes {max_header_bytes} + {head_limit - max_header_bytes} for the URL"
    )
    return Refused(
        HeadersTooLarge(  # in the app's words (gateway.http.intake.check_headers)
            f"the request line and headers are over this gateway's limit of {head_limit} "
            f"bytes ({parts}); send a shorter URL or fewer, shorter headers"
        ),
        f"refused a request head over {head_limit} bytes ({parts})",
    )


def framing_too_large(raw_body_limit: int) -> Refused:
    """A chunked body whose bytes as read, framing and all, are past ``raw_body_limit``:
    a JSON 413, where a chunk extension with no end was read until the body's deadline."""
    return Refused(
        BodyTooLarge(
            f"request body is over {raw_body_limit} bytes as sent, its chunked framing "
            f"counted ({d.CHUNKED_OVERHEAD_MAX}x server.max_body_bytes); send it in fewer, "
            "larger chunks, without chunk extensions"
        ),
        f"refused a body over {raw_body_limit} bytes with its framing",
    )


def timed_out(head_timeout_s: float) -> Refused:
    """A head not complete within ``head_timeout_s`` from its first byte: a JSON 408."""
    return Refused(
        HeadTimeout(
            f"the request line and headers did not arrive within {head_timeout_s:g} s "
            "(server.head_timeout_s)"
        ),
        f"closed a connection whose request head was not complete in {head_timeout_s:g} s",
    )


def malformed(detail: str) -> Refused:
    """What the parser refused, or a request it can read but the protocol does not take."""
    return Refused(RequestInvalid(detail), "refused a malformed HTTP/1.1 request")


def refusal(err: GatewayError) -> bytes:
    """A whole response for ``err``, Connection: close."""
    status = status_of(err)
    body = json.dumps(error_body(err)).encode()
    head = (
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return STATUS_LINES[status] + head.encode() + body


def connection_limit_reached(
    limit: int, app: object
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The app a request gets past ``limit`` open connections (server.max_connections, passed
    as uvicorn's limit_concurrency). An ``app`` with ``over_connection_limit`` (the gateway's,
    gateway.http.dispatch) answers it itself, counted and with its access line; any other gets
    the plain JSON 503."""
    answer: Callable[[Scope, Send, GatewayError], Awaitable[None]] | None = getattr(
        app, "over_connection_limit", None
    )

    async def refusal(scope: Scope, receive: Receive, send: Send) -> None:
        retry = d.CONNECTION_LIMIT_RETRY_AFTER_S
        err = GatewayOverloaded(
            f"this gateway's connection limit of {limit} open connections was "
            f"reached (server.max_connections); retry in {retry} s",
            retry_after_s=retry,
        )
        if answer is not None:
            await answer(scope, send, err)
        else:  # closed: a connection over the limit should not stay open
            await send_error(send, err, [(b"connection", b"close")])

    return refusal
