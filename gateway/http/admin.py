"""The operator API: authenticated, and every change lands in the audit trail.

  GET   /admin/config                  the routing config and its version
  PATCH /admin/upstreams/{id}          {"weight": 2, "bias_ms": 10, "drained": true}
  GET   /admin/audit?count=50          newest changes first

``Authorization: Bearer <admin.token>``; ``X-Geogate-Operator: name`` says who (default
"admin-api"). With Redis the change is fleet-wide: every gateway applies it within a second.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import (
    AdminDisabled,
    GatewayError,
    RequestInvalid,
    SharedStateUnavailable,
    Unauthorized,
)
from gateway.fleet import config_doc
from gateway.http.errors import json_error
from gateway.runtime import Runtime, log

MAX_AUDIT_COUNT = 1000
MAX_OPERATOR_NAME = 64

Handler = Callable[[Request], Awaitable[Response]]


def admin_routes(rt: Runtime) -> list[Route]:
    def guarded(handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, _operator(rt, request))
            except GatewayError as err:
                return json_error(err)
            except (RedisError, OSError) as exc:
                return json_error(
                    SharedStateUnavailable(
                        f"shared state (Redis) is unreachable ({type(exc).__name__}); the "
                        "change was not applied — retry when /readyz no longer says degraded"
                    )
                )

        return endpoint

    async def show(request: Request, who: str) -> Response:
        return JSONResponse(
            {"version": rt.store.version, "config": config_doc.routing_doc(rt.config)}
        )

    async def patch_upstream(request: Request, who: str) -> Response:
        try:
            changes = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            raise RequestInvalid(f"body is not valid JSON: {exc.msg}") from None
        if not isinstance(changes, dict):
            raise RequestInvalid('send a JSON object such as {"weight": 2}')
        uid = request.path_params["uid"]
        entry = await rt.store.update_upstream(uid, changes, who)
        log.info(
            "operator %s changed upstream %s: %s -> %s (version %s)",
            who,
            uid,
            entry["before"],
            entry["after"],
            entry["version"],
        )
        return JSONResponse({"version": rt.store.version, "audit": entry})

    async def audit(request: Request, who: str) -> Response:
        raw = request.query_params.get("count", "50")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_AUDIT_COUNT:
            raise RequestInvalid(f"count must be 1..{MAX_AUDIT_COUNT}")
        return JSONResponse({"entries": await rt.store.audit(int(raw))})

    return [
        Route("/admin/config", guarded(show)),
        Route("/admin/upstreams/{uid}", guarded(patch_upstream), methods=["PATCH"]),
        Route("/admin/audit", guarded(audit)),
    ]


def _operator(rt: Runtime, request: Request) -> str:
    token = rt.config.admin.token
    if not token:
        raise AdminDisabled(
            "the admin API is off on this gateway: set admin.token "
            "(or GEOGATE_ADMIN__TOKEN) to turn it on"
        )
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong admin token: send Authorization: Bearer <token>")
    who = request.headers.get("x-geogate-operator", "admin-api")
    # The name goes into logs and the audit trail: printable and short, or not at all.
    return who[:MAX_OPERATOR_NAME] if who.isprintable() and who else "admin-api"
