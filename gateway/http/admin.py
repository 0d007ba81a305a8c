"""The operator API: authenticated, and every change lands in the audit trail.

  GET   /admin/config                  the routing config and its version
  PATCH /admin/upstreams/{id}          {"weight": 2, "bias_ms": 10, "drained": true}
  PATCH /admin/regions/{id}            {"drained": true}: the region's own drain, which takes
                                       every upstream of it out as one change (one version,
                                       one audit entry of each upstream's effective drain);
                                       undraining it leaves one drained on its own drained
  GET   /admin/audit?count=50          newest changes first
  POST  /admin/config/restore          put the document this gateway routes on back over one
                                       in Redis it refuses (gateway.fleet.restore)

``Authorization: Bearer <token>``: each operator has a token of their own (``admin.tokens``,
name -> token), and the audit's "who" is the name of the token sent; the single
``admin.token`` of old is the operator "admin". ``X-Geogate-Operator`` is ignored: a name a
client declares authenticates nobody. With Redis the change is fleet-wide: every gateway
applies it within a second.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import checks
from gateway import defaults as d
from gateway.defaults import ADMIN_MAX_BODY_BYTES, AUDIT_MAX_COUNT
from gateway.errors import (
    AdminDisabled,
    BodyTooLarge,
    GatewayError,
    RequestInvalid,
    SharedStateUnavailable,
    Unauthorized,
    past_limits,
)
from gateway.fleet import config_doc
from gateway.http.body import read_body
from gateway.http.errors import JSONAnswer, json_error
from gateway.http.upstream import ClientGone
from gateway.logs import event
from gateway.runtime import Runtime, log

Handler = Callable[[Request], Awaitable[Response]]
# A store's update_upstream or update_region: (id, changes, who) -> audit entry.
Updater = Callable[[str, dict[str, Any], str], Awaitable[dict[str, Any]]]


def admin_routes(rt: Runtime, operator: Callable[[Request], str] | None = None) -> list[Route]:
    """``operator`` names who sent a request, or raises (default: the operator whose admin
    token it carries); the dashboard mounts these same routes with its own login."""
    who_is = operator or (lambda request: _operator(rt, request))

    def guarded(handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await _answered(request, handler, who_is)

        return endpoint

    async def show(request: Request, who: str) -> Response:
        # stale_since: this gateway's copy is its last snapshot while Redis is away (unix
        # time), said so that a reader does not take it for the fleet's current document.
        # refused: why the fleet's document in Redis is not this one (the gateway refuses it
        # and routes on this version); ``POST /admin/config/restore`` puts this one back.
        doc = config_doc.routing_doc(rt.config)
        store = rt.store
        return JSONAnswer(
            {
                "version": store.version,
                "config": doc,
                "stale_since": store.stale_since,
                "refused": store.refused,
            }
        )

    async def restore(request: Request, who: str) -> Response:
        entry = await rt.store.restore(who)
        log.warning(
            "operator %s restored fleet config version %s: %s",
            who,
            entry["version"],
            entry["what"],
            extra=_changed("config-restored", who, entry),
        )
        return JSONAnswer({"version": rt.store.version, "audit": entry, "changed": True})

    async def _patch(
        request: Request, who: str, kind: str, example: str, update: Updater
    ) -> Response:
        changes = await json_body(request, rt.config.server.body_timeout_s)
        if not isinstance(changes, dict):
            raise RequestInvalid(f"send a JSON object such as {example}")
        target = request.path_params["id"]
        entry = await update(target, changes, who)
        if config_doc.is_unchanged(entry):  # a drain of a drained one: no version, no audit
            return JSONAnswer({"version": rt.store.version, "audit": entry, "changed": False})
        log.info(
            "operator %s changed %s %s: %s -> %s (version %s)",
            who,
            kind,
            target,
            entry["before"],
            entry["after"],
            entry["version"],
            extra=_changed(f"{kind}-changed", who, entry, **{kind: target}),
        )
        return JSONAnswer({"version": rt.store.version, "audit": entry, "changed": True})

    async def patch_upstream(request: Request, who: str) -> Response:
        return await _patch(request, who, "upstream", '{"weight": 2}', rt.store.update_upstream)

    async def patch_region(request: Request, who: str) -> Response:
        return await _patch(request, who, "region", '{"drained": true}', rt.store.update_region)

    async def audit(request: Request, who: str) -> Response:
        raw = request.query_params.get("count", "50")
        if not checks.is_decimal(raw, 6) or not 0 < int(raw) <= AUDIT_MAX_COUNT:
            raise RequestInvalid(f"count must be 1..{AUDIT_MAX_COUNT}")
        return JSONAnswer({"entries": await rt.store.audit(int(raw))})

    return [
        Route("/admin/config", guarded(show)),
        Route("/admin/config/restore", guarded(restore), methods=["POST"]),
        Route("/admin/upstreams/{id}", guarded(patch_upstream), methods=["PATCH"]),
        Route("/admin/regions/{id}", guarded(patch_region), methods=["PATCH"]),
        Route("/admin/audit", guarded(audit)),
    ]


async def _answered(
    request: Request,
    handler: Callable[[Request, str], Awaitable[Response]],
    who_is: Callable[[Request], str],
) -> Response:
    """``handler``'s answer for the operator ``who_is`` names, its errors as JSON errors."""
    try:
        return await handler(request, who_is(request))
    except GatewayError as err:
        return json_error(err)
    except ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    except (RedisError, OSError) as exc:
        # A read changes nothing: "not applied" would send the operator looking for a change
        # that was never asked for.
        what = "nothing was read" if request.method == "GET" else "the change was not applied"
        # Redis's own words say why (a TLS certificate not verified, a read-only replica),
        # not its error's type alone.
        return json_error(
            SharedStateUnavailable(
                f"shared state (Redis) is unreachable ({checks.error_text(exc)}); {what} "
                "— retry when /readyz no longer says degraded"
            )
        )


