"""The proxy's fast path takes exactly the requests Starlette's router would give the proxy."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.routing import Match, Route

from gateway.http.asgi import Message, Receive, Scope, Send
from gateway.http.dispatch import GatewayApp, proxied
from gateway.http.endpoints import Endpoints


class Proxy:
    """Stands for the StreamGate: an ASGI app that is not a function, which Starlette's Route
    gives every method (a function endpoint would get GET and HEAD only)."""

    rt = SimpleNamespace(config=SimpleNamespace(server=SimpleNamespace(max_header_bytes=8192)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"proxy"})


class Recorded:
    """Stands for Proxy.recorded's wrapper around the model list: an ASGI app, not a function."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


proxy_marker = Proxy()


def routes() -> list[Route]:
    # The app's own table (gateway.http.app): the endpoints' routes, then the proxy's.
    return [*Endpoints(None).routes(Recorded), Route("/v1/{path:path}", proxy_marker)]  # type: ignore[arg-type]


def starlette_picks_proxy(scope: Scope) -> bool:
    """Starlette's Router: the first full match, else the first partial one."""
    partial = None
    for route in routes():
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.endpoint is proxy_marker
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial is not None and partial.endpoint is proxy_marker


CASES = [
    ("POST", "/v1/chat/completions", ""),
    ("GET", "/v1/chat/completions", ""),
    ("POST", "/v1/", ""),
    ("GET", "/v1/models", ""),
    ("HEAD", "/v1/models", ""),
    ("POST", "/v1/models", ""),  # the models route takes GET only: the proxy answers the 405
    ("GET", "/v1/models/", ""),
    ("GET", "/v1/models/a/b", ""),
    ("DELETE", "/v1/models/a", ""),
    ("GET", "/v1/modelsX", ""),
    ("POST", "/v1/a\nb", ""),  # the route's regex stops at a newline: not found, not proxied
    ("GET", "/v1/models/a\nb", ""),
    ("POST", "/v1", ""),
    ("POST", "/v2/chat/completions", ""),
    ("GET", "/healthz", ""),
    ("GET", "/readyz", ""),
    ("POST", "/admin/config", ""),
    ("POST", "/api/v1/chat/completions", "/api"),  # a root_path: Starlette decides
]


@pytest.mark.parametrize(("method", "path", "root"), CASES)
def test_fast_path_agrees_with_starlettes_router(method: str, path: str, root: str) -> None:
    scope: Scope = {"type": "http", "method": method, "path": path, "root_path": root}
    if root:
        assert not proxied(scope)  # always left to Starlette
    else:
        assert proxied(scope) == starlette_picks_proxy(scope), (method, path)


def call(
    app: GatewayApp, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_the_app_sends_proxied_requests_to_the_proxy_and_the_rest_to_starlette() -> None:
    app = GatewayApp(proxy_marker, routes=routes())
    assert call(app, "POST", "/v1/chat/completions")[0]["status"] == 299
    assert call(app, "GET", "/nowhere")[0]["status"] == 404  # Starlette's router


def test_the_gateways_own_endpoints_keep_the_header_cap_too() -> None:
    # granian and hypercorn have no cap of server.max_header_bytes' size (uvicorn's gateway.h1
    # has): /healthz and /v1/models took 10 MB of headers. The proxy checks its own.
    app = GatewayApp(proxy_marker, routes=routes())
    big = [(b"x-big", b"x" * 9000)]
    start, body = call(app, "GET", "/healthz", big)
    assert start["status"] == 431
    assert json.loads(body["body"])["error"]["code"] == "request_headers_too_large"
    assert call(app, "GET", "/healthz", [(b"x-small", b"x" * 100)])[0]["status"] == 200
    assert call(app, "POST", "/v1/chat/completions", big)[0]["status"] == 299  # the proxy's
