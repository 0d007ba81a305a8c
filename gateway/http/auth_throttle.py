"""Wrong credentials on the ops listener, counted per client address: past
``AUTH_FAILURES_MAX`` in ``AUTH_FAILURE_WINDOW_S``, that address's requests that present one
(an ``Authorization`` header, or a token to ``/dashboard/login``) are answered 429
``too_many_auth_failures`` without being checked, until its oldest failure leaves the window.

Why here, around the whole ops app: the ops token, the admin API's operator tokens and the
dashboard's login each answer a wrong token with 401, so one count over the answers covers all
three, and a new surface that checks a token is covered without being told. Only a request
that presented a credential counts and is held back: a dashboard tab whose session cookie
expired gets its 401 and does not lock its operator out (a cookie is an HMAC: nothing to
guess), and the limit holds a guesser to a few tries a minute instead of thousands a second.

Per worker, in memory: with ``server.workers = N`` a guesser gets N times the tries, still a
handful a minute, while a shared store would put a Redis round trip in front of every admin
call. The address is the socket's peer: the ops listener is not behind the public listener's
trusted proxies. A client behind the same address as a guesser (one NAT) is held back with it
meanwhile; that is the price of counting by address, which is all a token guess brings.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

from starlette.types import ASGIApp

from gateway.defaults import (
    AUTH_FAILURE_WINDOW_S,
    AUTH_FAILURES_MAX,
    AUTH_PENDING_WAIT_S,
    AUTH_TRACKED_ADDRESSES,
)
from gateway.errors import AuthThrottled
from gateway.http.asgi import Message, Receive, Scope, Send, header
from gateway.http.errors import send_error
from gateway.logs import event
from gateway.runtime import log

_LOGIN: Final = "/dashboard/login"
_UNAUTHORIZED: Final = 401


class FailureWindow:
    """The failures of each address in the last ``window_s``; pure (the clock is passed in).
    At most ``max_addresses`` are kept: past that, those with no failure in the window go
    first, then the oldest kept, so a scan from many addresses costs bounded memory."""

    def __init__(
        self,
        limit: int = AUTH_FAILURES_MAX,
        window_s: float = AUTH_FAILURE_WINDOW_S,
        max_addresses: int = AUTH_TRACKED_ADDRESSES,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, address: str, now: float, pending: int = 0) -> float:
        """Seconds until ``address`` may present a credential again: 0 when it may now.
        ``pending``: its checks still running, each a failure to come, maybe: without them, a
        guesser's requests sent at once all passed before the first failure was counted."""
        times = self._failures.get(address)
        if times is not None:
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if not times:
                del self._failures[address]
                times = None
        count = len(times) if times is not None else 0
        if count + pending < self.limit:
            return 0.0
        if times is not None and count >= self.limit:
            return times[0] + self.window_s - now
        return AUTH_PENDING_WAIT_S  # the running checks decide: ask again in a moment

    def failed(self, address: str, now: float) -> bool:
        """Counts a failure; True when it is the one that reaches the limit (said once)."""
        held_back = self.wait_s(address, now) > 0  # and the old ones pruned
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._evict(now)
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        return not held_back and len(times) >= self.limit

    def _evict(self, now: float) -> None:
        stale = [a for a, t in self._failures.items() if not t or t[-1] <= now - self.window_s]
        for address in stale:
            del self._failures[address]
        while len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]  # the oldest kept (insertion order)


def presents_credential(scope: Scope) -> bool:
    """A request whose answer says whether a credential was right: it carries one."""
    return header(scope, b"authorization") is not None or (
        scope["path"] == _LOGIN and scope["method"] == "POST"
    )


class AuthThrottle:
    """ASGI middleware in front of the ops app (see the module's doc)."""

    def __init__(self, app: ASGIApp, window: FailureWindow | None = None) -> None:
        self.app = app
        self.window = window or FailureWindow()
        self._checking: dict[str, int] = {}  # address -> its credential checks running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if scope["type"] != "http" or not presents_credential(scope):
            await app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "-"
        checking = self._checking
        # Logins still reading their bodies count as failures to come: sent at once, they all
        # passed before the first was counted. A Bearer check is decided before any wait,
        # and a client's concurrent good ones (a scrape, the edge tier's reads) must not count.
        login = scope["path"] == _LOGIN
        wait = self.window.wait_s(
            address, time.monotonic(), checking.get(address, 0) if login else 0
        )
        if wait > 0:
            after = max(1, int(wait + 0.999))
            err = AuthThrottled(
                f"too many wrong tokens from {address}: try again in {after} s "
                f"(at most {self.window.limit} a {self.window.window_s:g} s window)",
                retry_after_s=after,
            )
            await send_error(send, err)
            return
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if login:
            checking[address] = checking.get(address, 0) + 1
        try:
            await app(scope, receive, watched)
        finally:
            if login:
                left = checking.pop(address) - 1
                if left:
                    checking[address] = left
            if status == _UNAUTHORIZED and self.window.failed(address, time.monotonic()):
                log.warning(
                    "%d wrong tokens from %s within %g s: its credentials are refused "
                    "unchecked until the first of them is %g s old",
                    self.window.limit,
                    address,
                    self.window.window_s,
                    self.window.window_s,
                    extra=event("auth-throttled", client=address),
                )
