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


# Chunks as servers send them, through the Python test and its C twin (gateway._splice's,
# which the splice relay runs): a case that only one of them got right would time streams
# apart by the path their body took.
FIRST_TOKEN_CASES = [
    (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n', False),
    (b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n', False),
    (b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n', True),
    (b'data: {"choices":[{"text":"lo","index":0}]}\n\n', True),  # completions
    (b'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n', True),  # responses
    (b'data: {"choices":[{"delta":{"content":"\\n"}}]}\n\n', True),
    (b"", False),
    # OpenAI's role chunk: an empty content and a null refusal are nothing generated.
    (b'data: {"choices":[{"delta":{"role":"assistant","content":"","refusal":null}}]}\n\n', False),
    # A reasoning model's thinking comes first, content only after it (vLLM, DeepSeek).
    (b'data: {"choices":[{"delta":{"reasoning_content":"Let"},"index":0}]}\n\n', True),
    (b'data: {"choices":[{"delta":{"reasoning":"Let"}}]}\n\n', True),
    (b'data: {"choices":[{"delta":{"reasoning_content":"","content":null}}]}\n\n', False),
    (b'data: {"choices":[{"delta":{"refusal":"I can\'t"}}]}\n\n', True),
    # A tool call's first chunk names its function (arguments still empty), then arguments.
    (
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":'
        b'"function","function":{"name":"get_weather","arguments":""}}]}}]}\n\n',
        True,
    ),
    (b'data: {"choices":[{"delta":{"tool_calls":[{"function": { "name": "f"}}]}}]}\n\n', True),
    (b'data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\\""}}]}}]}', True),
    (b'{"choices":[{"delta":{"tool_calls":[{"function":{"name":"","arguments":""}}]}}]}', False),
    # The tools a responses API stream echoes in response.created: named, nothing generated.
    (
        b'data: {"type":"response.created","response":{"tools":[{"type":"function",'
        b'"name":"get_weather","parameters":{}}],"reasoning":{"effort":null},'
        b'"text":{"format":{"type":"text"}},"output":[]}}\n\n',
        False,
    ),
    (b'data: {"type":"response.function_call_arguments.delta","delta":"{\\"a"}\n\n', True),
    # A key that only ends like one, or a value that is no string, is none.
    (b'{"my_name":"x","pretext":"y","content_filter":"z","content":7}', False),
    (b'{"function":"name"}', False),
    (b'{"content":\n\t "x"}', True),  # blanks between the colon and the value, as JSON allows
]


@pytest.mark.parametrize(("chunk", "token"), FIRST_TOKEN_CASES)
def test_a_first_token_is_anything_generated_in_python_and_in_c(chunk: bytes, token: bool) -> None:
    assert carries_token(chunk) is token
    splice = pytest.importorskip("gateway._splice")  # optional (setup.py): where it is built
    assert splice.carries_token(chunk) is token
