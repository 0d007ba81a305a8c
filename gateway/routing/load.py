"""A backend's load: read from its Prometheus text (vLLM, TGI, SGLang, geogate's backend) and
turned into the estimate the router scores with.

Pure: text in, a ``LoadReading`` out; a reading and the previous ``LoadState`` in, the next
state out. Parsing is prometheus_client's own parser, which knows the exposition format's
escaping and suffix rules better than a regex would.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Metric family names (as the parser reports them: counters without "_total").
QUEUE = ("vllm:num_requests_waiting", "tgi_queue_size", "sglang:num_queue_reqs")
RUNNING = ("vllm:num_requests_running", "tgi_batch_current_size", "sglang:num_running_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
TTFT_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")


@dataclass(frozen=True, slots=True)
class LoadReading:
    queue_depth: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    ttft_sum_s: float | None = None  # cumulative: the poller turns two readings into a mean
    ttft_count: float | None = None


def parse_load(text: str) -> LoadReading:
    values: dict[str, float] = {}
    ttft_sum = ttft_count = None
    for family in text_string_to_metric_families(text):
        name = family.name
        if name in QUEUE or name in RUNNING or name in KV_USAGE:
            # Summed over label sets: one per model (vLLM) or per engine (SGLang DP ranks).
            values[name] = sum(s.value for s in family.samples if s.name == name)
        elif name in TTFT_HISTOGRAMS:
            for s in family.samples:
                if s.name == f"{name}_sum":
                    ttft_sum = (ttft_sum or 0.0) + s.value
                elif s.name == f"{name}_count":
                    ttft_count = (ttft_count or 0.0) + s.value

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    return LoadReading(first(QUEUE), first(RUNNING), first(KV_USAGE), ttft_sum, ttft_count)


@dataclass(slots=True)
class LoadState:
    """Latest load of one upstream, from polling its /metrics."""

    at: float  # monotonic time of the sample
    queue_depth: float | None
    ttft_ms: float | None  # EWMA of the mean TTFT between polls
    ttft_sum_s: float | None  # last cumulative readings, to take differences
    ttft_count: float | None
    # When a request last confirmed ttft_ms. A backend shunned for a high TTFT gets no
    # requests, so nothing would ever show that it recovered: an unconfirmed estimate
    # expires like a stale sample, and the backend is tried (and measured) again.
    ttft_at: float = 0.0
    kv_usage: float | None = None  # shown in /routing-table and fleet observations


def next_load(
    prev: LoadState | None, reading: LoadReading, now: float, max_age_s: float, alpha: float
) -> LoadState:
    """The state after one more reading."""
    # An estimate past its age is not blended into the next one: it restarts from the
    # first new measurement.
    ttft = prev.ttft_ms if prev and now < prev.ttft_at + max_age_s else None
    ttft_at = prev.ttft_at if prev else now
    if (
        prev
        and reading.ttft_sum_s is not None
        and reading.ttft_count is not None
        and prev.ttft_sum_s is not None
        and prev.ttft_count is not None
        and reading.ttft_count > prev.ttft_count
    ):
        # The mean TTFT of the requests that finished their first token since last poll.
        mean_ms = (
            1000 * (reading.ttft_sum_s - prev.ttft_sum_s) / (reading.ttft_count - prev.ttft_count)
        )
        ttft = mean_ms if ttft is None else alpha * mean_ms + (1 - alpha) * ttft
        ttft_at = now
    return LoadState(
        now,
        reading.queue_depth,
        ttft,
        reading.ttft_sum_s,
        reading.ttft_count,
        ttft_at,
        reading.kv_usage,
    )
