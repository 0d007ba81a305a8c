"""The traffic counts the request path feeds the dashboard: cheap, and bounded when nobody
takes them."""

from __future__ import annotations

import pytest

from gateway.traffic import NOT_SERVED, Traffic, carries_token
from geodb.location import Location, LocationSource

LONDON = Location(51.5, -0.13, "GB", "EU", "London", 20.0, LocationSource.GEOIP)
PARIS = Location(48.9, 2.35, "FR", "EU", "Paris", 20.0, LocationSource.GEOIP)


def test_attempts_failures_and_first_tokens_per_upstream() -> None:
    t = Traffic()
    t.attempt("a", True)
    t.attempt("a", False)
    t.attempt("b", True)
    t.first_token("a", 12.5)
    tally = t.take()
    assert tally.attempts == {"a": 2, "b": 1}
    assert tally.failures == {"a": 1}
    assert tally.ttft_ms == {"a": [12.5]}
    assert t.take().attempts == {}  # counting starts afresh


def test_requests_per_place_upstream_and_model() -> None:
    t = Traffic()
    t.request(LONDON, "a", "m")
    t.request(LONDON, "a", "m")
    t.request(LONDON, NOT_SERVED, "")
    assert t.take().served == {(LONDON, "a", "m"): 2, (LONDON, NOT_SERVED, ""): 1}


def test_places_and_samples_are_capped_until_taken() -> None:
    t = Traffic(max_places=1, max_samples=2)
    t.request(LONDON, "a", "m")
    t.request(PARIS, "a", "m")  # a new place past the cap: counted in the total only
    t.request(LONDON, "a", "m")  # a known place still counts
    for ms in (1.0, 2.0, 3.0):
        t.first_token("a", ms)
    tally = t.take()
    assert tally.served == {(LONDON, "a", "m"): 2}
    assert tally.unplaced == 1
    assert tally.ttft_ms == {"a": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("chunk", "token"),
    [
        (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n', False),
        (b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n', False),
        (b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n', True),
        (b'data: {"choices":[{"text":"lo","index":0}]}\n\n', True),  # completions
        (b'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n', True),  # responses
        (b'data: {"choices":[{"delta":{"content":"\\n"}}]}\n\n', True),
        (b"", False),
    ],
)
def test_a_first_token_is_a_chunk_with_text_not_the_role_alone(chunk: bytes, token: bool) -> None:
    assert carries_token(chunk) is token
