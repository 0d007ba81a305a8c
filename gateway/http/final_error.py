"""The error a client gets when every attempt of its request failed before any byte reached it:
which one, and what the message says (each upstream tried, and what to do about it); and what
a response cut after bytes reached the client says, to the client and to the log."""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Sequence

from gateway import checks
from gateway.client import Failure, FailureKind
from gateway.defaults import MAX_RETRY_AFTER_S, NO_CANDIDATE_RETRY_AFTER_S
from gateway.errors import (
    GatewayError,
    NoHealthyUpstream,
    UpstreamBusy,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.http.watchdog import TotalTimeout
from gateway.logs import event, repeating
from gateway.routing.model import Decision, Reason
from gateway.runtime import log

TOTAL_TIMEOUT = "total_timeout"  # geogate_stream_aborted's cause: timeouts.total_s passed
DRAIN_CUT = "drain"  # ...and the drain's cut of a response under way (server.drain_timeout_s)


def final_error(
    failures: Sequence[Failure], decision: Decision, held: str | None, hint: str
) -> GatewayError:
    """``held``: the upstream that accepted the request and then timed out, so that no other
    was tried; ``hint``: timeout_hint's, for an answer that was late."""
    tried = ", ".join(f.describe() for f in failures)
    more = len(decision.order) - len(failures)
    tail = f"; {more} more candidate(s) not tried (retry limit/budget)" if more > 0 else ""
    if held is not None:
        return UpstreamTimeout(
            f"upstream timed out: {tried}. {held} had accepted the request, so it was "
            "not sent to another upstream: the work may still be running there "
            f"(retry.on_timeout changes this). Retry only if running it twice is safe; {hint}"
        )
    if decision.reason is Reason.PANIC:
        # Every allowed upstream was already known to be down; we tried them anyway in
        # case health checks lagged. That is "nothing healthy", not a surprise failure.
        rule = f" (residency rule {decision.residency})" if decision.residency else ""
        # "allowed" only where a rule narrowed them: without one, it sent operators looking
        # for a residency rule there is none of
        whose = "is allowed for this client" if rule else "serves this model"
        after = longest_wait(failures, NO_CANDIDATE_RETRY_AFTER_S)  # an upstream's own first
        return NoHealthyUpstream(
            f"no healthy upstream {whose}{rule}; tried the unhealthy ones anyway: {tried}. "
            f"Retry in {after} s",
            retry_after_s=after,
        )
    statuses = {f.status for f in failures}
    if failures and statuses == {429}:
        after = longest_wait(failures, 1)
        return UpstreamBusy(
            f"every upstream tried is at capacity: {tried}{tail}. Retry after {after} s",
            retry_after_s=after,
        )
    if failures and statuses <= {429, 503}:
        # Refused for now (a 503 among them: not ready, overloaded, a regional gateway at
        # capacity), as the edge Worker says it: a 502 carried no Retry-After, and an SDK
        # behind an edge gateway retried at once.
        after = longest_wait(failures, NO_CANDIDATE_RETRY_AFTER_S)
        return NoHealthyUpstream(
            f"every upstream tried refused the request for now (503): {tried}{tail}. Retry "
            f"after {after} s",
            retry_after_s=after,
        )
    # A wait for the answer that ran out, not a connect timeout: that one is a connection not
    # made (a region dropping packets), answered as a refused one is, not as a slow prefill.
    if failures and failures[-1].kind is FailureKind.TIMEOUT and not failures[-1].connecting:
        # retry.on_timeout: failed over already; running it again may run it twice
        return UpstreamTimeout(
            f"upstream timed out: {tried}{tail}. Retry only if running it twice is safe; {hint}"
        )
    return UpstreamFailed(f"upstream request failed: {tried}{tail}. Retry the request")


def longest_wait(failures: Sequence[Failure], default: int) -> int:
    """The longest Retry-After the upstreams sent, in seconds (delay-seconds, or an HTTP
    date: one was taken for none, and the client told 1 s), at most MAX_RETRY_AFTER_S;
    ``default`` where none did."""
    waits = [wait_s(f.retry_after) for f in failures]
    # At least a second, as the edge Worker says it: a 0 had clients retry at once.
    longest = max((max(1, w) for w in waits if w is not None), default=default)
    return min(longest, MAX_RETRY_AFTER_S)


def wait_s(value: str | None) -> int | None:
    """A Retry-After's seconds from now (RFC 9110 10.2.3), None where it is neither form."""
    if value is None:
        return None
    if checks.is_decimal(value):
        return int(value)
    if value.isascii() and value.isdigit():  # leading zeros, or past int()'s reach: the cap
        digits = value.lstrip("0") or "0"
        return int(digits) if checks.is_decimal(digits) else MAX_RETRY_AFTER_S
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": no zone said, where HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0, math.ceil(when.timestamp() - time.time()))


def timeout_hint(stream: bool, key: str) -> str:
    """What may help an answer that was late: ``key`` is the wait's setting."""
    if stream:
        return f"for very long prompts the operator can raise {key}"
    return f"for very long answers ask for a stream, or the operator can raise {key}"


def abort_cause(exc: BaseException) -> str:
    """geogate_stream_aborted's cause for what cut a stream: this gateway's total limit, a
    silence of idle_s (the upstream's failure), or the upstream's connection."""
    if isinstance(exc, TotalTimeout):
        return TOTAL_TIMEOUT
    return "timeout" if isinstance(exc, TimeoutError) else "upstream_error"


def cut_message(cause: str, upstream: str, total_s: float) -> str:
    """What the client's error event (or the log, for a reset stream) says of a cut."""
    if cause == TOTAL_TIMEOUT:
        return (
            f"the response reached this gateway's limit of {total_s:g} s (timeouts.total_s); "
            "the output is incomplete — ask for a shorter answer"
        )
    if cause == DRAIN_CUT:
        return (
            "this gateway is shutting down and its drain time (server.drain_timeout_s) ran "
            "out; the output is incomplete — retry the request"
        )
    what = "stopped answering" if cause == "timeout" else "failed"
    return (
        f"upstream {upstream} {what} in the middle of the response; the output is incomplete "
        "— retry the request"
    )


def log_cut(rid: str, upstream: str, region: str, cause: str, message: str) -> None:
    """The one warning of a cut response, SSE or not: its status alone (an SSE stream's stays
    the 200 its head said) tells nobody that the answer broke off."""
    log.warning(
        "request %s cut (upstream %s, %s): %s",
        rid,
        upstream,
        cause,
        message,
        extra=repeating(
            "cut",
            {
                **event("stream-aborted", reason=cause, upstream=upstream, region=region),
                "http.request.id": rid,
            },
        ),
    )
