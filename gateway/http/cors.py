"""CORS for browser apps (the OpenAI SDKs run in a browser too): only where
``server.cors_origins`` names the origins allowed; none by default, and then no cost.

A browser sends a JSON POST with ``Authorization`` only after a preflight (``OPTIONS`` with
``Access-Control-Request-Method``): answered here, 204, never forwarded (a backend's own CORS
would answer for the backend, not for this gateway's origins). Every other answer to an
allowed origin carries ``Access-Control-Allow-Origin`` and the headers a client reads
(``x-request-id``, ``retry-after``, ``x-should-retry``, ``geogate-route``) exposed:
unexposed, ``x-should-retry: false`` reads as absent to a browser's SDK, which then retries a
504 twice, running a generation again. An origin not allowed gets
the answers it got before: a preflight is the 405 of any ``OPTIONS``, which the browser
takes as a refusal. No credentials (cookies) are allowed: the API's is a bearer token.
"""

from __future__ import annotations

from gateway.http.asgi import Message, Scope, Send

ANY = "*"
PREFLIGHT_MAX_AGE_S = 600  # how long a browser may keep a preflight's answer
MAX_REQUESTED_HEADERS = 1024  # bytes of Access-Control-Request-Headers echoed back
_METHODS = b"GET, POST, OPTIONS"
_EXPOSED = b"x-request-id, retry-after, x-should-retry, geogate-route"


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = ANY in origins
        self.origins = frozenset(o.rstrip("/").lower() for o in origins if o != ANY)

    def _allowed(self, origin: bytes) -> bool:
        return self.any or origin.decode("latin-1").lower() in self.origins

    async def handle(self, scope: Scope, send: Send) -> Send | None:
        """``send`` for this request (with the CORS headers where its origin is allowed), or
        None when this was a preflight, answered here."""
        origin = requested = method = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                requested = value
        if origin is None or not self._allowed(origin):
            return send
        allow = [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"vary", b"origin"),
        ]
        if scope["method"] == "OPTIONS" and method is not None:
            headers = [
                *allow,
                (b"access-control-allow-methods", _METHODS),
                (b"access-control-max-age", b"%d" % PREFLIGHT_MAX_AGE_S),
            ]  # no Content-Length: a 204 must not carry one (RFC 9110 8.6)
            if requested and len(requested) <= MAX_REQUESTED_HEADERS:
                headers.append((b"access-control-allow-headers", requested))
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return None
        extra = [*allow, (b"access-control-expose-headers", _EXPOSED)]

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Ours replace any the answer carries: an upstream's own (vLLM's default "*",
                # a regional gateway's) made two values, which a browser refuses.
                kept = [h for h in message.get("headers", ()) if not _is_cors(h[0])]
                message = {**message, "headers": [*kept, *extra]}
            await send(message)

        return with_cors


def _is_cors(name: bytes) -> bool:
    return name.lower().startswith(b"access-control-")
