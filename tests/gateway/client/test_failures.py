"""The one mapping of the client's exceptions to failure kinds, and a refusal's detail."""

from __future__ import annotations

import pytest

from gateway.client import (
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    Failure,
    FailureKind,
    classify,
)
from gateway.client.failures import status_detail
from gateway.defaults import REFUSAL_MESSAGE_MAX


@pytest.mark.parametrize(
    ("exc", "kind", "detail"),
    [
        (TimeoutError(), FailureKind.TIMEOUT, "no first byte in 5 s"),
        (
            ConnectTimeout("127.0.0.1:1: connect timed out"),
            FailureKind.TIMEOUT,
            "connect timed out",
        ),
        (
            ConnectFailed("127.0.0.1:1", ConnectionRefusedError(111, "Connection refused")),
            FailureKind.REFUSED,
            "connect failed: Connection refused",
        ),
        (
            ConnectionLost("ConnectionResetError before the response was complete"),
            FailureKind.RESET,
            "connection lost: ConnectionResetError before",
        ),
        (BadResponse("not an HTTP/1.1 response"), FailureKind.RESET, "bad response: not an HTTP"),
        (ConnectionResetError(), FailureKind.RESET, "connection lost: ConnectionResetError"),
    ],
)
def test_classify(exc: BaseException, kind: FailureKind, detail: str) -> None:
    got_kind, got_detail = classify(exc, "no first byte in 5 s")
    assert got_kind is kind
    assert got_detail.startswith(detail)


def test_a_connect_timeout_is_a_timeout_to_callers_that_know_only_those() -> None:
    assert isinstance(ConnectTimeout("x"), TimeoutError)


def test_failure_labels_name_the_status() -> None:
    assert Failure("a", FailureKind.STATUS, "HTTP 503", 503).label == "status_503"
    assert Failure("a", FailureKind.REFUSED, "connect failed").label == "refused"
    assert Failure("a", FailureKind.TIMEOUT, "slow").describe() == "a (slow)"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (None, "HTTP 429"),  # not all of it came with the head: nothing waited for
        (b"", "HTTP 429"),
        (
            b'{"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}}',
            "HTTP 429: You exceeded your quota",
        ),
        (b'{"object": "error", "message": "queue full", "code": 429}', "HTTP 429: queue full"),
        (b'{"detail": "Too many requests"}', "HTTP 429: Too many requests"),
        (  # FastAPI's validation error
            b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required"}, {"msg": "x"}]}',
            "HTTP 429: body.messages: Field required; x",
        ),
        (b'{"detail": [1, {"loc": ["q"]}]}', "HTTP 429"),
        (b'{"error": "slow down"}', "HTTP 429: slow down"),
        (b"Too Many Requests\r\nsee /docs\n", "HTTP 429: Too Many Requests"),
        (b"<html><body>429</body></html>", "HTTP 429"),  # a page is no message
        (b"[1, 2]", "HTTP 429"),
        (b'{"error": {"code": 1}}', "HTTP 429"),
        (b'"quota"', "HTTP 429"),
        (b"a\x1b[31mred", "HTTP 429: a [31mred"),  # no terminal escapes into a log line
        (b"\xff\xfe bad bytes", "HTTP 429: bad bytes"),  # what does not decode is left out
        (b"\x1f\x8b\x08\x00\xff", "HTTP 429"),  # gzip's bytes (Response.readable_body skips
        # a compressed body before it gets here)
    ],
)
def test_a_refusal_carries_the_upstreams_own_message(body: bytes | None, detail: str) -> None:
    assert status_detail(429, body) == detail


def test_a_long_message_is_cut() -> None:
    said = status_detail(503, b'{"message": "' + b"m" * 1000 + b'"}')
    assert said == "HTTP 503: " + "m" * REFUSAL_MESSAGE_MAX + "..."
