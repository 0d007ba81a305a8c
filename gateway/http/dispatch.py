"""The app's front door: proxied ``/v1/*`` requests go straight to the proxy, everything else
through Starlette.

Starlette's stack costs a proxied request two middlewares, a regex per route and two extra
coroutine frames on every ``send`` (each middleware wraps it): about 5 % of a worker's CPU per
non-streaming request and more per streamed one, whose every chunk is a ``send``
(bench/results/profile.md). For the proxy none of it does anything: it answers its own errors,
in JSON, and raises nothing Starlette would turn into a response (an exception after the
response started is re-raised by Starlette as well). So a request that Starlette's router would
hand to the proxy is handed to it here, with the same rule: the ``/v1/{path:path}`` route takes
every method, after ``/v1/models`` and ``/v1/models/{model:path}``, which take GET and HEAD.
Anything else, or anything unusual (a root_path, a newline in the path, which the route's regex
would not match), takes the Starlette path as before.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.errors import GatewayError, HeadersTooLarge
from gateway.http.asgi import Message, Receive, Scope, Send
from gateway.http.cors import Cors
from gateway.http.errors import send_error
from gateway.http.framing import lax_framing_error
from gateway.http.intake import check_headers

PROXIED_PREFIX = "/v1/"
MODELS = "/v1/models"
MODEL_ONE = "/v1/models/"
MODEL_METHODS = ("GET", "HEAD")
CLOSE = ((b"connection", b"close"),)  # a connection over the limit should not stay open


def proxied(scope: Scope) -> bool:
    """Whether Starlette's router would hand this request to the ``/v1/{path:path}`` route."""
    if scope["type"] != "http" or scope.get("root_path"):
        return False
    path: str = scope["path"]
    if not path.startswith(PROXIED_PREFIX) or "\n" in path:
        return False
    # The model list's own routes take GET and HEAD there; any other method is the proxy's.
    return not (scope["method"] in MODEL_METHODS and (path == MODELS or path.startswith(MODEL_ONE)))


class GatewayApp(Starlette):
    """Starlette, with the proxy's requests taken before its middleware stack."""

    def __init__(self, proxy: Any, cors: Cors | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy
        self.cors = cors  # server.cors_origins set: browsers' preflights, allowed origins
        # Another engine than gateway.h1's (granian, hypercorn): HTTP/1.x framing is checked
        # here (gateway.http.framing), as gateway.h1 checks it in its protocol.
        self.check_framing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.check_framing and scope["type"] == "http" and await self._unframed(scope, send):
            return
        if self.cors is not None and scope["type"] == "http":
            with_cors = await self.cors.handle(scope, send)
            if with_cors is None:  # a preflight, answered
                return
            send = with_cors
        if proxied(scope):
            scope["app"] = self  # as Starlette sets it
            await self.proxy(scope, receive, send)
            return
        if scope["type"] == "http":  # the proxy checks its own (intake), after its body
            try:
                check_headers(scope, self.proxy.rt.config.server.max_header_bytes)
            except HeadersTooLarge as err:  # granian and hypercorn have no cap of this size
                await send_error(send, err)
                return
        await super().__call__(scope, receive, send)

    async def _unframed(self, scope: Scope, send: Send) -> bool:
        """Whether an HTTP/1.x request's framing was refused (answered, Connection: close:
        what follows it on the connection is never read as a request)."""
        version = scope.get("http_version", "")
        if version not in ("1.0", "1.1"):
            return False
        err = lax_framing_error(version, scope["headers"])
        if err is not None:
            await self.proxy.refuse(scope, send, err, CLOSE)  # its access line, counted
        return err is not None

    def count_refusal(self, status: int) -> None:
        """gateway.h1 refused a request before this app saw it (a malformed request, a head
        too slow or too large): ``geogate_protocol_refused_total{code}``."""
        self.proxy.rt.metrics.protocol_refused.labels(str(status)).inc()

    async def over_connection_limit(self, scope: Scope, send: Send, err: GatewayError) -> None:
        """gateway.h1's answer to a request past ``server.max_connections``, given here so it
        is counted as the gate's 503s are (``geogate_overload_rejected_total``, and a ``/v1``
        request's access line and request metrics), its connection closed."""
        gate = self.proxy
        gate.rt.metrics.overloaded.labels("max_connections").inc()
        if proxied(scope) or scope["path"].startswith("/v1/"):  # the model list's too
            await gate.refuse(scope, send, err, CLOSE)
        else:  # the gateway's own endpoints (health checks, /metrics): no access line
            await send_error(send, err, list(CLOSE))


def headless(app: ASGIApp) -> ASGIApp:
    """``app`` with a HEAD request's answer sent without its body, for granian
    (gateway.engines): its HTTP/2 sent the body, and a client (curl, h2) refused the stream as
    a protocol error, so a load balancer's HEAD health check over h2 failed on a healthy
    gateway. gateway.h1 and hypercorn drop the body themselves."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            send = _headless(send)
        await app(scope, receive, send)

    return serve


def _headless(send: Send) -> Send:
    """``send`` for a HEAD request: the head as it is (its Content-Length included), the body
    left out."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return sending
