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
trusted proxies; an IPv6 address counts as its /64, which one host commonly holds whole. A
client behind the same address as a guesser (one NAT) is held back with it meanwhile; that is
the price of counting by address, which is all a token guess brings.

Guesses sent at once: a failure is counted as its 401 starts, before the answer's send can
wait, and a request with a body is checked again once the body is in, right before its
credential is (a login's body may come late). So each check sees every failure decided before
it, and a burst of 3,000 wrong Bearer tokens is not 1,700 tries (a review's scratch run: the
failure was counted after the answer's send, which hypercorn's can wait on). Nothing is
counted for what has not been checked: ten logins that never send their bodies lock nobody out.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from typing import Final

from starlette.types import ASGIApp

from gateway.defaults import AUTH_FAILURE_WINDOW_S, AUTH_FAILURES_MAX, AUTH_TRACKED_ADDRESSES
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
    first, then those not held back, oldest first, and only then held-back ones: a scan from
    many addresses costs bounded memory, and 4,096 addresses with a failure each do not set a
    held-back guesser free (they did)."""

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

    def wait_s(self, address: str, now: float) -> float:
        """Seconds until ``address`` may present a credential again: 0 when it may now."""
        times = self._failures.get(address)
        if times is not None:
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if not times:
                del self._failures[address]
                times = None
        if times is None or len(times) < self.limit:
            return 0.0
        return times[0] + self.window_s - now

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
        # An eighth at a time: a scan from many addresses sweeps the table once per that many
        # new ones, not once for each.
        keep = self.max_addresses - max(1, self.max_addresses // 8)
        failures = self._failures
        for address in [a for a, t in failures.items() if not t or t[-1] <= now - self.window_s]:
            del failures[address]
        for address in [a for a, t in failures.items() if len(t) < self.limit]:
            if len(failures) <= keep:
                return
            del failures[address]  # not held back, oldest first (insertion order)
        while len(failures) > keep:
            del failures[next(iter(failures))]  # held back, all of them: the oldest


def address_key(address: str) -> str:
    """What failures count against: the address, or an IPv6 one's /64 (an IPv4-mapped one's
    IPv4 address)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if scope["type"] != "http" or not presents_credential(scope):
            await app(scope, receive, send)
            return
        client = scope.get("client")
        key = address_key(client[0] if client else "-")
        wait = self.window.wait_s(key, time.monotonic())
        if wait > 0:
            await send_error(send, self._throttled(key, wait))
            return

        async def checked(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == _UNAUTHORIZED:
                self._failed(key)  # before the send, which may wait (see the module's doc)
            await send(message)

        async def body_then_check() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                late = self.window.wait_s(key, time.monotonic())
                if late > 0:  # the surfaces answer a GatewayError from the body's read
                    raise self._throttled(key, late)
            return message

        await app(scope, body_then_check, checked)

    def _throttled(self, key: str, wait: float) -> AuthThrottled:
        after = max(1, int(wait + 0.999))
        return AuthThrottled(
            f"too many wrong tokens from {key}: try again in {after} s "
            f"(at most {self.window.limit} a {self.window.window_s:g} s window)",
            retry_after_s=after,
        )

    def _failed(self, key: str) -> None:
        if self.window.failed(key, time.monotonic()):
            log.warning(
                "%d wrong tokens from %s within %g s: its credentials are refused "
                "unchecked until the first of them is %g s old",
                self.window.limit,
                key,
                self.window.window_s,
                self.window.window_s,
                extra=event("auth-throttled", client=key),
            )