def _changed(action: str, who: str, entry: Mapping[str, Any], **target: str) -> dict[str, object]:
    """An operator's change as an event (log.format = "ecs"): who, what, before and after."""
    return event(
        action,
        user=who,
        change=True,
        before=entry["before"],
        after=entry["after"],
        config_version=int(entry["version"]),
        **target,
    )


def _operator(rt: Runtime, request: Request) -> str:
    operators = rt.config.admin.operators()
    if not operators:
        raise AdminDisabled(
            "the admin API is off on this gateway: give each operator a token in admin.tokens "
            '(e.g. GEOGATE_ADMIN__TOKENS=\'{"alice": "..."}\') to turn it on'
        )
    who = operator_of(request.headers.get("authorization", ""), operators)
    if who is None:
        raise Unauthorized("missing or wrong admin token: send Authorization: Bearer <token>")
    return who


def operator_of(authorization: str, operators: Mapping[str, str]) -> str | None:
    """The operator whose token ``authorization`` ("Bearer <token>") carries, or None.

    Every token is compared, in constant time, whatever matched: how long the check takes
    says nothing about which token, or how much of one, was right."""
    scheme, _, credentials = authorization.partition(" ")
    # RFC 9110 §11.4: one or more spaces after the scheme. A lone surrogate (a login's JSON
    # can carry "\ud800") matches no token, and must not raise on its way to saying so.
    sent = credentials.lstrip(" ").encode("utf-8", "surrogatepass")
    found = None
    for name, token in operators.items():
        if hmac.compare_digest(sent, token.encode()):
            found = name
    return found if scheme.lower() == "bearer" else None  # schemes are case-insensitive


def _too_large(size: int | None, limit: int) -> BodyTooLarge:
    # The limit is fixed, not a config key: no operator change needs more than a few fields.
    return BodyTooLarge(
        f"admin request body is over {limit} bytes; a change is a few fields, such as "
        '{"weight": 2}'
    )


async def json_body(request: Request, timeout_s: float) -> Any:
    """The body as JSON, read up to ``ADMIN_MAX_BODY_BYTES`` within ``timeout_s``
    (server.body_timeout_s) or OPS_BODY_TIMEOUT_S, the shorter: a bigger one is refused as it
    arrives, never held whole in memory, and a slow one does not hold the request forever. A
    change or a login is a few bytes: with the public API's 30 s, slow logins held the ops
    listener's connections (OPS_MAX_CONNECTIONS) six times as long as their heads may."""
    bound, setting = timeout_s, "server.body_timeout_s"
    if timeout_s > d.OPS_BODY_TIMEOUT_S:
        bound, setting = d.OPS_BODY_TIMEOUT_S, "the ops listener's bound for a change or a login"
    body = await read_body(
        request.scope,
        request.receive,
        ADMIN_MAX_BODY_BYTES,
        bound,
        _too_large,
        timeout_from=setting,
    )
    try:
        # Decoded here: json.loads would guess UTF-16 or -32 from bytes (RFC 8259: UTF-8), and
        # say of such a body only "Expecting value".
        return json.loads(body.decode("utf-8-sig"), object_pairs_hook=_once_each)  # a BOM: ok
    except _Twice as exc:
        raise RequestInvalid(
            f"{exc.args[0]!r} is in the body twice: send each field once (the last was taken, "
            "the first dropped without a word)"
        ) from None
    except UnicodeDecodeError:
        raise RequestInvalid("body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as exc:
        raise RequestInvalid(f"body is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # past the parser's limits, in words
        raise RequestInvalid(
            f"body is not JSON this server reads: {past_limits(exc)}; send an object such as "
            '{"weight": 2}'
        ) from None


class _Twice(ValueError):
    """A field a change's object holds twice (``_once_each``)."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object of ``pairs``, a key given twice refused: {"weight": 2, "weight": 3}
    was a weight of 3, the 2 dropped without a word."""
    out = dict(pairs)
    if len(out) != len(pairs):  # the first name seen again (a set: 64 KiB of keys is many)
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Twice(name)
            seen.add(name)
    return out
