"""Which /v1 requests are proxied: the endpoint table, matched on the path as sent, and
dot-segments refused however they are spelt."""

from __future__ import annotations

import pytest

from gateway.errors import MethodNotAllowed, RequestInvalid, UnknownEndpoint
from gateway.http.paths import API_PATHS, check_api_request, has_dot_segment


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../sleep",
        "/v1/..",
        "/v1/./chat/completions",
        "/v1/%2e%2e/reset_prefix_cache",
        "/v1/%2E%2e/sleep",
        "/v1/.%2E/sleep",
        "/v1/chat/..%2f..%2fsleep",
        "/v1/chat%2F..%2Fsleep",
        "/v1/x\\..\\sleep",
        "/v1/x%5c..%5csleep",
        "/v1/%252e%252e/sleep",  # decoded twice by the proxies behind us
        "/v1/%25252e%25252e/sleep",
        "/v1/..;/sleep",  # Tomcat's path parameters
    ],
)
def test_dot_segments_in_any_spelling(path: str) -> None:
    assert has_dot_segment(path)
    with pytest.raises(RequestInvalid, match=r"has a '\.' or '\.\.' segment"):
        check_api_request("POST", path)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/a..b", "/v1/...", "/v1/.well", "/v1/x%2fy", "/v1/"]
)
def test_dots_inside_a_segment_are_not_dot_segments(path: str) -> None:
    assert not has_dot_segment(path)


def test_a_path_encoded_over_and_over_is_refused() -> None:
    assert has_dot_segment("/v1/%2525252525/x")


def test_the_table_and_extra_paths_are_proxied_with_post_only() -> None:
    for path in API_PATHS:
        # check_api_request takes a known path before the dot-segment scan: none may have one
        # (extra_api_paths with one are refused at load: tests/gateway/test_config.py).
        assert not has_dot_segment(path)
        check_api_request("POST", path)
    check_api_request("POST", "/v1/tokenize", ("/v1/tokenize",))
    with pytest.raises(MethodNotAllowed) as info:
        check_api_request("GET", "/v1/chat/completions")
    assert info.value.allow == ("POST",)
    assert "GET /v1/chat/completions is not allowed" in info.value.message
    with pytest.raises(MethodNotAllowed) as info:
        check_api_request("POST", "/v1/models/m")
    assert info.value.allow == ("GET", "HEAD")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/x",
        "/v1/load_lora_adapter",
        "/v1/chat/completions/",
        "/v1/chat/%63ompletions",  # matched as sent: it is what the upstream would get
        "/v1/chat%2fcompletions",
    ],
)
def test_anything_else_is_unknown(path: str) -> None:
    with pytest.raises(UnknownEndpoint, match="is not an API endpoint of this gateway"):
        check_api_request("POST", path)


def test_what_the_client_sent_is_quoted_when_it_is_not_plain() -> None:
    with pytest.raises(UnknownEndpoint) as info:
        check_api_request("POST", '/v1/x"\r\ny')
    assert info.value.message.startswith("'/v1/x\"\\r\\ny' is not")
    with pytest.raises(UnknownEndpoint) as info:
        check_api_request("POST", "/v1/" + "x" * 500)
    assert len(info.value.message) < 400
