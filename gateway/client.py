"""The upstream HTTP client: one pooled aiohttp session per process, and the one place where
aiohttp's exceptions become failure kinds (the proxy's attempts and the prober both use it, as
httpx maps httpcore's exceptions in one function)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
from aiohttp.tracing import Trace

# No overall cap on the pool (the gateway's own concurrency is the bound); idle connections
# kept 60 s so a quiet backend still finds a warm one (probes every 2 s also keep one alive).
POOL_KEEPALIVE_S = 60.0
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# What a request to an upstream can raise besides TimeoutError; classify() knows them all.
CLIENT_ERRORS = (aiohttp.ClientError, OSError)


class FailureKind(StrEnum):
    REFUSED = "refused"  # no connection: nothing reached the upstream
    RESET = "reset"  # the connection broke
    TIMEOUT = "timeout"
    STATUS = "status"  # an answer with a status that says "not now" (429, 502, 503)


@dataclass(frozen=True, slots=True)
class Failure:
    upstream: str
    kind: FailureKind
    detail: str
    status: int | None = None
    retry_after: str | None = None

    @property
    def label(self) -> str:
        """The metric label: status_503 etc. for statuses, the kind otherwise."""
        return f"status_{self.status}" if self.kind is FailureKind.STATUS else str(self.kind)

    def describe(self) -> str:
        return f"{self.upstream} ({self.detail})"


def classify(exc: BaseException, timeout_detail: str) -> tuple[FailureKind, str]:
    """The kind and a one-line description of an exception from a request to an upstream."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # a TimeoutError too: test it first
        return FailureKind.TIMEOUT, "connect timed out"
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT, timeout_detail
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.REFUSED, f"connect failed: {exc.os_error.strerror}"
    return FailureKind.RESET, f"connection lost: {type(exc).__name__}"


class Reach:
    """Whether one request got as far as a connection to its upstream (pooled or new), after
    which aiohttp writes the request at once. A timeout before that point reached nobody; a
    timeout after it may have left work running there (a generation is not idempotent)."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


_REACH: ContextVar[Reach | None] = ContextVar("geogate_reach", default=None)


class track_reach:  # a function to its callers: ``with track_reach() as reach``
    """Track the requests made in this block, in this task (a context variable: the
    connector below runs in the caller's task). A class, not @contextmanager: the generator
    machinery cost 1.5 % of a request's CPU (bench/profile.py)."""

    __slots__ = ("reach", "token")
    reach: Reach
    token: Token[Reach | None]

    def __enter__(self) -> Reach:
        self.reach = Reach()
        self.token = _REACH.set(self.reach)
        return self.reach

    def __exit__(self, *_: object) -> None:
        _REACH.reset(self.token)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, marking the tracked request (if any) connected: one context
    variable read per request, where a TraceConfig would build signal objects for each."""

    async def connect(  # aiohttp's signature, timeout parameter included
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        reach = _REACH.get()
        if reach is not None:
            reach.connected = True
        return conn


def new_session(connect_timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=_Connector(limit=0, keepalive_timeout=POOL_KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        auto_decompress=False,  # bytes pass through as the upstream encoded them
        skip_auto_headers=NO_AUTO_HEADERS,
        # One session carries every client's requests: a cookie one backend set must not be
        # sent with the next client's (aiohttp's default jar keeps them per host name).
        cookie_jar=aiohttp.DummyCookieJar(),
    )
