"""The one mapping of aiohttp's exceptions to failure kinds."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from gateway.client import Failure, FailureKind, classify


def _connector_error() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("exc", "kind", "detail"),
    [
        (TimeoutError(), FailureKind.TIMEOUT, "no first byte in 5 s"),
        (_connector_error(), FailureKind.REFUSED, "connect failed: Connection refused"),
        (aiohttp.ServerDisconnectedError(), FailureKind.RESET, "connection lost: Server"),
        (ConnectionResetError(), FailureKind.RESET, "connection lost: ConnectionResetError"),
    ],
)
def test_classify(exc: BaseException, kind: FailureKind, detail: str) -> None:
    got_kind, got_detail = classify(exc, "no first byte in 5 s")
    assert got_kind is kind
    assert got_detail.startswith(detail)


def test_failure_labels_name_the_status() -> None:
    assert Failure("a", FailureKind.STATUS, "HTTP 503", 503).label == "status_503"
    assert Failure("a", FailureKind.REFUSED, "connect failed").label == "refused"
    assert Failure("a", FailureKind.TIMEOUT, "slow").describe() == "a (slow)"
