"""What gateway.h1 answers itself, before or instead of the app: in the API's JSON error shape,
as every other error of the gateway, and with the connection closed."""

from __future__ import annotations

import http
import json
from collections.abc import Awaitable, Callable

from gateway import defaults as d
from gateway.errors import GatewayError, GatewayOverloaded
from gateway.http.asgi import Receive, Scope, Send
from gateway.http.errors import error_body, send_error, status_of


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, and gateway.h1.conn answers 431."""


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
