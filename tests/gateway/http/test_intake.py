"""The proxy's last resort: a bug still gets an OpenAI-shaped answer with the request id.

Driven in-process with a store that fails, since no real component can be made to have a bug
on demand; everything else about the proxy is tested through real processes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import BodyTooLarge
from gateway.http.asgi import BODY, Message
from gateway.http.intake import Proxy, read_body
from gateway.runtime import build_runtime

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
    }
)


async def test_an_unexpected_error_is_a_json_500_naming_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = build_runtime(CFG)

    def broken(now: float) -> Any:
        raise RuntimeError("a bug")

    rt.store.snapshot = broken  # type: ignore[method-assign]
    body = json.dumps({"model": "m"}).encode()
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "scheme": "http",
        "headers": [(b"x-request-id", b"req-7")],
        "client": ("127.0.0.1", 5000),
    }
    await Proxy(rt)(scope, receive, send)
    assert sent[0]["status"] == 500
    err = json.loads(sent[1]["body"])["error"]
    assert "req-7" in err["message"] and err["type"] == "server_error"
    assert "unexpected error in request req-7" in caplog.text


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
