"""The one mapping of aiohttp's exceptions to failure kinds."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from gateway.client import Failure, FailureKind, classify


def _connector_error() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("exc", "kind", "detail"),
    [
        (TimeoutError(), FailureKind.TIMEOUT, "no first byte in 5 s"),
        (_connector_error(), FailureKind.REFUSED, "connect failed: Connection refused"),
        (aiohttp.ServerDisconnectedError(), FailureKind.RESET, "connection lost: Server"),
        (ConnectionResetError(), FailureKind.RESET, "connection lost: ConnectionResetError"),
    ],
)
def test_classify(exc: BaseException, kind: FailureKind, detail: str) -> None:
    got_kind, got_detail = classify(exc, "no first byte in 5 s")
    assert got_kind is kind
    assert got_detail.startswith(detail)


def test_failure_labels_name_the_status() -> None:
    assert Failure("a", FailureKind.STATUS, "HTTP 503", 503).label == "status_503"
    assert Failure("a", FailureKind.REFUSED, "connect failed").label == "refused"
    assert Failure("a", FailureKind.TIMEOUT, "slow").describe() == "a (slow)"


def test_the_upstream_session_keeps_no_cookies() -> None:
    """A backend's Set-Cookie must not ride along on the next client's request: the session is
    shared by every request the gateway proxies (upstreams are often named by hostname)."""
    from aiohttp import web

    from gateway.client import new_session

    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.Response(text="ok")
        resp.set_cookie("session", "alice-secret")
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = new_session(1.0)
        try:
            for _ in range(2):  # "localhost": a host name, whose cookies a jar would keep
                async with session.get(f"http://localhost:{port}/") as r:
                    assert r.status == 200
        finally:
            await session.close()
            await runner.cleanup()

    asyncio.run(main())
    assert seen == [None, None]
