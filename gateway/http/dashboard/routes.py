"""``/dashboard`` on the ops listener: the page, its assets (inside the package: no build step,
no CDN), the login, the live stream, and the JSON it reads.

  GET   /dashboard                          the page (logs in with an admin token)
  POST  /dashboard/login  {"token": "..."}  -> session cookie; POST /dashboard/logout
  GET   /dashboard/api/session              who is logged in (if anyone), and the CSRF value
  GET   /dashboard/events                   server-sent events: hello, then a state a second
  GET   /dashboard/api/state                the newest state, once (scripts, ``ctl top``)
  GET   /dashboard/api/explain?ip=|country=&model=   one routing decision, explained
  GET   /dashboard/api/impact?upstream=|region=&drained=|weight=|bias_ms=
                                            the traffic a change would move, in words
  PATCH /dashboard/api/admin/upstreams/{id}, /dashboard/api/admin/regions/{id},
  GET   /dashboard/api/admin/audit, /dashboard/api/admin/config
                                            the admin API itself, with the dashboard's login

Every endpoint but the page and its assets wants the session cookie or an admin token
(``session``); changes go through the admin API's own handlers, so they are validated, logged
and audited under the operator's name exactly as ``PATCH /admin/...`` is.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from gateway import checks
from gateway.defaults import DASHBOARD_SESSION_S
from gateway.errors import GatewayError, RequestInvalid, SharedStateUnavailable
from gateway.fleet import config_doc
from gateway.http.admin import admin_routes, json_body
from gateway.http.dashboard import session
from gateway.http.dashboard.impact import what_if
from gateway.http.dashboard.sampler import Sampler
from gateway.http.errors import JSONAnswer, json_error
from gateway.http.upstream import ClientGone
from gateway.runtime import Runtime
from geodb.clientip import parse_ip
from geodb.countries import country_continent, country_point
from geodb.location import Location, LocationSource

PACKAGE = "gateway.http.dashboard"
# The page runs our own scripts and styles only: no inline script, no other origin, no frame.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


@cache
def _page() -> bytes:
    return resources.files(PACKAGE).joinpath("static", "index.html").read_bytes()


class _Assets(StaticFiles):
    """The page's scripts, styles and vendored libraries; not the page itself, which is
    served at /dashboard only, with its security headers (CSP, no frames, no-store)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path.endswith(".html"):
            return PlainTextResponse("Not Found", status_code=404)
        return await super().get_response(path, scope)


