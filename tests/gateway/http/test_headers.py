from __future__ import annotations

from gateway.http.headers import client_response_headers, request_id, upstream_request_headers


def test_request_headers_drop_hop_by_hop_and_set_forwarding() -> None:
    raw = [
        (b"host", b"gw"),
        (b"connection", b"close, x-private"),
        (b"x-private", b"1"),
        (b"te", b"trailers"),
        (b"content-length", b"5"),
        (b"authorization", b"Bearer t"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-request-id", b"old"),
    ]
    out = dict(
        upstream_request_headers(raw, client="9.9.9.9", peer_trusted=True, scheme="http", rid="r1")
    )
    assert out == {
        "authorization": "Bearer t",
        "X-Forwarded-For": "1.1.1.1, 9.9.9.9",
        "X-Forwarded-Proto": "https",
        "X-Request-Id": "r1",
    }
    untrusted = dict(
        upstream_request_headers(raw, client="9.9.9.9", peer_trusted=False, scheme="http", rid="r1")
    )
    assert untrusted["X-Forwarded-For"] == "9.9.9.9"
    assert untrusted["X-Forwarded-Proto"] == "http"


def test_response_headers() -> None:
    raw = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Server", b"x"),
        (b"X-Request-Id", b"upstream-made"),
    ]
    out = client_response_headers(raw, [(b"x-request-id", b"r1")])
    assert out == [(b"content-type", b"text/event-stream"), (b"x-request-id", b"r1")]


def test_request_id_kept_only_when_safe() -> None:
    assert request_id("abc-123") == "abc-123"
    for bad in (None, "", "a\nforged log line", "x" * 129):
        assert len(request_id(bad)) == 32
