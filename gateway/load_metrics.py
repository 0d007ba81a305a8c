"""Read a backend's load from its Prometheus text: vLLM, TGI, SGLang and geogate's backend.

Pure: text in, a LoadReading out. Parsing is prometheus_client's own parser, which knows the
exposition format's escaping and suffix rules better than a regex would.
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
