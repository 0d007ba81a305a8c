"""The simulated model server's counts: what /stats shows a test, and vLLM's metrics for
/metrics (the load a gateway reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class SimStats:
    requests: int = 0
    active: int = 0
    cancelled: int = 0  # streams whose client went away before the end
    completed: int = 0
    rejected: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)  # every request's path as received
    scrapes: int = 0  # /metrics answered: how often a gateway polls this backend's load


class SimMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.running = Gauge("vllm:num_requests_running", "Requests running", registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV cache usage (0-1)", registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency", registry=r)
        self.itl = Histogram(
            "vllm:time_per_output_token_seconds", "Mean inter-token latency", registry=r
        )
        self.prompt = Counter("vllm:prompt_tokens", "Prompt tokens", registry=r)
        self.gen = Counter("vllm:generation_tokens", "Generated tokens", registry=r)
