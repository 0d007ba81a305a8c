"""The error a client gets when every attempt failed before any byte reached it: a 504 only
for an answer that was late, never for a connection that was not made."""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import time

import pytest

from gateway.client import ConnectionLost, Failure, FailureKind
from gateway.defaults import MAX_RETRY_AFTER_S
from gateway.errors import NoHealthyUpstream, UpstreamBusy, UpstreamFailed, UpstreamTimeout
from gateway.http.final_error import (
    DRAIN_CUT,
    TOTAL_TIMEOUT,
    abort_cause,
    cut_message,
    final_error,
    log_cut,
    timeout_hint,
    wait_s,
)
from gateway.http.watchdog import TotalTimeout
from gateway.metrics import ABORT_CAUSES
from gateway.routing.model import Candidate, Decision, Outcome, Reason, UpstreamView

HINT = timeout_hint(True, "timeouts.first_byte_s")
LATE = Failure("a", FailureKind.TIMEOUT, "no first byte in 60 s")
NO_CONNECT = Failure("b", FailureKind.TIMEOUT, "connect timed out", connecting=True)
REFUSED = Failure("b", FailureKind.REFUSED, "connect failed: Connection refused")


def decision(*ids: str) -> Decision:
    order = tuple(
        Candidate(
            UpstreamView(id=uid, region="eu", models=frozenset({"m"})),
            *(10.0, 10.0, "distance", 0.0, True, False, "unknown"),
        )
        for uid in ids
    )
    return Decision(Outcome.ROUTED, order, (), Reason.LOWEST_SCORE)


def test_a_connect_timeout_is_a_connection_not_made() -> None:
    err = final_error([NO_CONNECT], decision("b"), None, HINT)
    assert type(err) is UpstreamFailed, err
    assert "b (connect timed out)" in str(err)
    assert "first_byte_s" not in str(err)


def test_the_status_does_not_depend_on_the_order_of_connect_failures() -> None:
    # A refused connection and a silently dropped one are both "no connection", either way.
    for failures in ([REFUSED, NO_CONNECT], [NO_CONNECT, REFUSED]):
        assert type(final_error(failures, decision("b", "b"), None, HINT)) is UpstreamFailed


def test_a_late_answer_is_a_timeout_with_its_hint() -> None:
    err = final_error([NO_CONNECT, LATE], decision("b", "a"), None, HINT)
    assert type(err) is UpstreamTimeout, err
    assert str(err).endswith("for very long prompts the operator can raise timeouts.first_byte_s")
    held = final_error([LATE], decision("a", "b"), "a", HINT)
    assert type(held) is UpstreamTimeout and "not sent to another upstream" in str(held)


def test_every_upstream_at_capacity_is_busy() -> None:
    busy = Failure("a", FailureKind.STATUS, "HTTP 429", 429, "7")
    err = final_error([busy], decision("a", "b"), None, HINT)
    assert isinstance(err, UpstreamBusy) and err.retry_after_s == 7
    assert "1 more candidate(s) not tried" in str(err)


@pytest.mark.parametrize(
    ("residency", "says"),
    [
        (None, "no healthy upstream serves this model; tried the unhealthy ones anyway: b ("),
        ("eu", "no healthy upstream is allowed for this client (residency rule eu); tried"),
    ],
)
def test_nothing_healthy_names_a_residency_rule_only_where_one_applied(
    residency: str | None, says: str
) -> None:
    # "allowed for this client" with no rule sent operators looking for one.
    panic = dataclasses.replace(decision("a"), reason=Reason.PANIC, residency=residency)
    err = final_error([REFUSED], panic, None, HINT)
    assert type(err) is NoHealthyUpstream and str(err).startswith(says), err


def test_nothing_healthy_keeps_the_wait_an_upstream_asked_for() -> None:
    # Tried though unhealthy, the upstream answered 429 with Retry-After: 7; it was 5 s.
    panic = dataclasses.replace(decision("a"), reason=Reason.PANIC)
    busy = Failure("a", FailureKind.STATUS, "HTTP 429", 429, "7")
    err = final_error([busy], panic, None, HINT)
    assert type(err) is NoHealthyUpstream and err.retry_after_s == 7
    assert str(err).endswith("Retry in 7 s")
    assert final_error([REFUSED], panic, None, HINT).retry_after_s == 5  # none said


@pytest.mark.parametrize("sent", ["\u00b2", "-1", "1.5", "", "0"])
def test_an_upstreams_retry_after_that_is_no_count_is_one_second(sent: str) -> None:
    # The upstream's header, untrusted: what is no count of seconds (or 0) is 1 s.
    busy = Failure("a", FailureKind.STATUS, "HTTP 429", 429, sent)
    err = final_error([busy], decision("a"), None, HINT)
    assert isinstance(err, UpstreamBusy) and err.retry_after_s == 1


