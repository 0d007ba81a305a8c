"""The floor under geogate: the smallest proxy on the same server stack, for bench/overhead.py's
``--peers floor-asgi,floor-rsgi,floor-uvicorn`` and bench/ab.py's floor-uvicorn and floor-h1.

The same server (granian: uvloop, one worker, HTTP/1.1 + h2c; or uvicorn) and the same
upstream client as the gateway (gateway.client: pooled keep-alive connections, the body passed
through; aiohttp until issue 14's fourth round, when the gateway stopped using it), and nothing
else: no routing, no GeoIP, no metrics, no access log, no timeouts, no retries, no header
filtering. It reads the body, posts it to the one backend, and copies status, Content-Type and
the body back: a whole answer in one piece, an event stream chunk by chunk.
geogate minus floor-asgi is what geogate's own code costs per request; floor-asgi against
floor-rsgi is the price of granian's ASGI bridge against its native RSGI interface for a proxy;
floor-asgi against nginx is the price of the Python server stack itself, which no change to
geogate's code can remove.

Run by granian as ``bench.floor_proxy:asgi`` or ``bench.floor_proxy:rsgi``, by uvicorn's CLI
(its own httptools protocol), or as ``python bench/floor_proxy.py --port N``: uvicorn with
gateway.h1's protocol, as geogate runs (floor-h1). With ``--splice`` (floor-splice) a stream's
body after the head goes by gateway.http.relay as geogate's does: the pipe to the client's
connection and, from the first chunk boundary, the C splice (gateway._splice): the floor under
geogate's whole streaming path, its own code (routing, metrics, access line, header filtering,
retries, deadlines) being the difference. The backend's address comes from $FLOOR_UPSTREAM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: floor-h1

from gateway.client import Client
from gateway.defaults import CONNECT_TIMEOUT_S, IDLE_TIMEOUT_S, TOTAL_TIMEOUT_S
from gateway.http.exchange import Exchange
from gateway.http.relay import relay
from gateway.http.watchdog import Watchdog

UPSTREAM_ENV = "FLOOR_UPSTREAM"
SSE = "text/event-stream"
JSON = [(b"content-type", b"application/json")]
_session: Client | None = None
_SPLICE = False  # floor-splice: set by --splice

Message = MutableMapping[str, Any]


def _upstream() -> str:
    return os.environ[UPSTREAM_ENV]


def _http() -> Client:
    global _session
    if _session is None:  # at its first request, as the gateway's at start-up
        _session = Client(CONNECT_TIMEOUT_S)
    return _session


async def close() -> None:
    """Close the upstream session (bench/request_path.py runs this app in its own process)."""
    global _session
    if _session is not None:
        await _session.close()
        _session = None


async def _lifespan(
    receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def asgi(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    # One wake-up for a 2xx head and its first bytes, as geogate's attempt asks (until_body).
    resp = await _http().request(
        scope["method"], _upstream() + scope["path"], JSON, body, until_body=True
    )
    ctype = resp.header(b"content-type") or "application/octet-stream"
    start = {"type": "http.response.start", "status": resp.status}
    if not ctype.startswith(SSE):  # a whole answer: one send, its length known
        data = await resp.read()
        length = (b"content-length", str(len(data)).encode())
        await send({**start, "headers": [(b"content-type", ctype.encode()), length]})
        await send({"type": "http.response.body", "body": data})
        return
    try:
        await send({**start, "headers": [(b"content-type", ctype.encode())]})
        if _SPLICE:
            await _spliced(scope, resp, send)
        else:
            while chunk := await resp.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except BaseException:
        resp.close()  # the client left: the upstream connection is out of step
        raise
    resp.release()


async def _spliced(scope: Message, resp: Any, send: Callable[[Message], Awaitable[None]]) -> None:
    """The body's rest as geogate carries it (floor-splice): gateway.http.relay, with the
    least it needs (a request record for the byte count, a watchdog for the idle deadline)."""
    with Watchdog(IDLE_TIMEOUT_S, TOTAL_TIMEOUT_S) as watchdog:
        # "splice", or "python" where the body ended before a chunk boundary came (a short,
        # fast answer), as in geogate
        await relay(resp, send, Exchange("", scope, 0.0), watchdog, None)


async def rsgi(scope: Any, proto: Any) -> None:
    body = await proto()
    resp = await _http().request(
        scope.method, _upstream() + scope.path, JSON, body, until_body=True
    )
    ctype = resp.header(b"content-type") or "application/octet-stream"
    if not ctype.startswith(SSE):
        proto.response_bytes(resp.status, [("content-type", ctype)], await resp.read())
        return
    try:
        transport = proto.response_stream(resp.status, [("content-type", ctype)])
        while chunk := await resp.readany():
            await transport.send_bytes(chunk)
    except BaseException:
        resp.close()
        raise
    resp.release()


def _serve_on_gateway_h1() -> None:
    """uvicorn with gateway.h1's protocol at its default head caps, on uvloop, with no access
    log, proxy headers or Server header, as the gateway runs it. Not the gateway's connection
    limit, backlog, 75 s keep-alive or lifespan (gateway/server.py): settings that change no
    steady benchmark's CPU per request."""
    import argparse

    import uvicorn

    from gateway import defaults as d
    from gateway.h1 import capped

    ap = argparse.ArgumentParser(description="the floor proxy on gateway.h1 (floor-h1)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--splice", action="store_true", help="streams by gateway.http.relay")
    args = ap.parse_args()
    port = args.port
    global _SPLICE
    _SPLICE = args.splice
    protocol = capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, d.HEAD_TIMEOUT_S, d.MAX_BODY_BYTES)
    uvicorn.run(
        asgi,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=protocol,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    _serve_on_gateway_h1()
