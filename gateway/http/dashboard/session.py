"""Who is looking at the dashboard: a login with the operator's own admin token, exchanged by
``POST /dashboard/login`` for an HttpOnly session cookie.

Why a cookie, not the token kept by the page: the page's live stream is an ``EventSource``,
which sends cookies but no Authorization header; an HttpOnly cookie is out of reach of any
script, so the long-lived admin token never stays in the browser (not in a URL, not in
storage), and a reload or a second tab needs no new login. The cookie is scoped to
``/dashboard`` (cookies ignore ports: the public listener on the same host must never receive
it, nor forward it to a backend) and named after the listener's port (two gateways on one
host keep their own).

The session is signed, so every worker of a gateway accepts it: ``name.expiry.nonce.sig``
with ``sig`` an HMAC keyed by the operator's own token. Changing or removing that token ends
the operator's sessions; a logout ends its own: the nonce is the session's id, named in the
store until its expiry (gateway.fleet.sessions, fleet-wide with Redis), and a session named
there is refused, a copied cookie too.

Changes are CSRF-safe twice over: the cookie is ``SameSite=Strict`` (a cross-site request
carries none), and a change made with the cookie must also send ``X-Geogate-CSRF``, a value
derived from the session that only the page's own origin can read (``GET
/dashboard/api/session``); a cross-site form can send neither. Scripts (``geogate ctl top``)
send ``Authorization: Bearer <admin token>`` instead, which is no ambient credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import SplitResult, urlsplit

from starlette.requests import Request

from gateway import checks
from gateway.defaults import DASHBOARD_SESSION_S
from gateway.errors import AdminDisabled, Forbidden, Unauthorized
from gateway.http.admin import operator_of
from gateway.runtime import Runtime

CSRF_HEADER = "x-geogate-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def cookie_name(request: Request) -> str:
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"geogate-dashboard-{port}"


def _mac(token: str, message: str) -> str:
    digest = hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(name: str, token: str, now: float) -> str:
    """A new session cookie value for operator ``name``."""
    expiry = int(now + DASHBOARD_SESSION_S)
    nonce = secrets.token_urlsafe(12)
    body = f"{name}.{expiry}.{nonce}"
    return f"{body}.{_mac(token, 'session|' + body)}"


def csrf_token(value: str, token: str) -> str:
    """The CSRF value of one session: only the page that logged in learns it."""
    return _mac(token, "csrf|" + value)


def verify(
    value: str | None,
    operators: Mapping[str, str],
    now: float,
    ended: Callable[[str, float], bool] = lambda sid, until: False,
) -> str | None:
    """The operator whose unexpired session ``value`` is, or None; ``ended``: whether a
    session id was logged out of. Operator names may hold dots: the fixed fields are split off
    from the right."""
    if not value:
        return None
    parts = value.rsplit(".", 3)
    if len(parts) != 4:
        return None
    name, expiry, sid, sig = parts
    token = operators.get(name)
    # isascii: "²".isdigit() holds and int() refuses it; bytes: compare_digest refuses a str
    # that is not ASCII. A forged cookie is no session, not an error.
    # At most 12 digits: int() refuses over 4,300 (a ValueError), and no expiry needs more.
    if token is None or not checks.is_decimal(expiry, 12) or int(expiry) <= now:
        return None
    body = value[: -len(sig) - 1]
    expected = _mac(token, "session|" + body).encode()
    if not hmac.compare_digest(sig.encode("utf-8", "replace"), expected) or ended(sid, int(expiry)):
        return None
    return name


def ending(rt: Runtime, request: Request) -> tuple[str, float] | None:
    """(session id, expiry) of the request's signed, unexpired session cookie, for its logout,
    even one already ended here (a logout sent again, to reach a Redis that was away); None
    without one (nothing to end: a forged or expired cookie is no session)."""
    value = request.cookies.get(cookie_name(request))
    operators = rt.config.admin.operators()  # none (admin off): no session to end, no error
    if value is None or verify(value, operators, time.time()) is None:
        return None
    _, expiry, sid, _ = value.rsplit(".", 3)
    return sid, float(expiry)


def id_of(request: Request) -> str | None:
    """The session id its cookie names (unchecked): what a live stream watches for a logout."""
    parts = (request.cookies.get(cookie_name(request)) or "").rsplit(".", 3)
    return parts[2] if len(parts) == 4 else None


def expiry_of(request: Request) -> float | None:
    """When the request's session cookie expires (unix time), None without one: a page's live
    stream ends then, as every other request of that session is refused from then on."""
    parts = (request.cookies.get(cookie_name(request)) or "").rsplit(".", 3)
    return float(parts[1]) if len(parts) == 4 and checks.is_decimal(parts[1], 12) else None


def _operators(rt: Runtime) -> dict[str, str]:
    operators = rt.config.admin.operators()
    if not operators:
        raise AdminDisabled(
            "the dashboard needs an operator: give each operator a token in admin.tokens "
            '(e.g. GEOGATE_ADMIN__TOKENS=\'{"alice": "..."}\') and log in with it'
        )
    return operators


def login(rt: Runtime, token: str) -> tuple[str, str, str]:
    """(operator, cookie value, CSRF value) for an admin token, or Unauthorized."""
    operators = _operators(rt)
    who = operator_of(f"Bearer {token}", operators)
    if who is None:
        raise Unauthorized(
            "that is no operator's admin token: paste your own token from admin.tokens"
        )
    value = issue(who, operators[who], time.time())
    return who, value, csrf_token(value, operators[who])


def session_of(rt: Runtime, request: Request) -> tuple[str, str] | None:
    """(operator, CSRF value) of the request's session cookie, or None."""
    operators = _operators(rt)
    value = request.cookies.get(cookie_name(request))
    who = verify(value, operators, time.time(), rt.store.session_ended)
    if who is None or value is None:
        return None
    return who, csrf_token(value, operators[who])


def operator(rt: Runtime, request: Request) -> str:
    """Who sends this dashboard request: the Bearer admin token's operator, or the session
    cookie's, which must bring the CSRF value (and a same-origin Origin) for a change."""
    authorization = request.headers.get("authorization")
    if authorization:
        who = operator_of(authorization, _operators(rt))
        if who is None:
            raise Unauthorized("missing or wrong admin token: send Authorization: Bearer <token>")
        return who
    session = session_of(rt, request)
    if session is None:
        raise Unauthorized(
            "not logged in, or the session ended: log in to the dashboard with your admin token"
        )
    who, csrf = session
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        ours = same_origin(request, rt.config.ops.public_url)
        if not hmac.compare_digest(sent.encode(), csrf.encode()) or not ours:
            raise Forbidden(
                "this change did not come from the dashboard page (CSRF check failed): reload "
                "the dashboard and try again"
            )
    return who


def same_origin(request: Request, public_url: str = "") -> bool:
    """No Origin (an older browser, a same-origin GET) passes; one that names another site
    does not: another than ``public_url``'s (ops.public_url) where set, else than the Host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    try:
        sent = urlsplit(origin)
        if public_url:
            return _site(sent) == _site(urlsplit(public_url))
        return sent.netloc == request.headers.get("host", "")
    except ValueError:  # "http://[": not an origin at all, so not this one
        return False


DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _site(url: SplitResult) -> tuple[str, str, int | None]:
    """Scheme, host and port as a browser's Origin serialises them (lower case, the scheme's
    default port left out): ops.public_url written https://Ops.Example.com:443 refused every
    log-in. ValueError for a port that is no port."""
    scheme = url.scheme.lower()
    return scheme, (url.hostname or ""), url.port or DEFAULT_PORTS.get(scheme)
