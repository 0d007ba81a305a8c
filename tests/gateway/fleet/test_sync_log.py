"""What the Redis store's sync says: the error's own words (not its type alone), passwords
masked; Redis's errors without a traceback, ours with one."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from gateway.fleet import sync_log

URL = "rediss://:hunter2@cache.internal:6380/0"


def test_why_is_the_type_and_the_words_with_passwords_masked() -> None:
    assert sync_log.why(ReadOnlyError("You can't write against a read only replica.")) == (
        "ReadOnlyError: You can't write against a read only replica."
    )
    said = sync_log.why(RedisConnectionError("Error connecting to redis://:hunter2@h:1"))
    assert "hunter2" not in said and said.startswith("ConnectionError: Error connecting")
    assert sync_log.why(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    ("exc", "said", "traceback"),
    [
        (
            RedisConnectionError(
                "Error 1 connecting to cache.internal:6380. [SSL: CERTIFICATE_VERIFY_FAILED] "
                "certificate verify failed: self-signed certificate (_ssl.c:1006)."
            ),
            "Redis at rediss://:****@cache.internal:6380/0 unreachable (ConnectionError: Error 1 "
            "connecting to cache.internal:6380. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: self-signed certificate (_ssl.c:1006).); routing on the last snapshot",
            False,
        ),
        (
            ReadOnlyError("You can't write against a read only replica."),
            "Redis at rediss://:****@cache.internal:6380/0 refused the sync (ReadOnlyError: You "
            "can't write against a read only replica.); routing on the last snapshot",
            False,
        ),
        (
            KeyError("gateway"),
            "shared-state sync failed (KeyError: 'gateway'); routing on the last snapshot; "
            "retrying",
            True,
        ),
    ],
)
def test_stale_says_why(
    caplog: pytest.LogCaptureFixture, exc: Exception, said: str, traceback: bool
) -> None:
    sync_log.stale(exc, URL, synced_once=True)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == said
    assert (record.exc_info is not None) == traceback


def test_never_synced_says_it_routes_on_its_own_file(caplog: pytest.LogCaptureFixture) -> None:
    sync_log.stale(OSError("refused"), URL, synced_once=False)
    assert (
        caplog.records[0]
        .getMessage()
        .endswith("routing on this gateway's own file and view until it answers")
    )


def test_a_sync_that_ended_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    sync_log.ended(None)
    assert caplog.records[0].getMessage().startswith("the shared-state sync stopped (it returned)")
