"""Domain errors become OpenAI-shaped HTTP errors in one table."""

from __future__ import annotations

import pytest

from gateway import errors as e
from gateway.http.errors import HTTP, error_body, error_headers, status_of


def _all_errors(cls: type[e.GatewayError]) -> list[type[e.GatewayError]]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _all_errors(sub))]


@pytest.mark.parametrize(
    ("err", "status", "code"),
    [
        (e.BodyTooLarge("x"), 413, "request_too_large"),
        (e.RequestInvalid("x"), 400, "invalid_request"),
        (e.FleetConfigInvalid("x"), 400, "invalid_request"),
        (e.UnknownEndpoint("x"), 404, "unknown_url"),
        (e.MethodNotAllowed("x", ("POST",)), 405, "method_not_allowed"),
        (e.BodyTimeout("x"), 408, "request_timeout"),
        (e.HeadersTooLarge("x"), 431, "request_headers_too_large"),
        (e.NoHealthyUpstream("x", retry_after_s=5), 503, "no_healthy_upstream"),
        (e.UpstreamBusy("x", retry_after_s=2), 429, "upstreams_at_capacity"),
        (e.StreamInterrupted("x"), 502, "upstream_stream_interrupted"),
        (e.UpstreamTimeout("x"), 504, "upstream_timeout"),
        (e.ConfigError("x"), 500, "internal_error"),  # inherits the root's row
    ],
)
def test_status_type_and_code(err: e.GatewayError, status: int, code: str) -> None:
    assert status_of(err) == status
    body = error_body(err)["error"]
    assert (body["message"], body["code"]) == ("x", code)
    assert body["type"]


def test_retry_after_becomes_a_header() -> None:
    assert error_headers(e.UpstreamBusy("x", retry_after_s=7)) == {"Retry-After": "7"}
    assert error_headers(e.UpstreamFailed("x")) == {}


def test_method_not_allowed_says_what_is_allowed() -> None:
    assert error_headers(e.MethodNotAllowed("x", ("GET", "HEAD"))) == {"Allow": "GET, HEAD"}


def test_every_error_class_has_a_status_through_its_ancestors() -> None:
    for cls in _all_errors(e.GatewayError):
        assert any(c in HTTP for c in cls.__mro__), cls
