"""What this process served, counted as it happens, for the live dashboard: per upstream the
attempts, failures and time to first token; per client place the requests and who served them.

The request path only adds to small dicts (about a microsecond a request, README
"Dashboard"); the dashboard's sampler takes the counts once a second
(``gateway.http.dashboard.sampler``) and keeps the rolling windows. Nothing here grows without
bound when nobody takes: places and samples are capped per take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.defaults import TRAFFIC_MAX_PLACES, TRAFFIC_MAX_SAMPLES
from geodb.location import Location

NOT_SERVED = "-"  # the upstream of a request nothing served (refused, failed, client gone)

# (where the client is, the upstream that served it or NOT_SERVED, the model or "")
ServedKey = tuple[Location, str, str]
# A streamed chunk that carries something generated: a non-empty string in a field the model
# writes. Chat's "content", completions' "text", the responses API's "delta" (its text, its
# reasoning and its tool calls' arguments); a reasoning model's thinking ("reasoning_content",
# vLLM's and DeepSeek's, and "reasoning"), a "refusal", a tool call's "arguments" or its
# function's "name" (chat's "function":{"name":..., so that the tools a responses API stream
# echoes in its response.created event are none). Any of them ends the wait for a first token:
# on "content" alone, a reasoning stream was timed at the end of its thinking and a stream of
# tool calls only at its end. A stream's first chunk is often the role alone, sent before any
# token: its time is not the time to first token. gateway/_splice.c's has_token is this test in
# C (tests/gateway/test_traffic.py runs the same cases through both).
_TOKEN = re.compile(
    rb'"(?:content|text|delta|reasoning_content|reasoning|refusal|arguments)":\s*"[^"]'
    rb'|"function":\s*\{\s*"name":\s*"[^"]'
)


def carries_token(chunk: bytes) -> bool:
    return _TOKEN.search(chunk) is not None


@dataclass(slots=True)
class Tally:
    """Counts since the last take."""

    attempts: dict[str, int] = field(default_factory=dict)  # upstream -> attempts
    failures: dict[str, int] = field(default_factory=dict)  # upstream -> failed attempts
    ttft_ms: dict[str, list[float]] = field(default_factory=dict)  # upstream -> samples
    served: dict[ServedKey, int] = field(default_factory=dict)
    unplaced: int = 0  # requests past TRAFFIC_MAX_PLACES distinct places: counted here only
    # 5xx answered before any region was chosen (region "-": no upstream allowed, the gateway
    # full), what the dashboard's "not routed" card shows; a client's 4xx is no outage.
    unrouted: int = 0


class Traffic:
    def __init__(
        self, max_places: int = TRAFFIC_MAX_PLACES, max_samples: int = TRAFFIC_MAX_SAMPLES
    ) -> None:
        self.max_places = max_places
        self.max_samples = max_samples
        self._t = Tally()

    def attempt(self, upstream_id: str, ok: bool) -> None:
        """One upstream attempt's outcome, as passive health judges it."""
        t = self._t
        t.attempts[upstream_id] = t.attempts.get(upstream_id, 0) + 1
        if not ok:
            t.failures[upstream_id] = t.failures.get(upstream_id, 0) + 1

    def first_token(self, upstream_id: str, ms: float) -> None:
        """A stream's first token from ``upstream_id``, ``ms`` after the attempt began. Past
        the cap a second's later samples are dropped: the percentiles are then those of its
        first TRAFFIC_MAX_SAMPLES requests, still thousands a minute."""
        samples = self._t.ttft_ms.setdefault(upstream_id, [])
        if len(samples) < self.max_samples:
            samples.append(ms)

    def request(self, location: Location, upstream_id: str, model: str) -> None:
        """One client request, at its end: where it came from and who served it."""
        served = self._t.served
        key = (location, upstream_id, model)
        n = served.get(key)
        if n is not None:
            served[key] = n + 1
        elif len(served) < self.max_places:
            served[key] = 1
        else:
            self._t.unplaced += 1

    def unrouted(self) -> None:
        """One request refused with a 5xx before any region was chosen."""
        self._t.unrouted += 1

    def take(self) -> Tally:
        """Everything counted since the last take; counting starts afresh."""
        taken, self._t = self._t, Tally()
        return taken
