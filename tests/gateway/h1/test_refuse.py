"""gateway.h1.refuse: the protocol's own answers, in the API's JSON error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway import defaults as d
from gateway.errors import (
    GatewayError,
    GatewayOverloaded,
    HeadersTooLarge,
    HeadTimeout,
    RequestInvalid,
)
from gateway.h1.refuse import (
    Refused,
    connection_limit_reached,
    malformed,
    refusal,
    timed_out,
    too_large,
)


def test_a_refusal_is_a_whole_json_response_that_closes() -> None:
    answer = refusal(HeadersTooLarge("too many headers"))
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"connection: close" in lines and b"content-type: application/json" in lines
    assert f"content-length: {len(body)}".encode() in lines
    err = json.loads(body)["error"]
    assert err == {
        "message": "too many headers",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_headers_too_large",
    }


@pytest.mark.parametrize(
    ("stop", "kind", "says", "line"),
    [
        (
            too_large(40960, 32768),
            HeadersTooLarge,
            "limit of 40960 bytes (server.max_header_bytes 32768 + 8192 for the URL)",
            "refused a request head over 40960 bytes "
            "(server.max_header_bytes 32768 + 8192 for the URL)",
        ),
        (
            timed_out(1.5),
            HeadTimeout,
            "did not arrive within 1.5 s (server.head_timeout_s)",
            "closed a connection whose request head was not complete in 1.5 s",
        ),
        (malformed("bad"), RequestInvalid, "bad", "refused a malformed HTTP/1.1 request"),
    ],
)
def test_each_refusal_names_its_error_and_its_log_line(
    stop: Refused, kind: type[Exception], says: str, line: str
) -> None:
    assert type(stop.err) is kind and says in stop.err.message
    assert stop.line == line


def test_past_the_connection_limit_the_app_answers_a_json_503_with_retry_after() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body is not read")

    app = connection_limit_reached(2, object())  # server.max_connections, an app without the hook
    asyncio.run(app({"type": "http"}, receive, send))  # type: ignore[arg-type]
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"connection"] == b"close"
    assert headers[b"retry-after"] == str(d.CONNECTION_LIMIT_RETRY_AFTER_S).encode()
    err = json.loads(body["body"])["error"]
    assert err["code"] == "gateway_at_capacity"
    assert "connection limit of 2 open connections" in err["message"]


def test_past_the_connection_limit_an_app_with_the_hook_answers_itself() -> None:
    """The gateway's app (gateway.http.dispatch) counts and logs the refusal: h1 hands it the
    request and the error instead of answering on its own."""
    got: list[tuple[dict[str, Any], GatewayError]] = []

    class App:
        async def over_connection_limit(
            self, scope: dict[str, Any], send: Any, err: GatewayError
        ) -> None:
            got.append((scope, err))

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("h1 sent an answer of its own")

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body is not read")

    refusal = connection_limit_reached(3, App())
    asyncio.run(refusal({"type": "http", "path": "/v1/x"}, receive, send))  # type: ignore[arg-type]
    [(scope, err)] = got
    assert scope["path"] == "/v1/x" and isinstance(err, GatewayOverloaded)
    assert err.retry_after_s == d.CONNECTION_LIMIT_RETRY_AFTER_S
    assert "connection limit of 3 open connections" in str(err)