@pytest.mark.parametrize(
    "sent", ["999999999999999999", "9" * 19, "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_an_upstreams_absurd_retry_after_is_capped_at_an_hour(sent: str) -> None:
    # A count of 18 digits, a date in 9999: passed on, SDKs that honour the header waited years;
    # 19 digits and more, past int()'s reach (5,000: a 500 once), were taken for none: 1 s.
    busy = Failure("a", FailureKind.STATUS, "HTTP 429", 429, sent)
    err = final_error([busy], decision("a"), None, HINT)
    assert isinstance(err, UpstreamBusy) and err.retry_after_s == MAX_RETRY_AFTER_S == 3600
    assert str(err).endswith("Retry after 3600 s")
    panic = dataclasses.replace(decision("a"), reason=Reason.PANIC)
    assert final_error([busy], panic, None, HINT).retry_after_s == MAX_RETRY_AFTER_S
    under = Failure("a", FailureKind.STATUS, "HTTP 429", 429, "3599")  # under the cap: as sent
    assert final_error([under], decision("a"), None, HINT).retry_after_s == 3599
    assert wait_s("0" * 18 + "5") == 5  # 19 digits, most of them leading zeros: a count


def test_every_upstream_refusing_for_now_is_503_with_the_longest_wait() -> None:
    # Every attempt a 503 (or 503 and 429): a 502 without Retry-After, and an SDK behind an
    # edge gateway retried at once; the edge Worker says the same as no_healthy_upstream.
    down = Failure("a", FailureKind.STATUS, "HTTP 503", 503, "12")
    quiet = Failure("b", FailureKind.STATUS, "HTTP 503", 503, None)
    busy = Failure("c", FailureKind.STATUS, "HTTP 429", 429, "30")
    err = final_error([down, quiet], decision("a", "b"), None, HINT)
    assert type(err) is NoHealthyUpstream and err.retry_after_s == 12
    assert str(err).startswith("every upstream tried refused the request for now (503): a (")
    assert str(err).endswith(". Retry after 12 s")
    assert final_error([quiet], decision("b"), None, HINT).retry_after_s == 5  # none said
    mixed = final_error([busy, down], decision("c", "a"), None, HINT)
    assert type(mixed) is NoHealthyUpstream and mixed.retry_after_s == 30
    failed = Failure("d", FailureKind.STATUS, "HTTP 502", 502, None)
    assert type(final_error([down, failed], decision("a", "d"), None, HINT)) is UpstreamFailed


def test_a_retry_after_as_an_http_date_is_its_seconds_from_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RFC 9110's other form: it was taken for none, and the client told 1 s.
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    busy = Failure("a", FailureKind.STATUS, "HTTP 429", 429, when)
    err = final_error([busy], decision("a"), None, HINT)
    assert isinstance(err, UpstreamBusy) and err.retry_after_s is not None
    assert 118 <= err.retry_after_s <= 121
    assert wait_s(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0  # past: now
    # "-0000", no zone said, is GMT, not the host's zone (a naive time is read as local).
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        unzoned = email.utils.formatdate(time.time() + 120)  # "... -0000"
        assert unzoned.endswith("-0000") and 118 <= (wait_s(unzoned) or 0) <= 121, unzoned
    finally:
        monkeypatch.undo()
        time.tzset()
    assert wait_s("soon") is None and wait_s(None) is None


def test_a_cut_is_one_warning_naming_the_request_the_upstream_and_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="geogate")
    message = cut_message("upstream_error", "us-1", 600)
    log_cut("rid-7", "us-1", "us-east", "upstream_error", message)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"request rid-7 cut (upstream us-1, upstream_error): {message}"
    fields = record.__dict__
    assert fields["event.action"] == "stream-aborted" and fields["event.reason"] == "upstream_error"
    assert (fields["geogate.upstream"], fields["geogate.region"]) == ("us-1", "us-east")
    assert fields["http.request.id"] == "rid-7"


def test_what_a_cut_says_and_its_cause() -> None:
    assert "limit of 1.5 s (timeouts.total_s)" in cut_message(TOTAL_TIMEOUT, "a", 1.5)
    assert "upstream a stopped answering" in cut_message("timeout", "a", 1.5)
    assert "upstream a failed" in cut_message("upstream_error", "a", 1.5)
    causes = [abort_cause(e) for e in (TotalTimeout(), TimeoutError(), ConnectionLost("x"))]
    assert causes == [TOTAL_TIMEOUT, "timeout", "upstream_error"]
    # Each made at 0 before its first (metrics); the drain's cut is the proxy's (intake).
    assert {*causes, DRAIN_CUT} == set(ABORT_CAUSES)
