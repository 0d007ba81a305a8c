"""The proxy's last resort: a bug still gets an OpenAI-shaped answer with the request id.

Driven in-process with a store that fails, since no real component can be made to have a bug
on demand; everything else about the proxy is tested through real processes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import Config
from gateway.http.asgi import Message
from gateway.http.intake import Proxy
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
