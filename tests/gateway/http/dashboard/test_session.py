"""The dashboard login: a stateless session every worker accepts, bound to the operator's own
token, and a CSRF value only the logged-in page can read."""

from __future__ import annotations

import time

import pytest
from starlette.requests import Request

from gateway.config import Config
from gateway.errors import AdminDisabled, Forbidden, Unauthorized
from gateway.http.dashboard import session
from gateway.runtime import build_runtime

OPERATORS = {"alice": "alice-token", "bob.ops": "bob-token"}
BASE = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "admin": {"tokens": OPERATORS},
}


def request(method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"host", b"127.0.0.1:9180"))
    scope = {
        "type": "http",
        "method": method,
        "path": "/dashboard/api/admin/upstreams/a",
        "headers": raw,
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", 9180),
    }
    return Request(scope)


def test_a_session_names_its_operator_until_it_expires() -> None:
    now = time.time()
    value = session.issue("bob.ops", "bob-token", now)  # a name with a dot
    assert session.verify(value, OPERATORS, now) == "bob.ops"
    assert session.verify(value, OPERATORS, now + 13 * 3600) is None  # a shift and more later


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: "alice" + v[len("bob.ops") :],  # another operator's name on bob's signature
        lambda v: v[:-2] + "xx",  # a forged signature
        lambda v: v.replace(v.split(".")[2], "9999999999", 1),  # a later expiry
        lambda v: "",
        lambda v: "no-dots",
        # Not digits to int(), not ASCII to compare_digest: no session, not an error.
        lambda v: v.replace(v.split(".")[2], "\u00b2\u00b3", 1),
        lambda v: v[:-2] + "\u00e9\u00e9",
    ],
)
def test_a_tampered_session_names_nobody(tamper: object) -> None:
    value = session.issue("bob.ops", "bob-token", time.time())
    assert callable(tamper)
    assert session.verify(tamper(value), OPERATORS, time.time()) is None


def test_a_new_token_ends_the_old_sessions() -> None:
    value = session.issue("alice", "alice-token", time.time())
    assert session.verify(value, {"alice": "rotated"}, time.time()) is None


def test_login_with_a_token_gives_a_session_and_its_csrf_value() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    who, value, csrf = session.login(rt, "alice-token")
    assert who == "alice" and session.verify(value, OPERATORS, time.time()) == "alice"
    assert csrf == session.csrf_token(value, "alice-token") and csrf not in value
    with pytest.raises(Unauthorized, match="no operator's admin token"):
        session.login(rt, "guess")


def test_no_operators_means_no_dashboard_login() -> None:
    rt = build_runtime(Config.model_validate({**BASE, "admin": {}}))
    with pytest.raises(AdminDisabled, match=r"admin\.tokens"):
        session.login(rt, "anything")


def test_a_change_by_cookie_needs_the_csrf_header_and_the_same_origin() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    _, value, csrf = session.login(rt, "alice-token")
    cookie = {"cookie": f"geogate-dashboard-9180={value}"}
    assert session.operator(rt, request("GET", cookie)) == "alice"  # reading needs no CSRF
    with pytest.raises(Forbidden, match="CSRF"):
        session.operator(rt, request("PATCH", cookie))
    ok = {**cookie, "x-geogate-csrf": csrf, "origin": "http://127.0.0.1:9180"}
    assert session.operator(rt, request("PATCH", ok)) == "alice"
    with pytest.raises(Forbidden):
        session.operator(rt, request("PATCH", {**ok, "origin": "http://evil.example"}))


def test_scripts_use_the_admin_token_and_no_cookie() -> None:
    rt = build_runtime(Config.model_validate(BASE))
    bearer = {"authorization": "Bearer bob-token"}
    assert session.operator(rt, request("PATCH", bearer)) == "bob.ops"
    with pytest.raises(Unauthorized):
        session.operator(rt, request("GET", {"authorization": "Bearer wrong"}))
    with pytest.raises(Unauthorized, match="log in"):
        session.operator(rt, request("GET"))


@pytest.mark.parametrize(
    ("cookie", "expiry"),
    [
        ("bob.ops.1800000000.nonce.sig", 1800000000.0),  # a dotted name: split from the right
        (None, None),
        ("alice.1800000000.sig", None),  # a part missing
        ("alice.1" + "0" * 12 + ".nonce.sig", None),  # 13 digits: no expiry needs more
        ("alice.\u00b2.nonce.sig", None),
    ],
)
def test_a_live_streams_end_is_its_sessions_expiry(
    cookie: str | None, expiry: float | None
) -> None:
    """expiry_of: when the page's live stream ends (routes.py hands it to the sampler)."""
    headers = {} if cookie is None else {"cookie": f"geogate-dashboard-9180={cookie}"}
    assert session.expiry_of(request(headers=headers)) == expiry


@pytest.mark.parametrize(
    ("public_url", "origin", "ours"),
    [
        ("https://ops.example.com", "https://ops.example.com", True),
        # Written with the default port or in capitals: every log-in was refused (a browser's
        # Origin is lower case, without the scheme's default port).
        ("https://ops.example.com:443", "https://ops.example.com", True),
        ("https://Ops.Example.com", "https://ops.example.com", True),
        ("http://ops.example.com:80/", "http://ops.example.com", True),
        ("https://ops.example.com:8443", "https://ops.example.com:8443", True),
        ("https://ops.example.com:8443", "https://ops.example.com", False),
        ("https://ops.example.com", "http://ops.example.com", False),
        ("https://ops.example.com", "https://evil.example.com", False),
    ],
)
def test_the_public_urls_origin_is_compared_as_a_browser_sends_it(
    public_url: str, origin: str, ours: bool
) -> None:
    assert session.same_origin(request("POST", {"Origin": origin}), public_url) is ours