class Dashboard:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sampler = Sampler(rt)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Sampling runs from the listener's start, so the sparklines have a past when the
        first page opens."""
        self.sampler.start()
        try:
            yield
        finally:
            await self.sampler.stop()

    def routes(self) -> list[BaseRoute]:
        admin = [
            Route("/dashboard/api" + r.path, r.endpoint, methods=r.methods)
            for r in admin_routes(self.rt, operator=lambda req: session.operator(self.rt, req))
        ]
        return [
            Route("/dashboard", self.page),
            Mount("/dashboard/static", app=_Assets(packages=[(PACKAGE, "static")])),
            Route("/dashboard/login", self.login, methods=["POST"]),
            Route("/dashboard/logout", self.logout, methods=["POST"]),
            Route("/dashboard/api/session", self.whoami),
            Route("/dashboard/events", self._guarded(self.events)),
            Route("/dashboard/api/state", self._guarded(self.state)),
            Route("/dashboard/api/explain", self._guarded(self.explain)),
            Route("/dashboard/api/impact", self._guarded(self.impact)),
            *admin,
        ]

    def _guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                session.operator(self.rt, request)
                return await handler(request)
            except GatewayError as err:
                return json_error(err)

        return endpoint

    async def page(self, request: Request) -> Response:
        return Response(_page(), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        try:
            if not session.same_origin(request, self.rt.config.ops.public_url):
                raise RequestInvalid("log in from the dashboard page itself")
            body = await json_body(request, self.rt.config.server.body_timeout_s)
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise RequestInvalid('send {"token": "<your admin token>"}')
            who, value, csrf = session.login(self.rt, token)
        except GatewayError as err:
            return json_error(err)
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        resp = JSONAnswer({"operator": who, "csrf": csrf})
        resp.set_cookie(
            session.cookie_name(request),
            value,
            max_age=int(DASHBOARD_SESSION_S),
            path="/dashboard",
            httponly=True,
            samesite="strict",
            # Behind a proxy that terminates TLS the request itself is plain http.
            secure="https" in (request.url.scheme, self.rt.config.ops.public_url[:5]),
        )
        return resp

    async def logout(self, request: Request) -> Response:
        if not session.same_origin(request, self.rt.config.ops.public_url):  # another site
            return json_error(RequestInvalid("log out from the dashboard page itself"))
        ending = session.ending(self.rt, request)
        if ending is not None:
            try:
                await self.rt.store.end_session(*ending)
            except (RedisError, OSError) as exc:
                # Ended on this gateway; the cookie stays, so that the logout can be retried
                # once Redis is back and end it on the others too.
                return json_error(
                    SharedStateUnavailable(
                        f"logged out on this worker only: shared state (Redis) is "
                        f"unreachable ({checks.error_text(exc)}), and this gateway's other "
                        "workers and the other gateways accept the session until it ends "
                        "there too; log out again when /readyz no longer says degraded"
                    )
                )
        resp = JSONAnswer({"operator": None})
        resp.delete_cookie(session.cookie_name(request), path="/dashboard")
        return resp

    async def whoami(self, request: Request) -> Response:
        """Who is logged in: ``{"operator": null}`` when nobody is (a 200: the page asks at
        every load, and a browser logs each 4xx as an error)."""
        try:
            found: tuple[str, str | None] | None = session.session_of(self.rt, request)
            if found is None and request.headers.get("authorization"):
                found = session.operator(self.rt, request), None
        except GatewayError as err:
            return json_error(err)
        who, csrf = found if found else (None, None)
        return JSONAnswer({"operator": who, "csrf": csrf})

    async def events(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        sid, expiry = session.id_of(request), session.expiry_of(request)
        ended = (
            (lambda: self.rt.store.session_ended(sid, expiry))
            if sid and expiry is not None
            else None
        )
        frames = self.sampler.frames(expiry, ended)
        return StreamingResponse(frames, media_type="text/event-stream", headers=headers)

    async def state(self, request: Request) -> Response:
        return JSONAnswer(self.sampler.look())

    async def explain(self, request: Request) -> Response:
        q = request.query_params
        model = q.get("model", "")
        now = time.monotonic()
        if q.get("ip"):
            try:
                ip = parse_ip(q["ip"])  # as the proxy reads it: unmapped, no scope
            except ValueError:
                raise RequestInvalid(
                    f"{q['ip']!r} is not an IP address; give one such as 203.0.113.7"
                ) from None
            routed = self.rt.route_ip(ip, False, model, now)
        else:
            loc = country_location(q.get("country", ""))
            routed = self.rt.route(None, False, loc, model, now)
        decision = routed.decision
        return JSONAnswer(
            {
                "model": model,
                "location": routed.location.as_dict(),
                "decision": decision.explain(),
                "header": decision.header(),
            }
        )

    async def impact(self, request: Request) -> Response:
        q = request.query_params
        # One reading of each: weight=2&weight=3 previewed 3, and region= beside upstream=
        # previewed the region's change alone, what was asked for dropped without a word.
        twice = sorted(k for k in q if len(q.getlist(k)) > 1)
        if twice or (q.get("region") and q.get("upstream")):
            what = f"{', '.join(twice)} given more than once" if twice else "upstream and region"
            raise RequestInvalid(f"{what}: preview one change of one upstream or one region")
        changes = _changes(q)
        doc = config_doc.routing_doc(self.rt.config)
        # The views' drained flags are effective (an upstream's own or its region's), so what
        # a change does is compared as its effective after: undraining a region leaves an
        # upstream drained on its own where it is, as the change itself does.
        if q.get("region"):
            rid = q["region"]
            _, before, after = config_doc.change_region(doc, rid, changes)  # validates
            targets = list(before)
            effective = after  # each member's drain as it would be: change_region says
        else:
            uid = q.get("upstream", "")
            # Validates, names the known ones; its after is effective too.
            _, _, after = config_doc.change_upstream(doc, uid, changes)
            targets = [uid]
            effective = {uid: config_doc.routed(after)}
        store = self.rt.store
        result = what_if(
            self.sampler.window,
            store.snapshot(time.monotonic()),
            store.policy,
            targets,
            effective,
            store.member_shares(),
        )
        return JSONAnswer(result)


def _changes(q: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "drained" in q:
        if q["drained"] not in ("true", "false"):
            raise RequestInvalid("drained must be true or false")
        out["drained"] = q["drained"] == "true"
    for key in ("weight", "bias_ms"):
        if key in q:
            # A number as an HTML form's number input gives it (ASCII digits, ".5" too), for
            # the admin API to take: float() took "\uff15" (a fullwidth 5), "1_0" and " 2 ",
            # so the preview answered for changes the API would refuse.
            if not _NUMBER.fullmatch(q[key]):
                shown = q[key][:40]
                raise RequestInvalid(f"{key} must be a number such as 2 or 0.5 (got {shown!r})")
            out[key] = float(q[key])
    return out


_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def country_location(code: str) -> Location:
    """A client in country ``code`` (ISO 3166-1 alpha-2), at its reference point."""
    point = country_point(code) if code else None
    if point is None:
        raise RequestInvalid(
            f"unknown country {code!r}: give an ISO 3166 code such as DE, SG or US, or an ip"
        )
    return Location(
        point[0],
        point[1],
        code.upper(),
        country_continent(code),
        None,
        None,
        LocationSource.DEFAULT,
    )
