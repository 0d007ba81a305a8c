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
trusted proxies; an IPv6 address counts alone and within its /64, which may fail ten times
as often (a host holds a /64 to rotate through; one subnet's hosts share one). A client
behind the same address as a guesser (one NAT) is held back with it meanwhile; that is the
price of counting by address, which is all a token guess brings.

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

from gateway.defaults import (
    AUTH_FAILURE_WINDOW_S,
    AUTH_FAILURES_MAX,
    AUTH_KNOWN_S,
    AUTH_PREFIX_FACTOR,
    AUTH_TRACKED_ADDRESSES,
)
from gateway.errors import AuthThrottled
from gateway.http.asgi import Message, Receive, Scope, Send, header
from gateway.http.errors import send_error
from gateway.logs import event, repeating
from gateway.runtime import log

_LOGIN: Final = "/dashboard/login"
_UNAUTHORIZED: Final = 401


class FailureWindow:
    """The failures of each address in the last ``window_s``; pure (the clock is passed in).
    At most ``max_addresses`` are kept: past that, those with no failure in the window go
    first, then those not held back, oldest first. Held-back ones are never dropped: with the
    table full of them, an address not in it is held back too until the first of them ages
    out (``full_until``): evicting them set guessers free (4,700 /64s of one /48 made 47,000
    tries in a review's run), where this fails closed while such a scan lasts."""

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
        self.full_until = 0.0  # while later than now: full of held-back addresses

    def wait_s(self, address: str, now: float, known: bool = False) -> float:
        """Seconds until ``address`` may present a credential again: 0 when it may now.
        ``known``: it presented a good one lately, so a full table does not hold it back."""
        times = self._failures.get(address)
        if times is not None and not self._prune(times, now):
            del self._failures[address]
            times = None
        if times is None:
            return 0.0 if known else max(0.0, self.full_until - now)
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window_s - now

    def failed(self, address: str, now: float) -> bool:
        """Counts a failure; True when it is the one that reaches the limit (said once), or
        the one that finds the table full of held-back addresses (said once too)."""
        held_back = self.wait_s(address, now) > 0  # and the old ones pruned
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._evict(now)
            if len(self._failures) >= self.max_addresses:
                first = min(t[0] for t in self._failures.values())
                full = self.full_until <= now
                self.full_until = first + self.window_s
                return full
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        return not held_back and len(times) >= self.limit

    def __len__(self) -> int:
        return len(self._failures)

    def __contains__(self, address: object) -> bool:
        return address in self._failures

    def _prune(self, times: deque[float], now: float) -> int:
        """Drops the failures out of the window; how many are left. An entry looks held back
        by its count only once pruned: unpruned, 4,096 addresses with nine old failures and
        a new one each passed for a full table long after, and a newcomer went uncounted."""
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return len(times)

    def _evict(self, now: float) -> None:
        # An eighth at a time: a scan from many addresses sweeps the table once per that many
        # new ones, not once for each.
        keep = self.max_addresses - max(1, self.max_addresses // 8)
        failures = self._failures
        for address in [a for a, t in failures.items() if not self._prune(t, now)]:
            del failures[address]
        for address in [a for a, t in failures.items() if len(t) < self.limit]:
            if len(failures) <= keep:
                return
            del failures[address]  # not held back, oldest first (insertion order)


def address_keys(address: str) -> tuple[str, str | None]:
    """What failures count against: the address (an IPv4-mapped one as its IPv4 address),
    and an IPv6 one's /64 too, or None."""
    if ":" not in address:
        return address, None
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address, None
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), None
    return str(ip), str(ipaddress.IPv6Network((ip, 64), strict=False))


def presents_credential(scope: Scope) -> bool:
    """A request whose answer says whether a credential was right: it carries one."""
    return header(scope, b"authorization") is not None or (
        scope["path"] == _LOGIN and scope["method"] == "POST"
    )


class AuthThrottle:
    """ASGI middleware in front of the ops app (see the module's doc)."""

    def __init__(
        self,
        app: ASGIApp,
        window: FailureWindow | None = None,
        prefixes: FailureWindow | None = None,
    ) -> None:
        self.app = app
        self.window = window if window is not None else FailureWindow()  # it has a len()
        # An IPv6 address's /64 counts too, at AUTH_PREFIX_FACTOR times the limit: a host
        # holds a /64 and would rotate through it, where one subnet's hosts share one (an AWS
        # VPC's): one scraper with a stale token holds back its address, not its neighbours.
        if prefixes is None:
            prefixes = FailureWindow(limit=AUTH_FAILURES_MAX * AUTH_PREFIX_FACTOR)
        self.prefixes = prefixes
        # Addresses whose credential was right lately (Prometheus, the edge tier, ctl): a table
        # full of guessers' addresses holds back every other one, but not these (a review's
        # run: 41,000 wrong tokens from 4,096 addresses refused the operators' good ones).
        self._good: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if scope["type"] != "http" or not presents_credential(scope):
            await app(scope, receive, send)
            return
        client = scope.get("client")
        keys = address_keys(client[0] if client else "-")
        refusal = self._refusal(keys)
        if refusal is not None:
            await send_error(send, refusal)
            return

        async def checked(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == _UNAUTHORIZED:
                    self._failed(keys)  # before the send, which may wait (the module's doc)
                elif 200 <= message["status"] < 300:
                    self._right(keys[0])
            await send(message)

        async def body_then_check() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                late = self._refusal(keys)
                if late is not None:  # the surfaces answer a GatewayError from the body's read
                    raise late
            return message

        await app(scope, body_then_check, checked)

    def _right(self, address: str) -> None:
        good = self._good
        good.pop(address, None)
        good[address] = time.monotonic()  # the newest last: the oldest go first
        if len(good) > AUTH_TRACKED_ADDRESSES:
            del good[next(iter(good))]

    def _refusal(self, keys: tuple[str, str | None]) -> AuthThrottled | None:
        now = time.monotonic()
        address, prefix = keys
        known = now - self._good.get(address, -AUTH_KNOWN_S) < AUTH_KNOWN_S
        for window, key in ((self.window, address), (self.prefixes, prefix)):
            wait = window.wait_s(key, now, known) if key is not None else 0.0
            if wait > 0:
                after = max(1, int(wait + 0.999))
                return AuthThrottled(
                    f"too many wrong tokens from {key}: try again in {after} s "
                    f"(at most {window.limit} a {window.window_s:g} s window)",
                    retry_after_s=after,
                )
        return None

    def _failed(self, keys: tuple[str, str | None]) -> None:
        now = time.monotonic()
        address, prefix = keys
        for window, key in ((self.window, address), (self.prefixes, prefix)):
            if key is not None and window.failed(key, now):
                full = key not in window  # not counted: the table is full (``failed``)
                log.warning(
                    "%s: credentials from %s refused unchecked until %g s from now",
                    f"wrong tokens from {len(window)} addresses hold the whole table"
                    if full
                    else f"{window.limit} wrong tokens from {key} within {window.window_s:g} s",
                    "any address not in it" if full else key,
                    (window.full_until - now) if full else window.window_s,
                    # One per guessing address: a scan from many is limited as requests are.
                    extra=repeating("auth-throttled", event("auth-throttled", client=key)),
                )
