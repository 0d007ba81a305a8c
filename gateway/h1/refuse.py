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

import http
import json
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import defaults as d
from gateway.errors import GatewayError, GatewayOverloaded, HeadersTooLarge, HeadTimeout
from gateway.http.asgi import Receive, Scope, Send
from gateway.http.errors import error_body, send_error, status_of
from gateway.runtime import log

# The connection (gateway.h1.conn.H1) is typed Any here: importing it would be a cycle.
H1 = Any


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, and gateway.h1.conn answers 431 (or the
    400 its ``_why`` names)."""


def refusal(err: GatewayError) -> bytes:
    """A whole response for ``err``, Connection: close."""
    status = status_of(err)
    body = json.dumps(error_body(err)).encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def connection_limit_reached(limit: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The app a request gets past ``limit`` open connections (server.max_connections + 1:
    uvicorn's limit_concurrency, which counts the asking connection too)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        retry = d.CONNECTION_LIMIT_RETRY_AFTER_S
        err = GatewayOverloaded(
            f"this gateway's connection limit of {limit - 1} open connections was "
            f"reached (server.max_connections); retry in {retry} s",
            retry_after_s=retry,
        )
        # Closed: a connection over the limit should not stay open.
        await send_error(send, err, [(b"connection", b"close")])

    return app


def head_timed_out(conn: H1) -> None:
    """A head not complete within head_timeout_s from its first byte: a JSON 408."""
    conn.head_timer = None
    if not conn.in_head or conn.transport.is_closing():
        return
    if conn.read_paused:
        # Reading waits for a pipelined response: the head is late because of this
        # side, not the client.
        conn.head_timer = conn.loop.call_later(conn.head_timeout_s, head_timed_out, conn)
        return
    log.info(
        "request head not complete in %g s from %s: closed",
        conn.head_timeout_s,
        conn.client_text(),
    )
    refuse(
        conn,
        refusal(
            HeadTimeout(
                f"the request line and headers did not arrive within {conn.head_timeout_s:g} s "
                "(server.head_timeout_s)"
            )
        ),
    )


def refuse_too_large(conn: H1) -> None:
    """A head over the cap: a JSON 431, before it is held whole."""
    log.warning("refused a request head over %d bytes from %s", conn.head_limit, conn.client_text())
    refuse(
        conn,
        refusal(
            HeadersTooLarge(  # in the app's words (gateway.http.intake.check_headers)
                f"request headers are over this gateway's limit of {conn.max_header_bytes} "
                "bytes (server.max_header_bytes); send fewer or shorter headers"
            )
        ),
    )


def refuse(conn: H1, answer: bytes) -> None:
    """Send ``answer`` (a whole response, Connection: close) and close: nothing more is
    read. Behind a response still going out it would land inside that response: the
    connection is closed instead, and the request running on it told at once."""
    conn.in_head = False
    if conn.head_timer is not None:
        conn.head_timer.cancel()
        conn.head_timer = None
    running = conn.running
    if running is not None and not running.response_complete:
        conn.close_now()
        return
    if running is not None:
        running.flush_head()  # a response still held goes first
    conn.transport.write(answer)
    conn.transport.close()
