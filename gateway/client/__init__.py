"""The upstream HTTP client: HTTP/1.1 over pooled keep-alive connections (gateway.client.pool,
gateway.client.conn; gateway.client.response an answer, and gateway.client.discard pools those
nobody reads), one per process, and the one place where its failures become failure kinds
(gateway.client.failures)."""

from __future__ import annotations

from gateway.client.failures import (
    CLIENT_ERRORS,
    BadResponse,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    Failure,
    FailureKind,
    Reach,
    classify,
)
from gateway.client.pool import POOL_KEEPALIVE_S, Client
from gateway.client.response import Response

__all__ = [
    "CLIENT_ERRORS",
    "POOL_KEEPALIVE_S",
    "BadResponse",
    "Client",
    "ClientError",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "Failure",
    "FailureKind",
    "Reach",
    "Response",
    "classify",
]
