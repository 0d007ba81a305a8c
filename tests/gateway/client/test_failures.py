"""The one mapping of the client's exceptions to failure kinds."""

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
