"""gateway.h1.refuse: the protocol's own answers, in the API's JSON error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway import defaults as d
from gateway.errors import HeadersTooLarge
from gateway.h1.refuse import connection_limit_reached, refusal


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
        "code": "request_headers_too_large",
    }


def test_past_the_connection_limit_the_app_answers_a_json_503_with_retry_after() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body is not read")

    app = connection_limit_reached(3)  # uvicorn's limit_concurrency: max_connections + 1
    asyncio.run(app({"type": "http"}, receive, send))  # type: ignore[arg-type]
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"connection"] == b"close"
    assert headers[b"retry-after"] == str(d.CONNECTION_LIMIT_RETRY_AFTER_S).encode()
    err = json.loads(body["body"])["error"]
    assert err["code"] == "gateway_at_capacity"
    assert "connection limit of 2 open connections" in err["message"]
